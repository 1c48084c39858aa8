"""Benchmarks of the license server against a bare JSON-lines baseline (see docs/performance.md)."""
