"""One selection from a config on Ray: check what can be checked first, embed the pool, select, return the ids."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import pyarrow as pa
from torch import nn

from dist_al.config import Config, load_config
from dist_al.core.bait import check_reduction
from dist_al.core.inputs import check_budget
from dist_al.core.options import BaitOptions
from dist_al.inputs.contract import open_inputs
from dist_al.models.build import build_model, classifier_layer
from dist_al.runtime.cluster import cluster_session
from dist_al.runtime.sharded_pool import SelectionResult, ShardedPool


def preflight(cfg: Config, n_labeled: int = 0) -> nn.Module:
    """What can be checked without Ray (pool footers, the reader and its columns, model and checkpoint, budget,
    BAIT's size), so bad input fails in seconds, before any worker starts or anything is written. ``n_labeled``:
    labeled ids known to be in the pool. Answers the built model, for ShardedPool to ship (the checkpoint is
    read once)."""
    pool, _ = open_inputs(cfg.pool, cfg.inputs)
    model = build_model(cfg.model, seed=cfg.selection.seed, storage_options=cfg.pool.storage_options)
    check_budget(cfg.selection.budget, pool.num_rows - n_labeled)
    options = cfg.selection.options()
    if isinstance(options, BaitOptions):
        layer = classifier_layer(model, cfg.model.classifier)
        check_reduction(options, layer.out_features, layer.in_features)
    return model


def sharded_pool(
    cfg: Config, network: nn.Module | None = None, *, progress: bool = False, labels: bool = False
) -> ShardedPool:
    """The config's pool embedded by ShardWorkers with ``network``'s weights (default: the config's model,
    built once from ``selection.seed``). Ray must be running."""
    return ShardedPool(
        cfg.pool,
        cfg.model,
        cfg.cluster,
        inputs=cfg.inputs,
        network=network,
        seed=cfg.selection.seed,
        progress=progress,
        labels=labels,
    )


def run_selection(cfg: Config, *, labeled_ids: Collection | None = None, progress: bool = False) -> SelectionResult:
    """One selection as the config says: embed the pool on Ray, select, return the ids."""
    network = preflight(cfg)
    with cluster_session(cfg):
        pool = sharded_pool(cfg, network, progress=progress)
        try:
            return pool.select(
                cfg.selection.strategy,
                cfg.selection.budget,
                seed=cfg.selection.seed,
                options=cfg.selection.options(),
                labeled_ids=labeled_ids,
            )
        finally:
            pool.close()


def select(
    config: str | dict | Config,
    *,
    overrides: Sequence[str] = (),
    labeled_ids: Collection | None = None,
    progress: bool = False,
) -> pa.Table:
    """Selects the next batch to label, as ``dist-al select`` does, from a notebook or a script.

    Args:
        config: a YAML file's path, a config as a dict (as the YAML would hold it), or a `Config`.
        overrides: ``"key=value"`` strings applied on top, as ``--set`` does (``"selection.budget=500"``).
        labeled_ids: pool ids never to select (already labeled); BAIT counts them in its labeled Fisher.
        progress: show progress bars on a terminal.

    Returns:
        A pyarrow Table with columns ``id, rank, strategy, score``, in pick order.

    Raises:
        dist_al.core.errors.UserError: a bad config, pool, model or budget, with a message naming it.
    """
    if isinstance(config, Config):
        cfg = load_config(None, overrides, base=config.raw())
    elif isinstance(config, str):
        cfg = load_config(config, overrides)
    else:
        cfg = load_config(None, overrides, base=config)
    return run_selection(cfg, labeled_ids=labeled_ids, progress=progress).table
