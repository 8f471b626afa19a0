"""The dot product kernel of BADGE's passes (<x, v> for every row x), chosen once per process.

A k-means++ step is bound by memory bandwidth, so its GEMV must run at the speed of a plain read. torch's
CPU GEMV is its BLAS's: MKL in the official wheels. MKL runs at that speed on Intel CPUs (1.02x a read of h
here, docs/BENCHMARKS.md) but not on AMD's: on an AMD EPYC, `h @ v` took 50-55 ms where a read of h took
13-16 ms, on one or two threads, while numpy's GEMV on the same array (OpenBLAS, which numpy's wheels ship)
took 12.9 ms. So on a CPU that is not Intel's, when torch's BLAS is MKL and numpy's is not, the rows go to
numpy's GEMV (sharing memory, no copy); everywhere else (GPUs included) to torch.mv. `dist-al bench core
--only badge-dots` prints every candidate against one read, with the BLAS libraries and the CPU.

On a GPU, a row's dot product must not depend on how many rows it is computed with: BADGE's pruning dots the
rows it gathers and must get the full pass's values, bit for bit. cuBLAS picks its GEMV kernel, and with it
the summation order, by the matrix's shape (on an H200, pruned and full-pass picks differed at N=10M, D=512),
so on CUDA every GEMV has exactly CUDA_DOT_ROWS rows: the full pass in slices of that many, a shorter rest in
a buffer of that many (rows past the rest are left as they are and their dots dropped).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

# Rows of every GEMV on a GPU: 512 MB of float32 rows at D=512 (~0.1 ms of HBM time on an H200), so a full pass
# over 10M rows is 39 launches and a pruned step's short gather costs at most one such read.
CUDA_DOT_ROWS = 1 << 18


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
    if rows.device.type == "cuda":
        return _fixed_shape_dots(rows.contiguous(), v, out)
    return torch.mv(rows, v, out=out)


def _fixed_shape_dots(rows: torch.Tensor, v: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """torch.mv in GEMVs of exactly CUDA_DOT_ROWS rows, so each row's result is the same whatever len(rows)."""
    n, step = len(rows), CUDA_DOT_ROWS
    if out is None:
        out = torch.empty(n, dtype=rows.dtype, device=rows.device)
    whole = n - n % step
    for lo in range(0, whole, step):
        torch.mv(rows[lo : lo + step], v, out=out[lo : lo + step])
    if whole < n:
        padded = rows.new_empty(step, rows.shape[1])
        padded[: n - whole] = rows[whole:]
        out[whole:] = torch.mv(padded, v)[: n - whole]
    return out
