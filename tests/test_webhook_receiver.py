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
    served = threading.Thread(target=receiver.serve, args=(3,))
    served.start()
    job = {"id": "6f0c", "task": "demo.echo", "state": "succeeded", "result": {"n": 1}}
    body = json.dumps(job).encode()
    headers = {
        "Conveyor-Tenant": "team-a",
        "Idempotency-Key": "cb-1",
        "Content-Type": "application/json",
    }

    def signature(deployment_secret: str) -> str:
        key = tenant_secret(deployment_secret, "team-a")
        return sign(key, body, int(time.time()), idempotency_key="cb-1", tenant="team-a")

    def post(**extra: str) -> int:
        response = httpx.post(f"{receiver.url}/hooks", content=body, headers={**headers, **extra})
        return response.status_code

    good = signature("deployment-secret")
    statuses = [
        post(**{"Conveyor-Signature": good}),
        post(**{"Conveyor-Signature": signature("another-secret")}),
        # A captured delivery replayed under another idempotency key: the signature covers it.
        post(**{"Conveyor-Signature": good, "Idempotency-Key": "cb-2"}),
    ]
    served.join(10)
    assert not served.is_alive(), "serve(3) returns after three deliveries"
    assert statuses == [204, 204, 204]
    assert [d.signature_valid for d in seen] == [True, False, False]
    assert seen[0].summary() == (
        'POST /hooks (tenant team-a): job 6f0c demo.echo succeeded result={"n":1}; signature valid'
    )
    assert seen[1].summary().endswith("SIGNATURE INVALID")
