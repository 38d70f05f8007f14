"""Benchmarks, run on demand (not by the test suite)."""
