"""How the strategy shards' tensors cross Ray: as numpy arrays, turned back into tensors on arrival.

Every exact k-means++ centre sends a few small tensors (the drawn row's a, h and |g|^2) from its shard to the
driver and to every worker. Ray's pickling of a small torch tensor, there and back, takes about 0.4 ms
(its storage goes through torch's own reducer), against 0.025 ms for the same values as a numpy array:
0.5-0.85 ms of every centre's coordination at N=200,000 went to it (`dist-al bench distributed --only
coordination`, docs/BENCHMARKS.md). The arrays hold the same bits, so the ids do not change.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

# dtypes numpy holds bit for bit; others (bfloat16) travel as tensors
_NUMPY_DTYPES = {
    torch.float64,
    torch.float32,
    torch.float16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
}


class WireTensor:
    """A tensor's values as a numpy array, on its way between Ray processes."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray):
        self.array = array

    def __reduce__(self):
        return WireTensor, (self.array,)


def to_wire(value: Any) -> Any:
    """Tensors (also inside tuples and lists) as WireTensors of their values on the CPU; the rest as it is."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype not in _NUMPY_DTYPES:
            # pickling a tensor sends its whole storage (a row of h would carry the shard's whole h)
            return value.clone() if value.untyped_storage().nbytes() > value.numel() * value.element_size() else value
        return WireTensor(value.numpy())  # numpy pickles a view's own values only
    if isinstance(value, (tuple, list)):
        return type(value)(to_wire(v) for v in value)
    return value


def from_wire(value: Any) -> Any:
    """to_wire's inverse: WireTensors (also inside tuples and lists) as tensors."""
    if isinstance(value, WireTensor):
        array = value.array
        # Ray may hand back read-only arrays, which torch would only wrap with a warning
        return torch.from_numpy(array if array.flags.writeable else array.copy())
    if isinstance(value, (tuple, list)):
        return type(value)(from_wire(v) for v in value)
    return value
