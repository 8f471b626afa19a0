"""Readers: how a batch of pool rows becomes the model's input (config section ``inputs``).

``inputs.reader`` names a ``module:function`` called as ``reader(batch: pyarrow.RecordBatch, **inputs.kwargs)``
that returns a torch.Tensor, or a dict of tensors passed to the model as keyword arguments; the whole
contract is in :mod:`dist_al.inputs.contract`. Built in:

- ``dist_al.inputs:vectors`` (the default): one float vector per row (:mod:`dist_al.inputs.vectors`).
"""

from dist_al.inputs.contract import InputError, Reader, load_reader, open_inputs
from dist_al.inputs.vectors import vectors

__all__ = ["InputError", "Reader", "load_reader", "open_inputs", "vectors"]
