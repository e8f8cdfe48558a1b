"""Benchmarks; each module states the command that reproduces it (see docs/benchmarks.md)."""
