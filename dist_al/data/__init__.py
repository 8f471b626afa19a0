"""Pools: Parquet reading and writing, the workdir's atomic object-store I/O, synthetic data."""
