"""The ingress HTTP API (FastAPI)."""
