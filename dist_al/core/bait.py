"""BAIT (work in progress)."""
class BaitShard:
    pass
def check_reduction(options, k, d):
    pass
def bait(group, budget, **opts):
    raise NotImplementedError
