"""The tutorial-style FastAPI + Celery services Conveyor is compared against."""
