"""Every shipped config's own comments, followed as a new user would: its command lines (``#   dist-al ...``,
``#   python -m ...``) run in order, from the first to the last, in a fresh directory holding the config, each as a
real process. Only the sizes shrink, with ``--set`` (and ``--seeds``) where the command takes them; the one step
a person does, labeling, is played by the test from the pool's own label column.

Configs that need an object store or a Ray cluster (``VALIDITY_ONLY``) are checked for validity only: the config
loads, and each of its command lines parses.
"""

from __future__ import annotations

import csv
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dist_al.cli import _parser
from dist_al.config import load_config

pytestmark = [pytest.mark.slow, pytest.mark.subprocess, pytest.mark.cluster]

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
VALIDITY_ONLY = {  # each still names its commands; tests/test_walkthroughs.py runs the images and text walkthroughs
    "s3-select.yaml": "an S3 bucket",
    "images-s3.yaml": "an S3 bucket",
    "text-local.yaml": "your tickets.csv and tokenizer.json",
    "label-studio-round.yaml": "a Label Studio server (tests/test_labeling.py runs rounds against one)",
    "gpu-cluster.yaml": "a Ray cluster with GPUs",
}
# A command line: a comment line indented by two or more spaces; text after a run of 2+ spaces is a remark.
COMMAND = re.compile(r"^#\s{2,}((?:dist-al|python -m) \S.*?)(?:\s{2,}.*)?$")
ONE_WORKER = ["--set", "cluster.workers=1", "--set", "train.workers=1"]
SMALL = {  # per command: what shrinks its work without changing what it does
    "round": ["--set", "selection.budget=20", "--set", "train.epochs=2", *ONE_WORKER],
    "select": ["--set", "selection.budget=20", *ONE_WORKER],
    "simulate": ["--set", "simulation.rounds=1", "--set", "simulation.strategies=random", "--set", "train.epochs=2"]
    + ONE_WORKER,
    "demo": ["--seeds", "1", "--set", "simulation.rounds=1", "--set", "simulation.strategies=random", *ONE_WORKER],
}


def command_lines(name: str) -> list[list[str]]:
    lines = (ROOT / "configs" / name).read_text().splitlines()
    return [shlex.split(m.group(1)) for line in lines if (m := COMMAND.match(line))]


def test_every_config_says_how_to_run_it():
    for name in CONFIGS:
        assert command_lines(name), f"configs/{name} has no command line (#   dist-al ...) in its comments"


@pytest.mark.parametrize("name", sorted(VALIDITY_ONLY), ids=str)
def test_configs_for_a_store_or_a_cluster_are_valid(name):
    load_config(str(ROOT / "configs" / name))
    for argv in command_lines(name):
        assert argv[0] == "dist-al", argv
        _parser().parse_args(argv[1:])  # exits 2 on a line that does not parse


@pytest.mark.parametrize("name", [n for n in CONFIGS if n not in VALIDITY_ONLY], ids=str)
def test_config_comments_run_from_first_command_to_last(name, tmp_path):
    (tmp_path / "configs").mkdir()
    shutil.copy(ROOT / "configs" / name, tmp_path / "configs" / name)
    out = ""
    for argv in command_lines(name):
        if argv[:2] == ["dist-al", "ingest"]:
            _play_the_labelers(tmp_path, Path(argv[-1]))
        out = _run(argv, tmp_path)
    if name == "local-round.yaml":  # round 1 trained on its labels, with an eval accuracy
        assert re.search(r"\| 1 \| TRAINED \| badge \| 20 \|  \|  \|  \| 20 \|  \| 20 \| 0\.\d{3} \|", out), out


def _run(argv: list[str], cwd: Path) -> str:
    if argv[0] == "dist-al":
        argv = [sys.executable, "-m", "dist_al.cli", *argv[1:], *SMALL.get(argv[1], [])]
    elif argv[0] == "python":
        argv = [sys.executable, *argv[1:]]
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{shlex.join(argv)} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout


def _play_the_labelers(cwd: Path, labels_file: Path) -> None:
    """The labels file the comment describes: an id,label CSV for the current round's exported ids, answered from
    the synthetic pool's label column."""
    rounds = sorted((cwd / "dist-al-work" / "rounds").iterdir())
    with open(rounds[-1] / "export" / "selection.csv") as f:
        ids = [int(row["id"]) for row in csv.DictReader(f)]
    pool = pq.read_table(cwd / "pool", columns=["id", "label"]).to_pydict()
    truth = dict(zip(pool["id"], pool["label"]))
    with open(cwd / labels_file, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "label"])
        writer.writerows((i, truth[i]) for i in ids)
