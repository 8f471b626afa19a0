"""CPU-seconds of the start-ups the test suite spends its time on, each measured alone with the machine's CPU
counter (/proc/stat: every process, Ray's daemons and actors too). Run on a quiet machine:

    .venv/bin/python scripts/startup_cpu.py
"""

import os
import subprocess
import sys
import tempfile
import time

RAY = "import logging, ray; ray.init(address='local', num_cpus=4, include_dashboard=False, logging_level=logging.ERROR)"
FIT = (
    RAY
    + """
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
def loop(config):
    import ray.train
    ray.train.report({"done": 1})
TorchTrainer(loop, scaling_config=ScalingConfig(num_workers=WORKERS), run_config=RunConfig(storage_path=STORE)).fit()
ray.shutdown()
"""
)


def busy_seconds() -> float:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def measure(what: str, argv: list[str], cwd: str) -> None:
    before = busy_seconds()
    subprocess.run(argv, cwd=cwd, check=True, capture_output=True)
    time.sleep(2)  # the daemons a command leaves stop
    print(f"{what:45s} {busy_seconds() - before:6.1f} CPU-s", flush=True)


def main() -> None:
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        cli = [py, "-m", "dist_al.cli"]
        subprocess.run([*cli, "make-pool", "pool", "--synthetic", "--rows", "3000"], cwd=tmp, check=True)
        model = '{"in_dim": 64, "n_classes": 10, "hidden": 64}'
        select = [*cli, "select", "--set", "pool.uri=pool", "--set", f"model.kwargs={model}"]
        select += ["--set", "selection.budget=20", "--set", "cluster.workers=1", "--set", "workdir=work"]
        measure("python alone, then 2 s idle (the baseline)", [py, "-c", "pass"], tmp)
        measure("import torch", [py, "-c", "import torch"], tmp)
        measure("a local Ray started and stopped", [py, "-c", RAY + "; ray.shutdown()"], tmp)
        measure("dist-al select on a local Ray (1 ShardWorker)", select, tmp)
        for workers in (1, 2):
            fit = FIT.replace("WORKERS", str(workers)).replace("STORE", repr(os.path.join(tmp, "runs")))
            measure(f"a Ray Train fit of an empty loop, {workers} worker(s)", [py, "-c", fit], tmp)


if __name__ == "__main__":
    main()
