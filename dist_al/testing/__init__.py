"""Slow, obviously-correct reference implementations: the oracles that tests and benchmarks check the core against."""
