"""``dist_al.inputs:images``: encoded images (bytes or URIs) as a normalised (rows, C, H, W) float32 tensor.

The column holds, per row, one of:

- the encoded file (PNG, JPEG, anything Pillow reads) in a ``binary`` / ``large_binary`` column;
- a ``struct`` with ``bytes`` and ``path`` fields, as Hugging Face ``datasets`` write an ``Image`` feature:
  the bytes when present, else the file at ``path``;
- a URI in a ``string`` column: a local path or any fsspec URL (``s3://``, ``gs://``, ``https://``), relative
  ones joined to ``root``. The files are fetched concurrently (at most ``max_in_flight`` requests at once in a
  worker process), each through ``dist_al.data.storage.filesystem`` with ``storage_options`` (default: the
  pool's, so credentials stay secrets) and tried again on transient errors (``dist_al.data.storage.retrying``:
  timeouts, resets, 5xx, SlowDown); a missing or unreadable file is an :class:`InputError` naming the URI.

Each image is decoded with Pillow (JPEGs at the smallest scale that still covers ``size``, which is what makes
decoding large photos cheap), converted to ``mode`` (``RGB`` or ``L``: with ``convert: false`` an image of
another mode is refused instead), its shorter side resized to ``size`` (bilinear, antialiased), centre-cropped to
``crop`` x ``crop`` (default ``size``), scaled to [0, 1] and normalised per channel with ``mean`` and ``std``
(default: none). A file Pillow cannot decode is an :class:`InputError` naming the row.

Decoding runs in the worker's decode threads (``dist_al.inputs.pipeline``): Pillow releases the GIL while it
decodes and resizes, so threads scale with the worker's CPUs.
"""

from __future__ import annotations

import io
import posixpath
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from fsspec.utils import get_protocol

from dist_al.data.storage import StorageUnavailable, filesystem, retrying
from dist_al.inputs.contract import InputError

__all__ = ["Images", "images"]

MODES = {"RGB": 3, "L": 1}
_fetchers: dict[int, ThreadPoolExecutor] = {}
_fetchers_lock = threading.Lock()


def _fetcher(max_in_flight: int) -> ThreadPoolExecutor:
    """One pool of fetch threads per process (per bound), shared by every decode thread: the bound holds for
    the whole worker."""
    with _fetchers_lock:
        if max_in_flight not in _fetchers:
            _fetchers[max_in_flight] = ThreadPoolExecutor(max_in_flight, thread_name_prefix="image-fetch")
        return _fetchers[max_in_flight]


def _kind(t: pa.DataType) -> str | None:
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "bytes"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "uri"
    if pa.types.is_struct(t) and ({t.field(i).name for i in range(t.num_fields)} & {"bytes", "path"}):
        return "struct"
    return None


def _side(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"inputs.kwargs.{name} must be a positive integer (pixels), got {value!r}")
    return value


class Images:
    """The images reader (module docstring)."""

    def columns(self, column: str = "image", **_: Any) -> list[str]:
        return [column]

    def check(
        self,
        schema: pa.Schema,
        column: str = "image",
        size: int = 224,
        crop: int | None = None,
        mode: str = "RGB",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        convert: bool = True,
        root: str | None = None,
        max_in_flight: int = 32,
        storage_options: dict | None = None,
    ) -> None:
        if _kind(schema.field(column).type) is None:
            raise InputError(
                f"has type {schema.field(column).type}; expected binary (encoded images), string (URIs) or a "
                "struct with bytes and path fields",
                column=column,
            )
        self._settings(size, crop, mode, mean, std, max_in_flight)

    @staticmethod
    def _settings(size, crop, mode, mean, std, max_in_flight) -> tuple[int, int, int, np.ndarray, np.ndarray]:
        """(size, crop, channels, mean, std) checked; raises InputError naming the kwarg."""
        if mode not in MODES:
            raise InputError(f"inputs.kwargs.mode must be RGB or L, got {mode!r}")
        channels = MODES[mode]
        size = _side(size, "size")
        crop = size if crop is None else _side(crop, "crop")
        _side(max_in_flight, "max_in_flight")
        if crop > size:
            raise InputError(f"inputs.kwargs.crop ({crop}) must not exceed inputs.kwargs.size ({size})")
        stats = []
        for name, value, default in (("mean", mean, 0.0), ("std", std, 1.0)):
            arr = np.full(channels, default, np.float32) if value is None else np.asarray(value, dtype=np.float32)
            if arr.shape != (channels,):
                raise InputError(f"inputs.kwargs.{name} needs {channels} values for mode {mode}, got {value!r}")
            stats.append(arr)
        if not np.all(stats[1] > 0):
            raise InputError(f"inputs.kwargs.std must be positive, got {std!r}")
        return size, crop, channels, stats[0], stats[1]

    def __call__(
        self,
        batch: pa.RecordBatch,
        column: str = "image",
        size: int = 224,
        crop: int | None = None,
        mode: str = "RGB",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        convert: bool = True,
        root: str | None = None,
        max_in_flight: int = 32,
        storage_options: dict | None = None,
    ) -> torch.Tensor:
        size, crop, channels, mu, sigma = self._settings(size, crop, mode, mean, std, max_in_flight)
        arr = batch.column(column)
        n = len(arr)
        sources = _sources(arr, column, root)  # per row: bytes, or a URI to fetch
        data = _fetch_all(sources, storage_options, max_in_flight)
        out = np.empty((n, crop, crop, channels), dtype=np.uint8)
        errors = []
        for i, (source, blob) in enumerate(zip(sources, data)):
            where = source if isinstance(source, str) else None
            if isinstance(blob, InputError):
                errors.append(InputError(str(blob), row=i, column=column, value=where))
                continue
            try:
                out[i] = _decode(blob, size, crop, mode, convert)
            except InputError as err:
                errors.append(InputError(str(err), row=i, column=column, value=where))
        if errors:
            raise InputError.several(errors)
        x = torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255.0)
        return x.sub_(torch.from_numpy(mu)[:, None, None]).div_(torch.from_numpy(sigma)[:, None, None])


def _sources(arr: pa.Array, column: str, root: str | None) -> list[Any]:
    """Per row: the encoded bytes, a URI (str) to fetch, or an InputError (nothing there)."""
    kind = _kind(arr.type)
    if kind == "struct":
        names = {arr.type.field(i).name for i in range(arr.type.num_fields)}
        blobs = arr.field("bytes").to_pylist() if "bytes" in names else [None] * len(arr)
        paths = arr.field("path").to_pylist() if "path" in names else [None] * len(arr)
        valid = arr.is_valid().to_pylist()
        values = [b if b else p if ok else None for b, p, ok in zip(blobs, paths, valid)]
    else:
        values = arr.to_pylist()
    out: list[Any] = []
    for v in values:
        if v is None or (isinstance(v, str) and not v.strip()) or v == b"":
            out.append(InputError("no image (null or empty)"))
        elif isinstance(v, str) and root and "://" not in v and not v.startswith("/"):
            out.append(posixpath.join(root, v))
        else:
            out.append(v)
    return out


def _read(uri: str, storage_options: dict | None) -> bytes | InputError:
    try:
        fs, path = filesystem(uri, storage_options)
        return retrying(f"reading image {uri}", fs.cat_file, path)
    except FileNotFoundError:
        return InputError("no such file or object")
    except PermissionError as err:
        return InputError(f"permission denied ({err})")
    except IsADirectoryError:
        return InputError("is a directory, not an image file")
    except StorageUnavailable as err:
        return InputError(f"the store did not answer: {err}")
    except (OSError, ValueError) as err:
        return InputError(f"cannot be read ({type(err).__name__}: {err})")


def _fetch_all(sources: list[Any], storage_options: dict | None, max_in_flight: int) -> list[Any]:
    """Bytes (or an InputError) per row: URIs fetched concurrently, at most max_in_flight at once per process."""
    uris = [i for i, s in enumerate(sources) if isinstance(s, str)]
    out = list(sources)
    if not uris:
        return out
    if len(uris) == 1 or get_protocol(sources[uris[0]]) == "file" and len(uris) < 4:
        for i in uris:
            out[i] = _read(sources[i], storage_options)
        return out
    pool = _fetcher(max_in_flight)
    futures = {i: pool.submit(_read, sources[i], storage_options) for i in uris}
    for i, future in futures.items():
        out[i] = future.result()
    return out


def _decode(blob: Any, size: int, crop: int, mode: str, convert: bool) -> np.ndarray:
    """One encoded image -> (crop, crop, channels) uint8: decoded, mode, shorter side resized, centre crop."""
    from PIL import Image

    if isinstance(blob, InputError):
        raise blob
    try:
        img: Image.Image = Image.open(io.BytesIO(blob))
        if img.mode != mode and not convert:
            raise InputError(f"image mode is {img.mode}, inputs.kwargs.mode is {mode} (and convert is false)")
        if img.format == "JPEG":
            img.draft(mode, (size, size))  # decode at the smallest DCT scale still >= size: far less work
        img.load()
        if img.mode != mode:
            img = img.convert(mode)
        w, h = img.size
        scale = size / min(w, h)
        new = (max(size, round(w * scale)), max(size, round(h * scale)))
        if new != img.size:
            img = img.resize(new, Image.Resampling.BILINEAR)
        left, top = (new[0] - crop) // 2, (new[1] - crop) // 2
        img = img.crop((left, top, left + crop, top + crop))
        arr = np.asarray(img, dtype=np.uint8)
    except InputError:
        raise
    except Image.UnidentifiedImageError:
        raise InputError("cannot decode image: not an image file Pillow can read") from None
    except Exception as err:  # noqa: BLE001 - Pillow raises many types for a bad file
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise InputError(f"cannot decode image ({type(err).__name__}: {detail})".replace(": )", ")")) from None
    return arr.reshape(crop, crop, -1)


images = Images()
