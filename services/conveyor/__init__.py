"""Conveyor: a job platform on FastAPI, Celery and Redis."""

__version__ = "0.1.0"
