"""Readers: how a batch of pool rows becomes the model's input (config section ``inputs``).

``inputs.reader`` names a ``module:function`` called as ``reader(batch: pyarrow.RecordBatch, **inputs.kwargs)``
that returns a torch.Tensor, or a dict of tensors passed to the model as keyword arguments; the whole
contract is in :mod:`dist_al.inputs.contract`, the decoding pipeline (threads, overlap with the forward pass,
``on_error``) in :mod:`dist_al.inputs.pipeline`. Built in:

- ``dist_al.inputs:vectors`` (the default): one float vector per row (:mod:`dist_al.inputs.vectors`);
- ``dist_al.inputs:images``: encoded images as bytes, Hugging Face structs or URIs (:mod:`dist_al.inputs.images`);
- ``dist_al.inputs:text``: texts tokenised with a user-supplied ``tokenizer.json`` (:mod:`dist_al.inputs.text`).
"""

from dist_al.inputs.contract import InputError, Reader, load_reader, open_inputs
from dist_al.inputs.images import images
from dist_al.inputs.text import text
from dist_al.inputs.vectors import vectors

__all__ = ["InputError", "Reader", "images", "load_reader", "open_inputs", "text", "vectors"]
