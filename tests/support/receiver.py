"""A real HTTP server in a thread that records requests and answers from a script."""

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from tests.support.http import serve


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Answers each POST with the next status of `statuses` (the last one repeats)."""

    statuses: list[int] = field(default_factory=lambda: [200])
    delay_seconds: float = 0.0
    # Seconds between the bytes of an answer that never ends (a hostile receiver: each byte
    # restarts the client's read timeout); 0 answers normally.
    trickle_seconds: float = 0.0
    requests: list[Received] = field(default_factory=list)
    url: str = ""


@contextmanager
def receiver(
    statuses: list[int] | None = None, delay_seconds: float = 0.0, trickle_seconds: float = 0.0
) -> Iterator[Receiver]:
    state = Receiver(
        statuses=list(statuses or [200]),
        delay_seconds=delay_seconds,
        trickle_seconds=trickle_seconds,
    )
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            state.requests.append(Received(self.path, dict(self.headers.items()), body))
            if state.delay_seconds:
                stop.wait(state.delay_seconds)
            if state.trickle_seconds:
                self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Trickle: ")
                while not stop.wait(state.trickle_seconds):
                    try:
                        self.wfile.write(b"x")
                        self.wfile.flush()
                    except OSError:  # the client gave up
                        return
                return
            status = state.statuses.pop(0) if len(state.statuses) > 1 else state.statuses[0]
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    with serve(Handler) as base:
        state.url = f"{base}/hook"
        try:
            yield state
        finally:
            stop.set()
