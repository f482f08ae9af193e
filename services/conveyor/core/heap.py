"""Garbage-collector settings of the long-running processes (API workers, Celery workers).

What a process builds before it serves (the app, its routes and models, the task catalogue,
Celery's registry) lives as long as the process; CPython's full collections walked all of it
again and again while requests and jobs waited.
"""

import gc

# Young objects a process may allocate before the collector's first generation runs: requests
# and jobs make short-lived cycles (futures, exceptions, tracebacks) faster than the default
# 700 lets accumulate; the older generations are collected as rarely as before, relative to it.
GC_YOUNG_THRESHOLD = 20_000


def settle_heap() -> None:
    """Take what exists now out of the collector's scans (`gc.freeze`) and collect the young
    generation less often. Called once a process has built what it serves with.
    """
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)
