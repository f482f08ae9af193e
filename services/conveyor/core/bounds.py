"""Bounds every submission shares, a job's or a workflow step's: an idempotency key's form,
the longest time limit, and the shape of the arguments (nesting depth, string and key length,
numbers the record's JSON codec writes exactly, strings UTF-8 can write). Pure: the API turns a
fault into a 422.
"""

import math
from collections.abc import Iterator
from typing import Any

IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,200}$"
# The longest time limit any submission may ask for; a task may declare a lower maximum.
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600

# What the job record's JSON codec (orjson) writes exactly: larger integers would be a 500,
# and JSON has no infinity (Python's parser reads 1e400 as one; it would be stored as null).
MIN_INTEGER, MAX_INTEGER = -(2**63), 2**64 - 1


def shape_faults(value: Any, max_depth: int, max_len: int) -> Iterator[tuple[str, str]]:
    """(JSON pointer, what is wrong) of the first place of `value` past a limit, if any."""
    # Iterative, so a hostile depth cannot exhaust the interpreter's stack.
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, pointer, depth = stack.pop()
        if isinstance(item, dict | list | tuple):
            if depth >= max_depth:
                yield pointer, f"nested deeper than {max_depth} levels"
                return
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in pairs:
                key_text = str(key)
                if len(key_text) > max_len:
                    yield pointer, f"has a key longer than {max_len} characters"
                    return
                if not _writable(key_text):
                    yield pointer, _SURROGATE.format("a key")
                    return
                escaped = key_text.replace("~", "~0").replace("/", "~1")
                stack.append((child, f"{pointer}/{escaped}", depth + 1))
        elif isinstance(item, str) and len(item) > max_len:
            yield pointer, f"longer than {max_len} characters"
            return
        elif isinstance(item, str) and not _writable(item):
            yield pointer, _SURROGATE.format("a string")
            return
        elif isinstance(item, int) and not MIN_INTEGER <= item <= MAX_INTEGER:
            yield pointer, "an integer outside the range -2^63 to 2^64 - 1"
            return
        elif isinstance(item, float) and not math.isfinite(item):
            yield pointer, "a number too large for a double (or not a number)"
            return


_SURROGATE = "{} holding a lone UTF-16 surrogate (\\ud800-\\udfff alone is no character)"


def _writable(text: str) -> bool:
    r"""Whether UTF-8 can write `text`: JSON may spell a lone surrogate (`"\ud800"`), which
    Python's parser reads into a string the record's encoder refuses.
    """
    if text.isascii():
        return True  # the common case, without encoding
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
