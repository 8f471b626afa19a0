"""The `dist-al` command as users run it: a real process, real files, a real local Ray."""

from __future__ import annotations

import glob
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dist_al.cli import main
from dist_al.config import load_config
from dist_al.runtime.cluster import cores

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "dist_al.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


@pytest.mark.parametrize(
    "command",
    [
        "demo",
        "simulate",
        "select",
        "make-pool",
        "round",
        "export",
        "ingest",
        "train",
        "status",
        "bench",
        "submit",
        "jobs",
        "logs",
        "evaluate",
        "config",
    ],
)
def test_every_command_has_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0 and "examples:" in capsys.readouterr().out


@pytest.mark.parametrize("path", sorted(glob.glob(str(ROOT / "configs" / "*.yaml"))), ids=lambda p: Path(p).name)
def test_shipped_configs_are_valid(path):
    load_config(path)


def _select_args(tmp_path, out):
    return [
        "--config",
        str(ROOT / "configs" / "local-select.yaml"),
        "--set",
        f"pool.uri={tmp_path / 'pool'}",
        "--set",
        "model.kwargs={in_dim: 8, n_classes: 4, hidden: 16}",
        "--set",
        "selection.budget=25",
        "--set",
        "selection.strategy=margin",
        "--set",
        "cluster.workers=2",
        "--out",
        str(out),
        "--no-progress",
    ]


@pytest.mark.subprocess
@pytest.mark.cluster
def test_make_pool_then_select_with_overrides(tmp_path):
    made = run(
        "make-pool",
        str(tmp_path / "pool"),
        "--synthetic",
        "--rows",
        "3000",
        "--classes",
        "4",
        "--dim",
        "8",
        "--rows-per-group",
        "500",
    )
    assert made.returncode == 0, made.stderr
    out = tmp_path / "sel.parquet"
    sel = run("select", *_select_args(tmp_path, out))
    assert sel.returncode == 0, sel.stderr
    assert "selected 25 rows with margin on 2 workers" in sel.stdout
    table = pq.read_table(out)
    assert table.column_names == ["id", "rank", "strategy", "score"] and table.num_rows == 25
    first = out.read_bytes()
    again = run("select", *_select_args(tmp_path, out))
    assert again.returncode == 0 and out.read_bytes() == first  # the same selection, the same bytes


@pytest.mark.subprocess
@pytest.mark.parametrize(
    "override, message",
    [
        ("selection.budgt=5", "unknown config key selection.budgt for strategy 'badge' (did you mean 'budget'?)"),
        ("selection.budget=many", "config key selection.budget: expected an integer, got 'many'"),
        ("pool.uri=/nonexistent/pool", "/nonexistent/pool"),
    ],
)
def test_user_mistakes_are_one_line_and_write_nothing(tmp_path, override, message):
    out = tmp_path / "sel.parquet"
    sel = run(
        "select",
        "--config",
        str(ROOT / "configs" / "local-select.yaml"),
        "--set",
        override,
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert sel.returncode == 2
    assert message in sel.stderr and "Traceback" not in sel.stderr
    assert len(sel.stderr.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "dist-al-work").exists()


@pytest.mark.subprocess
@pytest.mark.cluster
def test_a_local_ray_holds_more_cpu_workers_than_the_machine_has_cores(tmp_path):
    """A private local Ray cannot grow, so it is sized to the job: 3 workers asking for all the cores each run
    (one torch thread each) instead of waiting forever for CPUs that will never come."""
    made = run(
        "make-pool",
        str(tmp_path / "pool"),
        "--synthetic",
        "--rows",
        "300",
        "--classes",
        "4",
        "--dim",
        "8",
        "--rows-per-group",
        "100",
    )
    assert made.returncode == 0, made.stderr
    out = tmp_path / "sel.parquet"
    sel = run(
        "select",
        *_select_args(tmp_path, out),
        "--set",
        "cluster.workers=3",
        "--set",
        f"cluster.cpus_per_worker={cores()}",
    )
    assert sel.returncode == 0, sel.stderr
    assert "selected 25 rows with margin on 3 workers" in sel.stdout and pq.read_table(out).num_rows == 25


@pytest.mark.subprocess
def test_status_reads_the_workdir_without_importing_torch_or_ray(tmp_path):
    """`dist-al status` only reads the workdir's files, so it answers without the seconds torch and Ray take to
    import (people and monitoring run it often)."""
    from dist_al.campaign.rounds import ingest
    from dist_al.data.synthetic import gaussian_mixture
    from dist_al.data.writer import write_pool

    x, y = gaussian_mixture(40, 3, 4, seed=0)
    write_pool(str(tmp_path / "pool"), list(range(40)), x.numpy(), y.numpy())
    config = tmp_path / "config.yaml"
    config.write_text(
        f"pool: {{uri: {tmp_path / 'pool'}}}\nmodel: {{kwargs: {{in_dim: 4, n_classes: 3}}}}\n"
        f"selection: {{budget: 5}}\nworkdir: {tmp_path / 'work'}\n"
    )
    (tmp_path / "labels.csv").write_text("id,label\n1,0\n2,2\n")
    ingest(load_config(str(config)), str(tmp_path / "labels.csv"))
    probe = (
        "import sys; from dist_al.cli import main; rc = main(['status', '--config', sys.argv[1]]); "
        "print('imported:', sorted(m for m in ('torch', 'ray') if m in sys.modules)); sys.exit(rc)"
    )
    res = subprocess.run([sys.executable, "-c", probe, str(config)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"workdir {tmp_path / 'work'}: 2 labels recorded" in res.stdout
    assert "imported: []" in res.stdout
