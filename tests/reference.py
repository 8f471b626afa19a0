"""The slow, obviously-correct reference for distributed selections: one process embeds the whole pool."""

from __future__ import annotations

import numpy as np
import torch

from dist_al.model import Embedder, ModelSpec, build_model
from dist_al.pool import PoolSpec, open_pool, plan_shards, read_shard


def embed_pool(uri: str, model: dict, seed: int = 7) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """(ids, p, h) of every row in pool order, with the model a ShardedPool builds from `seed`."""
    pool = open_pool(PoolSpec(uri, label_column="label"))
    embed = Embedder(build_model(ModelSpec(**model), seed=seed))
    ids, probs, feats = [], [], []
    for batch in read_shard(pool, plan_shards(pool, 1)[0]):
        p, h = embed(torch.from_numpy(batch["features"].copy()))
        ids.append(batch["ids"])
        probs.append(p)
        feats.append(h)
    return np.concatenate(ids), torch.cat(probs), torch.cat(feats)
