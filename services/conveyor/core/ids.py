"""Random identifiers."""

import os


def random_uuid() -> str:
    """A random (version 4, RFC 9562) UUID in its canonical text form, as
    `str(uuid.uuid4())` gives it from the same 16 bytes of `os.urandom`, at under half its
    cost (the `uuid.UUID` object is never built): a submission draws two, the job's id and
    its message's delivery tag.
    """
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # the RFC's variant
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
