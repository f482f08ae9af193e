"""Built-in tasks. Each module is plain job logic declared with `@task`; no Celery import."""
