"""dist-al: large-pool active learning (BADGE, BAIT and baselines) on Ray.

`dist_al.core.select` works on arrays in one process (no Ray import);
`dist_al.select` runs a config against a Parquet pool on Ray.
"""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy, so `import dist_al.core` never pulls in Ray.
    if name == "select":
        from dist_al.runtime.selection import select

        return select
    raise AttributeError(f"module 'dist_al' has no attribute {name!r}")
