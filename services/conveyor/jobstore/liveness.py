"""When a worker counts as live: its consumer heartbeat (`keys.consumers`) is recent enough.
The exporter and the API's overview count live workers the same way.
"""

# Workers record a heartbeat every quarter of the visibility timeout (worker/leases.py). One
# missed beat is tolerated; a worker silent for 2.5 intervals is not counted any more.
HEARTBEATS_PER_LEASE = 4
LIVE_WORKER_HEARTBEATS = 2.5


def live_worker_window(visibility_timeout: float) -> float:
    """Seconds since its last heartbeat for which a worker still counts as live."""
    return LIVE_WORKER_HEARTBEATS * visibility_timeout / HEARTBEATS_PER_LEASE
