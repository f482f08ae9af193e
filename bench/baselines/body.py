"""The request body every baseline takes: the same body Conveyor takes for demo.echo."""

from typing import Any

from pydantic import BaseModel


class Submission(BaseModel):
    """A task's name and its arguments."""

    task: str
    args: dict[str, Any] = {}
