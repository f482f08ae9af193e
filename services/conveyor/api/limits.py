"""Request limits past the body gate (`body_gate.py`): the content type, and the shape of a
job's arguments.
"""

from typing import Any

from fastapi import Request

from conveyor.api.problems import ProblemError
from conveyor.core.bounds import first_shape_fault


async def require_json(request: Request) -> None:
    """A body sent with a content type other than JSON is a 415.

    Async: FastAPI runs a sync dependency in its thread pool, a hop that cost a submission
    8 % of its CPU.
    """
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


def check_args_shape(args: Any, max_depth: int, max_string_length: int) -> None:
    """422 when the arguments nest deeper than `max_depth`, hold a string (or key) longer
    than `max_string_length`, an integer outside [-2^63, 2^64 - 1] or a number too large for
    a double; the pointer names the first offending place. `args` is the validated model's
    Python dump (not its JSON dump, which would have turned an infinity into null).
    """
    fault = first_shape_fault(args, max_depth, max_string_length)
    if fault is not None:
        pointer, problem = fault
        raise ProblemError(
            422,
            "Invalid request",
            "The arguments exceed a size limit; see errors.",
            slug="validation-error",
            errors=[{"pointer": "#/args" + pointer, "detail": problem}],
        )
