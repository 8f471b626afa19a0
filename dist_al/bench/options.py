"""Options every `dist-al bench` benchmark takes the same way: --quick, --device, --only."""

from __future__ import annotations

import argparse

import torch


def add_common(parser: argparse.ArgumentParser, rows: tuple[str, ...], quick: str) -> None:
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (or cuda:1, ...); default cpu")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of rows: {','.join(rows)}")


def device(parser: argparse.ArgumentParser, value: str) -> torch.device:
    """--device as a torch device this build can use, else a usage error (exit 2)."""
    try:
        dev = torch.device(value)
    except RuntimeError as e:
        parser.error(f"--device: {e}")
    if dev.type not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda, got {value!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: this torch build has no usable CUDA device")
    return dev


def only(parser: argparse.ArgumentParser, value: str | None, rows: tuple[str, ...]) -> tuple[str, ...]:
    """--only as row names in the order given (all rows without it), else a usage error (exit 2)."""
    chosen = rows if value is None else tuple(x.strip() for x in value.split(",") if x.strip())
    unknown = [x for x in chosen if x not in rows]
    if unknown:
        parser.error(f"--only: unknown row(s) {', '.join(unknown)}; choose from {', '.join(rows)}")
    return chosen
