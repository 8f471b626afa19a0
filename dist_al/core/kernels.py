"""The dot product kernel of BADGE's passes (<x, v> for every row x), chosen once per process.

A k-means++ step is bound by memory bandwidth, so its GEMV must run at the speed of a plain read. torch's
CPU GEMV is its BLAS's: MKL in the official wheels. MKL runs at that speed on Intel CPUs (1.02x a read of h
here, docs/BENCHMARKS.md) but not on AMD's: on an AMD EPYC, `h @ v` took 50-55 ms where a read of h took
13-16 ms, on one or two threads, while numpy's GEMV on the same array (OpenBLAS, which numpy's wheels ship)
took 12.9 ms. So on a CPU that is not Intel's, when torch's BLAS is MKL and numpy's is not, the rows go to
numpy's GEMV (sharing memory, no copy); everywhere else (GPUs included) to torch.mv. `dist-al bench core
--only badge-dots` prints every candidate against one read, with the BLAS libraries and the CPU.
"""

from __future__ import annotations

import functools

import numpy as np
import torch


def cpu_info(key: str) -> str:
    """A field of the first processor in /proc/cpuinfo ("vendor_id": GenuineIntel, AuthenticAMD, ...; "model
    name"), or "unknown"."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() == key:
                    return value.strip()
    except OSError:
        pass
    return "unknown"


def _numpy_blas() -> str:
    try:
        return str(np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"])
    except Exception:  # noqa: BLE001 - older numpy has no dict form: its BLAS is unknown, keep torch's
        return "unknown"


@functools.cache
def dot_kernel() -> str:
    """ "numpy" where torch's MKL GEMV would run below the memory bandwidth (see the module docstring), else
    "torch"."""
    mkl_off_intel = torch.backends.mkl.is_available() and cpu_info("vendor_id") not in ("GenuineIntel", "unknown")
    numpy_blas = _numpy_blas().lower()
    return "numpy" if mkl_off_intel and "mkl" not in numpy_blas and numpy_blas != "unknown" else "torch"


def row_dots(rows: torch.Tensor, v: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """<x, v> for every row x of rows (N, D), into out (N,) when given.

    Args:
        rows: a 2-d tensor.
        v: a 1-d tensor of rows' width, same dtype and device.
        out: where the N results go (contiguous), or None for a new tensor.

    Returns:
        out, or the new tensor.
    """
    if rows.device.type == "cpu" and rows.is_contiguous() and dot_kernel() == "numpy":
        if out is None:
            out = torch.empty(len(rows), dtype=rows.dtype)
        np.matmul(rows.numpy(), v.contiguous().numpy(), out=out.numpy())
        return out
    return torch.mv(rows, v, out=out)
