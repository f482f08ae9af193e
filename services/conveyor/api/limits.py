"""Request limits past the body gate (`body_gate.py`): the content type, and the shape of a
job's arguments.
"""

import math
from collections.abc import Iterator
from typing import Any

from fastapi import Request

from conveyor.api.problems import ProblemError


def require_json(request: Request) -> None:
    """A body sent with a content type other than JSON is a 415."""
    content_type = request.headers.get("content-type")
    if content_type is None:
        return  # like FastAPI itself: a body without a type is read as JSON
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    ):
        return
    raise ProblemError(
        415,
        "Unsupported media type",
        f"Send the body as application/json, not {media or 'an empty type'}.",
        slug="unsupported-media-type",
    )


# What the job record's JSON codec (orjson) writes exactly: larger integers would be a 500,
# and JSON has no infinity (Python's parser reads 1e400 as one; it would be stored as null).
MIN_INTEGER, MAX_INTEGER = -(2**63), 2**64 - 1


def check_args_shape(args: Any, max_depth: int, max_string_length: int) -> None:
    """422 when the arguments nest deeper than `max_depth`, hold a string (or key) longer
    than `max_string_length`, an integer outside [-2^63, 2^64 - 1] or a number too large for
    a double; the pointer names the first offending place. `args` is the validated model's
    Python dump (not its JSON dump, which would have turned an infinity into null).
    """
    for pointer, problem in _shape_faults(args, max_depth, max_string_length):
        raise ProblemError(
            422,
            "Invalid request",
            "The arguments exceed a size limit; see errors.",
            slug="validation-error",
            errors=[{"pointer": "#/args" + pointer, "detail": problem}],
        )


def _shape_faults(value: Any, max_depth: int, max_len: int) -> Iterator[tuple[str, str]]:
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
                escaped = key_text.replace("~", "~0").replace("/", "~1")
                stack.append((child, f"{pointer}/{escaped}", depth + 1))
        elif isinstance(item, str) and len(item) > max_len:
            yield pointer, f"longer than {max_len} characters"
            return
        elif isinstance(item, int) and not MIN_INTEGER <= item <= MAX_INTEGER:
            yield pointer, "an integer outside the range -2^63 to 2^64 - 1"
            return
        elif isinstance(item, float) and not math.isfinite(item):
            yield pointer, "a number too large for a double (or not a number)"
            return
