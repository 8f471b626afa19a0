"""YAML config files: parsed with a safe loader, checked key by key, overridable with `--set key=value`.

The keys are a public contract (README "Config reference"). Every error names
the key and, for a misspelt key, suggests the closest valid one.
"""

from __future__ import annotations

import copy
import difflib
from typing import Any

import yaml

from dist_al.core.api import STRATEGIES, resolve_options
from dist_al.core.errors import UserError


class ConfigError(UserError):
    """A config problem; the message names the key."""


_ANY = object()

# key -> (default, allowed types). None in types means the key may be null.
SCHEMA: dict[str, dict[str, tuple[Any, tuple]]] = {
    "pool": {
        "uri": (_ANY, (str,)),
        "id_column": ("id", (str,)),
        "feature_column": ("features", (str,)),
        "label_column": (None, (str, None)),
        "storage_options": ({}, (dict,)),
    },
    "model": {
        "factory": ("dist_al.models:mlp", (str,)),
        "kwargs": ({}, (dict,)),
        "checkpoint": (None, (str, None)),
        "classifier": (None, (str, None)),
        "autocast": (None, (str, None)),
        "batch_size": (4096, (int,)),
    },
    "selection": {
        "strategy": ("badge", (str,)),
        "budget": (_ANY, (int,)),
        "seed": (0, (int,)),
        # strategy options (lam, oversample, ...) are checked against the strategy
    },
    "train": {
        "epochs": (20, (int,)),
        "lr": (1e-3, (float,)),
        "batch_size": (128, (int,)),
        "workers": (2, (int,)),
        "use_gpu": (False, (bool,)),
        "cpus_per_worker": (1, (int, float)),
        "warm_start": (False, (bool,)),
        "seed": (None, (int, None)),
        "storage_path": (None, (str, None)),
        "backend": ("ray", (str,)),
    },
    "simulation": {
        "initial_labeled": (100, (int,)),
        "rounds": (5, (int,)),
        "strategies": (None, (str, None)),
        "seeds": (1, (int,)),
    },
    "eval": {
        "uri": (None, (str, None)),
    },
    "cluster": {
        "address": (None, (str, None)),
        "workers": (2, (int,)),
        "gpus_per_worker": (0, (int, float)),
        "cpus_per_worker": (1, (int, float)),
        "start_timeout_s": (300.0, (int, float)),  # waiting for a cluster dist-al connects to: dist_al/cluster.py
    },
}
TOP_LEVEL: dict[str, tuple[Any, tuple]] = {"workdir": ("./dist-al-work", (str,))}

_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", dict: "a mapping", bool: "true or false",
               None: "null"}


def _suggest(key: str, valid) -> str:
    hint = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f" (did you mean {hint[0]!r}?)" if hint else ""


def _check_type(key: str, value: Any, types: tuple) -> Any:
    if value is None and None in types:
        return None
    ok = tuple(t for t in types if t is not None)
    if isinstance(value, bool):  # yaml's yes/no are booleans, never numbers
        if bool in ok:
            return value
    elif isinstance(value, ok) or (float in ok and isinstance(value, int)):
        return value
    want = " or ".join(_TYPE_NAMES[t] for t in types)
    shown = f"a {type(value).__name__}" if key == "pool.storage_options" else repr(value)  # may hold credentials
    raise ConfigError(f"config key {key}: expected {want}, got {shown}")


def load_config(path: str | None = None, overrides: list[str] | tuple[str, ...] = (), base: dict | None = None) -> dict:
    """Reads YAML (safe loader), applies `key=value` overrides, checks and fills defaults."""
    return validate(read_config(path, overrides, base))


def read_config(path: str | None = None, overrides: list[str] | tuple[str, ...] = (), base: dict | None = None) -> dict:
    """What `load_config` checks: the YAML file with the overrides applied, as given (no defaults, unchecked)."""
    raw: dict = copy.deepcopy(base) if base else {}
    if path is not None:
        try:
            with open(path) as f:
                loaded = yaml.safe_load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except OSError as err:
            raise ConfigError(f"config file {path} cannot be read: {err.strerror or err}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(loaded).__name__}")
        raw = _merge(raw, loaded)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        _set_path(raw, key.strip(), value)
    return raw


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _set_path(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a section")
        node = nxt
    node[parts[-1]] = value


def validate(raw: dict) -> dict:
    """A complete, checked config (new dict); raises ConfigError naming the first bad key."""
    valid_top = list(SCHEMA) + list(TOP_LEVEL)
    for key in raw:
        if key not in valid_top:
            raise ConfigError(f"unknown config key {key!r}{_suggest(key, valid_top)}; valid sections: {', '.join(valid_top)}")
    cfg: dict[str, Any] = {}
    for section, fields in SCHEMA.items():
        given = raw.get(section) or {}
        if not isinstance(given, dict):
            raise ConfigError(f"config key {section}: expected a mapping, got {given!r}")
        out = {}
        for key, value in given.items():
            if key not in fields and section != "selection":
                raise ConfigError(f"unknown config key {section}.{key}{_suggest(key, fields)}")
        for key, (default, types) in fields.items():
            if key not in given:
                if default is _ANY:
                    raise ConfigError(f"config key {section}.{key} is required")
                out[key] = copy.deepcopy(default)
            else:
                out[key] = _check_type(f"{section}.{key}", given[key], types)
        if section == "selection":
            out.update(_strategy_options(given, fields))
        cfg[section] = out
    for key, (default, types) in TOP_LEVEL.items():
        cfg[key] = _check_type(key, raw[key], types) if key in raw else default
    _check_values(cfg)
    return cfg


def _strategy_options(given: dict, fields: dict) -> dict:
    strategy = given.get("strategy", fields["strategy"][0])
    if strategy not in STRATEGIES:
        raise ConfigError(f"config key selection.strategy: unknown strategy {strategy!r}"
                          f"{_suggest(str(strategy), STRATEGIES)}; choose one of {', '.join(STRATEGIES)}")
    options = {k: v for k, v in given.items() if k not in fields}
    allowed = [k for k in STRATEGIES[strategy].options if k != "progress"]
    for key in options:
        if key not in allowed:
            valid = list(fields) + allowed
            raise ConfigError(f"unknown config key selection.{key} for strategy {strategy!r}{_suggest(key, valid)}; "
                              f"valid keys: {', '.join(valid)}")
    try:
        resolve_options(strategy, options)
    except UserError as err:
        raise ConfigError(f"config key selection: {err}") from None
    return options


def _check_values(cfg: dict) -> None:
    if cfg["selection"]["budget"] <= 0:
        raise ConfigError(f"config key selection.budget must be positive, got {cfg['selection']['budget']}")
    if cfg["selection"]["seed"] < 0:
        raise ConfigError(f"config key selection.seed must be >= 0, got {cfg['selection']['seed']}")
    if cfg["cluster"]["workers"] < 1:
        raise ConfigError(f"config key cluster.workers must be >= 1, got {cfg['cluster']['workers']}")
    for key in ("gpus_per_worker", "cpus_per_worker"):
        if cfg["cluster"][key] < 0:
            raise ConfigError(f"config key cluster.{key} must be >= 0, got {cfg['cluster'][key]}")
    if not cfg["cluster"]["start_timeout_s"] > 0:
        raise ConfigError("config key cluster.start_timeout_s must be positive, "
                          f"got {cfg['cluster']['start_timeout_s']}")
    for key in ("epochs", "batch_size", "workers"):
        if cfg["train"][key] < 1:
            raise ConfigError(f"config key train.{key} must be >= 1, got {cfg['train'][key]}")
    if cfg["train"]["lr"] <= 0:
        raise ConfigError(f"config key train.lr must be positive, got {cfg['train']['lr']}")
    if cfg["simulation"]["initial_labeled"] < 0 or cfg["simulation"]["rounds"] < 1:
        raise ConfigError("config keys simulation.initial_labeled must be >= 0 and simulation.rounds >= 1")
    if cfg["simulation"]["seeds"] < 1:
        raise ConfigError(f"config key simulation.seeds must be >= 1, got {cfg['simulation']['seeds']}")
    if cfg["train"]["backend"] not in ("ray", "local"):
        raise ConfigError(f"config key train.backend must be 'ray' or 'local', got {cfg['train']['backend']!r}")
    if cfg["model"]["batch_size"] < 1:
        raise ConfigError(f"config key model.batch_size must be >= 1, got {cfg['model']['batch_size']}")
    if cfg["model"]["autocast"] not in (None, "bf16", "fp16"):
        raise ConfigError(f"config key model.autocast must be bf16, fp16 or null, got {cfg['model']['autocast']!r}")


def strategy_options(cfg: dict) -> dict:
    """The strategy's own options from the selection section."""
    return {k: v for k, v in cfg["selection"].items() if k not in SCHEMA["selection"]}


def dump(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)
