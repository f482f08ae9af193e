"""Random identifiers."""

import os

# The variant digit (RFC 9562: bits 10xx) of each hex digit, keeping its two low bits.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def random_uuid() -> str:
    """A random (version 4, RFC 9562) UUID in its canonical text form, as
    `str(uuid.uuid4())` gives it from the same 16 bytes of `os.urandom`, at under a third of
    its cost (the `uuid.UUID` object is never built, the version and variant are set on the
    hex text): a submission draws two, the job's id and its message's delivery tag.
    """
    text = os.urandom(16).hex()
    return f"{text[:8]}-{text[8:12]}-4{text[13:16]}-{_VARIANT[text[16]]}{text[17:20]}-{text[20:]}"
