"""`conveyor webhooks listen`: the local receiver the README's tour sends its callback to."""

import json
import threading
import time

import httpx

from conveyor.client.receiver import Delivery, Receiver
from conveyor.core.signing import sign, tenant_secret


def test_the_receiver_reports_each_delivery_and_checks_its_signature() -> None:
    seen: list[Delivery] = []
    receiver = Receiver("deployment-secret", seen.append)
    served = threading.Thread(target=receiver.serve, args=(2,))
    served.start()
    job = {"id": "6f0c", "task": "demo.echo", "state": "succeeded", "result": {"n": 1}}
    body = json.dumps(job).encode()
    good = sign(tenant_secret("deployment-secret", "team-a"), body, int(time.time()))
    headers = {"Conveyor-Tenant": "team-a", "Content-Type": "application/json"}
    first = httpx.post(f"{receiver.url}/hooks", content=body,
                       headers={**headers, "Conveyor-Signature": good})  # fmt: skip
    forged = sign(tenant_secret("another-secret", "team-a"), body, int(time.time()))
    second = httpx.post(f"{receiver.url}/hooks", content=body,
                        headers={**headers, "Conveyor-Signature": forged})  # fmt: skip
    served.join(10)
    assert not served.is_alive(), "serve(2) returns after two deliveries"
    assert (first.status_code, second.status_code) == (204, 204)
    assert [d.signature_valid for d in seen] == [True, False]
    assert seen[0].summary() == (
        'POST /hooks (tenant team-a): job 6f0c demo.echo succeeded result={"n":1}; signature valid'
    )
    assert seen[1].summary().endswith("SIGNATURE INVALID")
