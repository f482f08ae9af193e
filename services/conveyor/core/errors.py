"""Exceptions task code raises to steer retries.

Anything else a task raises is treated as permanent unless the task's retry policy lists it.
"""


class RetryableError(Exception):
    """A transient failure: the job is retried with backoff while it has retries left."""


class PermanentError(Exception):
    """A failure that retrying cannot fix: the job fails at once."""


class JobCancelledError(Exception):
    """Raised inside a running job when a client cancelled it (checked at each progress call)."""


class JobSupersededError(Exception):
    """Raised inside a running job whose attempt is no longer the job's current one (its
    worker was paused past its lease and another attempt started): it must stop, and its
    writes are refused.
    """
