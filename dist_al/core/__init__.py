"""The numeric core: selection algorithms in plain torch, with no Ray import."""

from .api import STRATEGIES, Selection, select

__all__ = ["STRATEGIES", "Selection", "select"]
