"""The operator console: a page served by the API under /ui that calls the public /v1 API."""
