"""The slow, obviously-correct reference for distributed selections: one process embeds the whole pool."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from dist_al.config import ModelConfig, PoolConfig
from dist_al.data.pool import open_pool, plan_shards, read_shard
from dist_al.models.build import build_model
from dist_al.models.embedder import Embedder


def embed_pool(uri: str, model: dict, seed: int = 7) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """(ids, p, h) of every row in pool order, with the model a ShardedPool builds from `seed`."""
    pool = open_pool(PoolConfig(uri=uri, label_column="label"))
    embed = Embedder(build_model(ModelConfig(**model), seed=seed))
    ids, probs, feats = [], [], []
    for batch in read_shard(pool, plan_shards(pool, 1)[0]):
        p, h = embed(torch.from_numpy(batch["features"].copy()))
        ids.append(batch["ids"])
        probs.append(p)
        feats.append(h)
    return np.concatenate(ids), torch.cat(probs), torch.cat(feats)


def full_scan_labeled(pool_cfg: PoolConfig, labels: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`dist_al.campaign.train.gather_labeled` as it was: one pass over every row of the pool, keeping the labeled
    ones."""
    from dist_al.campaign.train import _label_keys

    keys = _label_keys(labels)
    pool = open_pool(pool_cfg)
    ids_parts, feat_parts = [], []
    for batch in read_shard(pool, plan_shards(pool, 1)[0], columns=("id", "features")):
        mask = np.isin(batch["ids"], keys)
        ids_parts.append(batch["ids"][mask])
        feat_parts.append(batch["features"][mask])
    ids, feats = np.concatenate(ids_parts), np.concatenate(feat_parts)
    uniq, counts = np.unique(ids, return_counts=True)
    if len(uniq) < len(ids):
        dup = uniq[counts > 1][0]
        raise ValueError(
            f"labeled id {dup.item() if isinstance(dup, np.generic) else dup!r} appears more than "
            f"once in pool {pool.spec.uri}"
        )
    if len(ids) < len(keys):
        missing = keys[~np.isin(keys, ids)]
        examples = ", ".join(repr(k.item() if isinstance(k, np.generic) else k) for k in missing[:5])
        hint = ""
        id_type = pool.schema.field(pool.spec.id_column).type
        if keys.dtype == object and pa.types.is_integer(id_type):
            hint = " (the pool's ids are integers, the labels' ids are not)"
        elif keys.dtype != object and not pa.types.is_integer(id_type):
            hint = " (the pool's ids are strings, the labels' ids are integers)"
        raise ValueError(
            f"{len(missing)} of {len(keys)} labeled id(s) are not in pool {pool.spec.uri}{hint}; e.g. {examples}"
        )
    y = np.fromiter((int(labels[k]) for k in ids.tolist()), dtype=np.int64, count=len(ids))
    return ids, feats, y
