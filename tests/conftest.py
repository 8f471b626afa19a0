"""Shared pytest fixtures."""

import pytest
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
