"""Bounds every submission shares, a job's or a workflow step's: an idempotency key's form,
the longest time limit, and the shape of the arguments (nesting depth, string and key length,
numbers the record's JSON codec writes exactly, strings UTF-8 can write). Pure: the API turns a
fault into a 422.
"""

import math
from typing import Any

IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,200}$"
# The longest time limit any submission may ask for; a task may declare a lower maximum.
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600

# What the job record's JSON codec (orjson) writes exactly: larger integers would be a 500,
# and JSON has no infinity (Python's parser reads 1e400 as one; it would be stored as null).
MIN_INTEGER, MAX_INTEGER = -(2**63), 2**64 - 1


def first_shape_fault(value: Any, max_depth: int, max_len: int) -> tuple[str, str] | None:
    """(JSON pointer, what is wrong) of the first place of `value` past a limit, or None."""
    # Iterative, so a hostile depth cannot exhaust the interpreter's stack. Each entry keeps
    # its parent's entry and its own key: the pointer is spelled only for a fault (spelling
    # one per value was half of this walk's cost).
    stack: list[tuple[Any, Any, Any, int]] = [(value, None, None, 0)]
    while stack:
        entry = stack.pop()
        item, _, _, depth = entry
        kind = type(item)  # the exact JSON types first: a submission holds little else
        if kind is str or (kind not in _LEAVES and isinstance(item, str)):
            if len(item) > max_len:
                return _pointer(entry), f"longer than {max_len} characters"
            if not _writable(item):
                return _pointer(entry), _SURROGATE.format("a string")
        elif kind is dict or kind is list or isinstance(item, dict | list | tuple):
            if depth >= max_depth:
                return _pointer(entry), f"nested deeper than {max_depth} levels"
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in pairs:
                key_text = key if type(key) is str else str(key)
                if len(key_text) > max_len:
                    return _pointer(entry), f"has a key longer than {max_len} characters"
                if not _writable(key_text):
                    return _pointer(entry), _SURROGATE.format("a key")
                stack.append((child, entry, key_text, depth + 1))
        elif isinstance(item, int) and not MIN_INTEGER <= item <= MAX_INTEGER:
            return _pointer(entry), "an integer outside the range -2^63 to 2^64 - 1"
        elif isinstance(item, float) and not math.isfinite(item):
            return _pointer(entry), "a number too large for a double (or not a number)"
    return None


# Exact types that are no string (the str test's shortcut past isinstance).
_LEAVES = frozenset({int, float, bool, type(None), dict, list})


def _pointer(entry: tuple[Any, Any, Any, int]) -> str:
    """The JSON pointer of a walk's entry, from its chain of parents' keys."""
    keys: list[str] = []
    while entry[1] is not None:
        keys.append(entry[2].replace("~", "~0").replace("/", "~1"))
        entry = entry[1]
    return "".join(f"/{key}" for key in reversed(keys))


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
