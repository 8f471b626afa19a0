"""The numeric core: selection algorithms in plain torch, with no Ray import.

Its names load lazily, so `dist_al.core.errors` and `dist_al.core.options` (what the config and the CLI's
checks need) import without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .api import STRATEGIES, Selection, select

__all__ = ["STRATEGIES", "Selection", "select"]


def __getattr__(name: str):
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'dist_al.core' has no attribute {name!r}")
