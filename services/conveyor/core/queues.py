"""The priority queues: the only place their names are spelled."""

from enum import StrEnum


class Queue(StrEnum):
    """A priority tier. The value is both the API's `priority` and the Celery queue name.

    Each tier is its own Redis list consumed by its own worker Deployment, so a flood of
    `low` jobs can never delay a `high` one.
    """

    HIGH = "high"
    DEFAULT = "default"
    LOW = "low"
