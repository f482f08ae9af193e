"""The periodic-job scheduler (celery beat with a RedBeat leader lock)."""
