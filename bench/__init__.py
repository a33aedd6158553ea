"""Benchmarks: run as scripts (`.venv/bin/python bench/NAME.py`), not part of the test suite."""
