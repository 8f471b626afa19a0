"""Tensors cross Ray as numpy arrays (dist_al.runtime.wire): the same bits come back, a view carries only its own
values, and read-only arrays from Ray's object store become tensors without a warning."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch
from ray import cloudpickle

from dist_al.runtime.wire import WireTensor, from_wire, to_wire


def _travel(value):
    return from_wire(cloudpickle.loads(cloudpickle.dumps(to_wire(value))))


@pytest.mark.parametrize(
    "dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.bool]
)
def test_values_come_back_bit_for_bit(dtype):
    t = (torch.randn(5, 3, dtype=torch.float64) * 1e3).to(dtype)
    back = _travel(t)
    assert back.dtype == dtype and back.shape == t.shape
    assert torch.equal(back.view(torch.uint8), t.view(torch.uint8))  # the same bits


def test_nested_values_keep_their_shape_and_other_values():
    value = (17, (torch.arange(3.0), torch.tensor(2.5), "row"), [np.arange(2), None])
    row, (a, n, name), (ids, nothing) = _travel(value)
    assert row == 17 and name == "row" and nothing is None
    assert torch.equal(a, torch.arange(3.0)) and float(n) == 2.5 and a.dtype == torch.float32
    assert isinstance(ids, np.ndarray) and ids.tolist() == [0, 1]  # numpy arrays stay numpy


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_row_view_carries_its_row_not_the_whole_matrix(dtype):
    h = torch.zeros(10_000, 128, dtype=dtype)
    assert len(cloudpickle.dumps(to_wire(h[7]))) < 4 * 128 * 4


def test_read_only_arrays_become_tensors_without_a_warning():
    array = np.arange(4, dtype=np.float32)
    array.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = from_wire(WireTensor(array))
    t += 1  # its own memory
    assert array.tolist() == [0, 1, 2, 3] and t.tolist() == [1, 2, 3, 4]


def test_a_wire_tensor_pickles_without_ray():
    back = pickle.loads(pickle.dumps(to_wire(torch.ones(2))))
    assert isinstance(back, WireTensor) and back.array.tolist() == [1.0, 1.0]
