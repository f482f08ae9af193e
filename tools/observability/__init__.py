"""Generators of the observability artifacts: dashboards, rules, their tests and the catalogue.

Run `python -m tools.observability.artifacts` (`make artifacts`) to write them, with `--check`
to list the stale ones.
"""
