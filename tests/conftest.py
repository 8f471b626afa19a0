"""Shared pytest fixtures."""

import logging

import pytest
import ray
import torch
from s3server import s3_bucket, s3_server, s3_storage_options  # noqa: F401  (moto S3 on loopback)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Test inputs are tiny: intra-op threads only add overhead, and on a busy 2-core machine
    OpenMP spinning makes small batched linalg calls ~50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray per test module. 4 logical CPUs on 2 cores: room for 2 shard workers or
    2 Ray Train workers plus the trainer's controller."""
    if ray.is_initialized():  # another module left Ray running
        ray.shutdown()
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    yield
    ray.shutdown()
