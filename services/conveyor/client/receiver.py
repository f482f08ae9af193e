"""A webhook receiver for development (`conveyor webhooks listen`): prints each delivery
Conveyor makes to it (completion callbacks, `webhook.deliver` jobs), checks its signature,
and answers 204.

A local stand-in for the receiver a real application would run, so that callbacks can be
tried on a machine without internet access (they reach loopback addresses only when
`CONVEYOR_WEBHOOK__ALLOWED_NETWORKS` admits them, as `conveyor dev` does).
"""

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from conveyor.core.signing import tenant_secret, verify

MAX_BODY_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class Delivery:
    """One request received: where it was sent, for which tenant, the JSON body, and
    whether its `Conveyor-Signature` is valid under that tenant's key.
    """

    path: str
    tenant: str
    body: Any
    signature_valid: bool

    def summary(self) -> str:
        """One line: the job a callback carries (or the payload), and the signature verdict."""
        verdict = "signature valid" if self.signature_valid else "SIGNATURE INVALID"
        body = self.body
        if isinstance(body, dict) and {"id", "task", "state"} <= body.keys():
            what = f"job {body['id']} {body['task']} {body['state']}"
            if body.get("result") is not None:
                what += f" result={json.dumps(body['result'], separators=(',', ':'))}"
            if body.get("error"):
                what += f" error={body['error'].get('type')}: {body['error'].get('message')}"
        else:
            what = json.dumps(body, separators=(",", ":"))[:500]
        return f"POST {self.path} (tenant {self.tenant}): {what}; {verdict}"


class Receiver:
    """An HTTP server on `host:port` (port 0: any free one) calling `on_delivery` for each
    POST; `serve(count)` returns after `count` deliveries (None: until `stop()`).
    """

    def __init__(
        self,
        signing_secret: str,
        on_delivery: Callable[[Delivery], None],
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.signing_secret = signing_secret
        self.on_delivery = on_delivery
        self.received = 0
        self._done = threading.Event()
        self._count: int | None = None
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY_BYTES:
                    self.send_error(413)
                    return
                raw = self.rfile.read(length)
                self.send_response(204)
                self.end_headers()
                receiver.handle(self.path, dict(self.headers.items()), raw)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: each delivery is reported by `on_delivery` instead."""

        self.server = ThreadingHTTPServer((host, port), Handler)

    @property
    def url(self) -> str:
        """The base URL the server listens on."""
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def handle(self, path: str, headers: dict[str, str], raw: bytes) -> None:
        """Decode, verify and report one delivery; stop once `count` were received."""
        lowered = {name.lower(): value for name, value in headers.items()}
        tenant = lowered.get("conveyor-tenant", "")
        secret = tenant_secret(self.signing_secret, tenant)
        valid = verify(secret, headers, raw)
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        self.on_delivery(Delivery(path, tenant, body, valid))
        self.received += 1
        if self._count is not None and self.received >= self._count:
            self._done.set()

    def serve(self, count: int | None = None) -> None:
        """Serve until `count` deliveries were received, or until `stop()`."""
        self._count = count
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            self._done.wait()
        finally:
            self.server.shutdown()
            self.server.server_close()

    def stop(self) -> None:
        """Make `serve` return."""
        self._done.set()
