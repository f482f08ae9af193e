"""The Celery worker: one process per tier, running catalogued tasks."""
