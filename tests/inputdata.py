"""Real image and text pools for the reader tests, made here from what ships in packages (no download), and the
small models that eat them.

Images: scikit-learn's digits (8x8, 16 grey levels, 10 classes), scaled to 0..255 and enlarged to 16x16, written
as PNG (even rows) and JPEG (odd rows) files; a pool holds them as bytes in Parquet, as Hugging Face structs, or as
URIs of files on local disk or in the moto S3 server. Text: short sentences made from a per-class vocabulary, and
a WordLevel tokenizer trained on them here with the ``tokenizers`` library.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch import nn

from dist_al.data.storage import filesystem

SIDE = 16
TEXT_CLASSES = 3
_WORDS = {
    0: "goal match team score player league coach win",
    1: "stock market price trade bank profit share fund",
    2: "rain storm cloud wind snow sun forecast cold",
}
_COMMON = "the a today very new after before with and".split()


def digits(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(n digit images (n, 8, 8) uint8 0..255, labels), in the data set's order."""
    from dist_al.data.digits import digit_images

    images, y = digit_images()
    return (images[:n] * 255 / 16).round().astype(np.uint8), y[:n]


def encode(image: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).resize((SIDE, SIDE), Image.Resampling.NEAREST).save(buf, format=fmt)
    return buf.getvalue()


def image_files(n: int) -> tuple[list[bytes], list[str], np.ndarray]:
    """(encoded files, their extensions, labels): PNG for even rows, JPEG for odd ones."""
    images, labels = digits(n)
    formats = ["PNG" if i % 2 == 0 else "JPEG" for i in range(n)]
    return [encode(im, f) for im, f in zip(images, formats)], [f.lower() for f in formats], labels


def write_parquet(uri: str, table: pa.Table, storage_options: dict | None = None, rows_per_group: int = 40) -> None:
    fs, path = filesystem(uri, storage_options)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as f:
        pq.write_table(table, f, row_group_size=rows_per_group)


def image_pool(
    root: str,
    n: int,
    layout: str,
    *,
    storage_options: dict | None = None,
    first_id: int = 0,
    rows_per_group: int = 40,
) -> str:
    """A pool of n digit images at ``root``/pool: ``layout`` "bytes" (a binary column), "struct" (Hugging Face's
    {bytes, path}) or "uri" (files under ``root``/images, their URIs in a string column). Returns the pool URI."""
    blobs, exts, labels = image_files(n)
    ids = np.arange(first_id, first_id + n, dtype=np.int64)
    if layout == "bytes":
        column = pa.array(blobs, pa.binary())
    elif layout == "struct":
        column = pa.StructArray.from_arrays(
            [pa.array(blobs, pa.binary()), pa.array([f"{i}.{e}" for i, e in zip(ids, exts)])], ["bytes", "path"]
        )
    else:
        fs, base = filesystem(f"{root}/images", storage_options)
        fs.makedirs(base, exist_ok=True)
        uris = []
        for i, blob, ext in zip(ids, blobs, exts):
            uri = f"{root}/images/{i}.{ext}"
            with filesystem(uri, storage_options)[0].open(filesystem(uri, storage_options)[1], "wb") as f:
                f.write(blob)
            uris.append(uri)
        column = pa.array(uris)
    table = pa.table({"id": ids, "image": column, "label": labels})
    write_parquet(f"{root}/pool/part-00000.parquet", table, storage_options, rows_per_group)
    return f"{root}/pool"


def sentences(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, TEXT_CLASSES, n)
    out = []
    for y in labels:
        words = list(rng.choice(_WORDS[int(y)].split(), rng.integers(2, 6))) + list(rng.choice(_COMMON, 2))
        rng.shuffle(words)
        out.append(" ".join(words))
    return out, labels.astype(np.int64)


def train_tokenizer(path: str) -> str:
    """A WordLevel tokenizer over the text pools' vocabulary, trained here and saved as tokenizer.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = [*_WORDS.values(), " ".join(_COMMON)]
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"]))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tok.save(path)
    return path


def text_pool(root: str, n: int, *, seed: int = 0, first_id: int = 0, rows_per_group: int = 40) -> str:
    texts, labels = sentences(n, seed)
    ids = np.arange(first_id, first_id + n, dtype=np.int64)
    write_parquet(
        f"{root}/part-00000.parquet", pa.table({"id": ids, "text": texts, "label": labels}), None, rows_per_group
    )
    return root


# --------------------------------------------------------------------------- models (model.factory: inputdata:NAME)


class TinyCNN(nn.Module):
    def __init__(self, channels: int, n_classes: int, width: int = 8):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten()
        )
        self.head = nn.Linear(width * 16, n_classes)

    def forward(self, x):
        return self.head(self.body(x))


def tiny_cnn(channels: int = 1, n_classes: int = 10, width: int = 8) -> nn.Module:
    return TinyCNN(channels, n_classes, width)


class BagOfWords(nn.Module):
    """Mean of token embeddings over the attention mask, then a linear classifier: takes the text reader's dict."""

    def __init__(self, vocab: int, n_classes: int, dim: int = 16):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, input_ids, attention_mask):
        mask = attention_mask.unsqueeze(-1).float()
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.head(torch.tanh(pooled))


def bag_of_words(vocab: int = 64, n_classes: int = TEXT_CLASSES, dim: int = 16) -> nn.Module:
    return BagOfWords(vocab, n_classes, dim)


# --------------------------------------------------------------------------- users' readers (inputdata:NAME)


def fails_on_value(batch: pa.RecordBatch, value: float) -> torch.Tensor:
    """A reader with a bug: the vectors of the batch, unless a row's first value is ``value``."""
    from dist_al.inputs import vectors

    x = vectors(batch)
    if bool((x[:, 0] == value).any()):
        raise ValueError(f"cannot handle {value}")
    return x


def one_row_short(batch: pa.RecordBatch) -> torch.Tensor:
    """A reader that breaks the contract: one row fewer than the batch."""
    from dist_al.inputs import vectors

    return vectors(batch)[1:]


def too_narrow(batch: pa.RecordBatch) -> torch.Tensor:
    """A reader whose output the model cannot take: vectors cut to their first 3 values."""
    from dist_al.inputs import vectors

    return vectors(batch)[:, :3].contiguous()
