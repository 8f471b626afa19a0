"""A real multi-node Ray cluster on one machine (ray.cluster_utils.Cluster), as Ray's own tests use."""

from __future__ import annotations

import contextlib

import ray
from ray.cluster_utils import Cluster


@contextlib.contextmanager
def multi_node_cluster(head_cpus: int, worker_nodes: int = 2, cpus_per_node: int = 2):
    """Yields the Cluster with this process's Ray connected to it."""
    if ray.is_initialized():  # another module left Ray running
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": head_cpus})
    for _ in range(worker_nodes):
        c.add_node(num_cpus=cpus_per_node)
    c.wait_for_nodes()
    ray.init(address=c.address, logging_level="ERROR", log_to_driver=False)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()
