"""A real SMTP server (aiosmtpd) on a free local port, recording what it receives."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from typing import Any

from aiosmtpd.controller import Controller

from tests.support.processes import free_port


@dataclass
class Mailbox:
    """Messages received, and the reply to give at DATA ("250 OK" accepts)."""

    reply: str = "250 OK"
    messages: list[tuple[list[str], Message]] = field(default_factory=list)
    port: int = 0


@contextmanager
def smtp_server(reply: str = "250 OK") -> Iterator[Mailbox]:
    box = Mailbox(reply=reply)

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            if box.reply.startswith("250"):
                box.messages.append((list(envelope.rcpt_tos), message_from_bytes(envelope.content)))
            return box.reply

    box.port = free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=box.port)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()
