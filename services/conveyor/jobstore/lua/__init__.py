"""Lua scripts of the job store (package data)."""
