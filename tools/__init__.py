"""Build tools of the repository (not shipped: the `conveyor` package holds only runtime code)."""
