"""`conveyor exporter`: broker and job-store metrics read from Redis at scrape time."""
