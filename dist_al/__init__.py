"""dist-al: large-pool active learning (BADGE, BAIT and baselines) on Ray."""

__version__ = "0.1.0"
