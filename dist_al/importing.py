"""Objects named in the config by import path (``package.module:name``): model factories, readers."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from dist_al.core.errors import UserError


def import_path(path: str, key: str, error: type[UserError] = UserError) -> Any:
    """The object ``path`` names; ``key`` is the config key that named it, for the one-line ``error``.

    A module next to the config (the current directory) is found, as ``python -m`` would find it.
    """
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise error(f"{key} must look like 'package.module:function', got {path!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise error(f"{key} {path!r}: cannot import module {module_name!r} ({err})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise error(f"{key} {path!r}: module {module_name!r} has no attribute {attr!r}") from None
