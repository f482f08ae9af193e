"""Metrics, traces and log context: declared here, wired into each service by its factory."""
