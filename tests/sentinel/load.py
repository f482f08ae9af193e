"""A client that submits continuously with idempotency keys, retrying 503s and connection
errors, and remembers when each attempt was sent and each job acknowledged."""

import statistics
import threading
import time
from dataclasses import dataclass, field

import httpx

from tests.support.auth import ADMIN_KEY

TIERS = ("high", "default", "low")


@dataclass
class Accepted:
    key: str
    job_id: str
    sent_at: float  # when the attempt that was acknowledged was sent
    accepted_at: float
    # When the key's first attempt was sent: an attempt answered 503 (or cut off) may have
    # been written all the same, and its job running before a later attempt is acknowledged.
    first_sent_at: float


@dataclass
class Submitter:
    """`threads` loops submitting `sentinel.<tier>` jobs until stopped."""

    base_url: str
    ledger_url: str
    prefix: str
    threads: int = 4
    accepted: list[Accepted] = field(default_factory=list)
    refusals: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> "Submitter":
        for n in range(self.threads):
            thread = threading.Thread(target=self._run, args=(n,), daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._workers:
            thread.join(30)

    def _count(self, what: str) -> None:
        with self._lock:
            self.refusals[what] = self.refusals.get(what, 0) + 1

    def _run(self, n: int) -> None:
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        with httpx.Client(base_url=self.base_url, timeout=5, headers=headers) as client:
            i = 0
            while not self._stop.is_set():
                key = f"{self.prefix}-{n}-{i}"
                tier = TIERS[i % 3]
                body = {"task": f"sentinel.{tier}", "args": {"ledger_url": self.ledger_url}}
                self._submit(client, key, body)
                i += 1

    def _submit(self, client: httpx.Client, key: str, body: dict[str, object]) -> None:
        """Until acknowledged (even after stop: a key once tried is finished)."""
        first_sent = time.time()
        while True:
            sent = time.time()
            try:
                response = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
            except httpx.TransportError as exc:
                self._count(type(exc).__name__)
                time.sleep(0.05)
                continue
            if response.status_code in (200, 202):
                job = response.json()
                with self._lock:
                    self.accepted.append(Accepted(key, job["id"], sent, time.time(), first_sent))
                return
            if response.status_code in (429, 503) or response.status_code >= 500:
                problem = response.json().get("type", "") if response.content else ""
                self._count(f"{response.status_code} {problem.rsplit(':', 1)[-1]}")
                # Retry-After is honoured by the client library; this one retries sooner to
                # measure when the platform accepts again.
                time.sleep(0.05)
                continue
            with self._lock:
                self.errors.append(f"{response.status_code} {response.text[:200]}")
            return

    def first_accept_after(self, moment: float) -> float | None:
        """Seconds from `moment` to the first acknowledgement of an attempt sent after it."""
        with self._lock:
            times = [a.accepted_at for a in self.accepted if a.sent_at > moment]
        return min(times) - moment if times else None

    def count(self) -> int:
        with self._lock:
            return len(self.accepted)


def summary(values: list[float]) -> dict[str, float]:
    """Median and max, rounded for a figure."""
    return {"median": round(statistics.median(values), 2), "max": round(max(values), 2)}
