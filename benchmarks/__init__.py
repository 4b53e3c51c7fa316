"""Standalone benchmark scripts: ``python -m benchmarks.NAME`` (see each module)."""
