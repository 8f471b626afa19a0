"""The README's "Text" and "Images from S3" walk-throughs, run as a new user would: their shell blocks, as written,
in a fresh directory with the shipped configs (the image one against the moto S3 server as `my-bucket`)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from s3server import FAKE_KEY, FAKE_SECRET, REGION, create_bucket

pytestmark = pytest.mark.subprocess

ROOT = Path(__file__).resolve().parents[1]


def shell_blocks(section: str) -> list[str]:
    """The ```bash blocks of a README section, dedented as they would be pasted."""
    body = (ROOT / "README.md").read_text().split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return [textwrap.dedent(b) for _, b in re.findall(r"^( *)```bash\n(.*?)^\1```", body, re.M | re.S)]


def user_dir(tmp_path: Path) -> tuple[Path, dict]:
    """A working directory with the configs, and an environment where `dist-al` and `python` are this checkout's."""
    work = tmp_path / "work"
    shutil.copytree(ROOT / "configs", work / "configs")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, command in (("dist-al", f'{sys.executable} -m dist_al.cli "$@"'), ("python", f'{sys.executable} "$@"')):
        (bin_dir / name).write_text(f"#!/bin/sh\nexec {command}\n")
        (bin_dir / name).chmod(stat.S_IRWXU)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    return work, env


def run(script: str, cwd: Path, env: dict) -> str:
    res = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, f"{script}\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
    return res.stdout


def test_the_text_walkthrough_runs_as_written(tmp_path):
    work, env = user_dir(tmp_path)
    blocks = shell_blocks("Text")
    assert [b.split()[0] for b in blocks] == ["python", "dist-al", "python", "dist-al"]
    out = "".join(run(block, work, env) for block in blocks)
    assert "wrote 600 texts (column 'text') with labels 0=accounts, 1=billing, 2=network" in out
    picks = pq.read_table(work / "dist-al-text" / "selections" / "badge-budget50-seed0.parquet")
    assert picks.num_rows == 50 and len(set(picks["id"].to_pylist())) == 50


def test_the_images_from_s3_walkthrough_runs_as_written(tmp_path, s3_server):
    work, env = user_dir(tmp_path)
    env.update(
        AWS_ENDPOINT_URL=s3_server,
        AWS_ACCESS_KEY_ID=FAKE_KEY,
        AWS_SECRET_ACCESS_KEY=FAKE_SECRET,
        AWS_DEFAULT_REGION=REGION,
        AWS_EC2_METADATA_DISABLED="true",
        NO_PROXY="127.0.0.1,localhost",
    )
    create_bucket(s3_server, "my-bucket")
    rng = np.random.default_rng(0)
    for i in range(24):  # ./photos as the walk-through names it: 3 classes of small RGB and grayscale photos
        folder = work / "photos" / ("cat", "dog", "owl")[i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
        image = Image.fromarray(pixels, "RGB")
        (image if i % 2 else image.convert("L")).save(folder / f"{i:03d}.{'jpg' if i % 2 else 'png'}")
    make_pool, select = shell_blocks("Images from S3")
    out = run(make_pool, work, env)
    assert "wrote 24 images (URIs in column 'image_uri') with labels 0=cat, 1=dog, 2=owl" in out
    # the shipped config as it is, but sized for a test: 4 picks, 1 worker, 64 px, ResNet-18
    small = (
        "--set selection.budget=4 --set cluster.workers=1 --set inputs.kwargs.size=64 --set model.kwargs.arch=resnet18"
    )
    select_line = next(line for line in select.splitlines() if line.startswith("dist-al select"))
    out = run(f"{select_line} {small} --no-progress --out picks.parquet", work, env)
    assert "selected 4 rows with badge on 1 workers" in out
    assert len(set(pq.read_table(work / "picks.parquet")["id"].to_pylist())) == 4
