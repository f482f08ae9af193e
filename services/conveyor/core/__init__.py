"""Shared core: settings, the job model, the Redis job store and the task catalogue.

Nothing in this package imports Celery, so the API can use all of it without a broker client.
"""
