"""``dist_al.inputs:text``: a text column tokenised into ``{input_ids, attention_mask}``, padded per batch.

The tokenizer is a ``tokenizer.json`` file of the Hugging Face ``tokenizers`` library (the optional extra
``dist-al[text]``) that the user supplies by path or fsspec URL (read with ``storage_options``, default the
pool's); nothing is ever downloaded. Each batch is encoded with ``Tokenizer.encode_batch`` (Rust, releasing the
GIL), truncated to ``max_length`` tokens and padded to its longest row with the tokenizer's own padding token
(``pad_token`` names another; without either, id 0). The model is called as
``model(input_ids=..., attention_mask=...)``, both int64 (rows, L).

An empty (or null) text, or one that gives no tokens, is an :class:`InputError` naming the row; a tokenizer
file that does not exist or is not a tokenizer is one line naming the file, from the footer check, before any
worker starts.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from dist_al.core.errors import UserError
from dist_al.data.storage import filesystem
from dist_al.inputs.contract import InputError

__all__ = ["Text", "text"]

_PAD_TOKENS = ("[PAD]", "<pad>", "<|pad|>")
_cache: dict[tuple, Any] = {}
_cache_lock = threading.Lock()


def load_tokenizer(uri: str, max_length: int, pad_token: str | None, storage_options: dict | None):
    """The tokenizer at ``uri``, set to truncate to ``max_length`` and pad to the batch's longest row; loaded
    once per process (encoding with it is thread-safe; only this set-up changes it)."""
    key = (uri, max_length, pad_token)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise UserError("the text reader needs the tokenizers library: pip install 'dist-al[text]'") from None
        try:
            fs, path = filesystem(uri, storage_options)
            data = fs.cat_file(path)
        except FileNotFoundError:
            raise InputError(f"inputs.kwargs.tokenizer {uri!r} does not exist") from None
        except (OSError, ValueError) as err:
            raise InputError(f"inputs.kwargs.tokenizer {uri!r} cannot be read ({type(err).__name__}: {err})") from None
        try:
            tok = Tokenizer.from_str(data.decode())
        except Exception as err:  # noqa: BLE001 - the library raises its own exception types
            raise InputError(
                f"inputs.kwargs.tokenizer {uri!r} is not a tokenizer.json of the tokenizers library ({err})"
            ) from None
        pad_id = _pad_id(tok, pad_token, uri)
        tok.enable_truncation(max_length)
        tok.enable_padding(pad_id=pad_id, pad_token=tok.id_to_token(pad_id) or "[PAD]")
        _cache[key] = tok
        return tok


def _pad_id(tok, pad_token: str | None, uri: str) -> int:
    if pad_token is not None:
        found = tok.token_to_id(pad_token)
        if found is None:
            raise InputError(f"inputs.kwargs.pad_token {pad_token!r} is not in the vocabulary of {uri!r}")
        return found
    if tok.padding is not None:
        return int(tok.padding["pad_id"])
    for name in _PAD_TOKENS:
        found = tok.token_to_id(name)
        if found is not None:
            return found
    return 0


class Text:
    """The text reader (module docstring)."""

    def columns(self, column: str = "text", **_: Any) -> list[str]:
        return [column]

    def check(
        self,
        schema: pa.Schema,
        column: str = "text",
        tokenizer: str | None = None,
        max_length: int = 512,
        pad_token: str | None = None,
        storage_options: dict | None = None,
    ) -> None:
        t = schema.field(column).type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
            raise InputError(f"has type {t}; expected string (texts)", column=column)
        self._tokenizer(tokenizer, max_length, pad_token, storage_options)

    @staticmethod
    def _tokenizer(tokenizer: str | None, max_length: int, pad_token: str | None, storage_options: dict | None):
        if not tokenizer:
            raise InputError("inputs.kwargs.tokenizer is required: the path or URL of a tokenizer.json file")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise InputError(f"inputs.kwargs.max_length must be a positive integer, got {max_length!r}")
        return load_tokenizer(tokenizer, max_length, pad_token, storage_options)

    def __call__(
        self,
        batch: pa.RecordBatch,
        column: str = "text",
        tokenizer: str | None = None,
        max_length: int = 512,
        pad_token: str | None = None,
        storage_options: dict | None = None,
    ) -> dict[str, torch.Tensor]:
        tok = self._tokenizer(tokenizer, max_length, pad_token, storage_options)
        texts = batch.column(column).to_pylist()
        empty = [i for i, t in enumerate(texts) if t is None or not t.strip()]
        if empty:
            raise InputError.several([InputError("empty text", row=i, column=column) for i in empty])
        encodings = tok.encode_batch(texts)
        ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
        none = np.flatnonzero(mask.sum(1) == 0)
        if none.size:
            raise InputError.several(
                [InputError("the tokenizer gives no tokens", row=int(i), column=column, value=texts[i]) for i in none]
            )
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}


text = Text()
