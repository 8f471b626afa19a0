"""Benchmarks that print ratios measured within one run (DESIGN.md section 8).

`python -m dist_al.bench core` (or `dist-al bench core`): the numeric core on
one device, against the memory-bandwidth bound and the dense reference
algorithms of `dist_al.testing.oracles`. See `dist_al.bench.core`.
"""
