"""The slow, obviously-correct reference for distributed selections: one process embeds the whole pool."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from dist_al.config import ModelConfig, PoolConfig
from dist_al.data.pool import open_pool
from dist_al.models.build import build_model
from dist_al.models.embedder import Embedder


def vectors_of(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A vector column as (rows, D) float32, row by row in Python: lists as they are, binary as raw floats of the
    type its field metadata names (float32 without one)."""
    if (
        pa.types.is_binary(column.type)
        or pa.types.is_fixed_size_binary(column.type)
        or pa.types.is_large_binary(column.type)
    ):
        raise TypeError("binary columns: use pool_vectors, which knows the field metadata")
    return np.asarray(column.to_pylist(), dtype=np.float32)


def pool_vectors(uri: str, column: str = "features", id_column: str = "id") -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of every row of a pool in pool order (files sorted by name), read file by file."""
    pool = open_pool(PoolConfig(uri=uri, id_column=id_column))
    ids, rows = [], []
    for path in pool.files:
        table = pq.read_table(path, filesystem=pool.fs)
        field = table.schema.field(column)
        ids.append(
            np.asarray(
                table.column(id_column).to_pylist(),
                dtype=object if pa.types.is_string(table.schema.field(id_column).type) else np.int64,
            )
        )
        if pa.types.is_binary(field.type) or pa.types.is_fixed_size_binary(field.type):
            dtype = (field.metadata or {}).get(b"dist_al.dtype", b"float32").decode()
            rows.append(
                np.asarray(
                    [
                        np.frombuffer(b, dtype=np.dtype(dtype).newbyteorder("<"))
                        for b in table.column(column).to_pylist()
                    ],
                    dtype=np.float32,
                )
            )
        else:
            rows.append(vectors_of(table.column(column)))
    return np.concatenate(ids), np.concatenate(rows)


def embed_pool(uri: str, model: dict, seed: int = 7) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """(ids, p, h) of every row in pool order, with the model a ShardedPool builds from `seed`."""
    ids, x = pool_vectors(uri)
    embed = Embedder(build_model(ModelConfig(**model), seed=seed))
    p, h = embed(torch.from_numpy(x))
    return ids, p, h


def full_scan_labeled(pool_cfg: PoolConfig, labels: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`dist_al.campaign.train.gather_labeled` as it was: one pass over every row of the pool, keeping the labeled
    ones."""
    from dist_al.campaign.train import _label_keys

    keys = _label_keys(labels)
    pool = open_pool(pool_cfg)
    all_ids, all_feats = pool_vectors(pool_cfg.uri, id_column=pool_cfg.id_column)
    mask = np.isin(all_ids, keys)
    ids, feats = all_ids[mask], all_feats[mask]
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
