"""Config files: defaults, overrides, and errors that name the key."""

from __future__ import annotations

import pytest

from dist_al.config import ConfigError, load_config
from dist_al.core.options import BaitOptions

BASE = ["pool.uri=/data/pool", "selection.budget=10"]


def test_defaults_and_overrides():
    cfg = load_config(
        None,
        BASE
        + [
            "selection.strategy=bait",
            "selection.lam=0.01",
            "cluster.workers=4",
            "model.kwargs={in_dim: 8, n_classes: 3}",
        ],
    )
    assert cfg.pool.id_column == "id" and cfg.cluster.workers == 4
    assert cfg.model.kwargs == {"in_dim": 8, "n_classes": 3}
    assert cfg.selection.options() == BaitOptions(lam=0.01)


def test_yaml_file_and_override_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("pool: {uri: /p}\nselection: {budget: 5, strategy: margin}\n")
    cfg = load_config(str(path), ["selection.budget=7"])
    assert cfg.selection.budget == 7 and cfg.selection.strategy == "margin"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["pol.uri=x"], "unknown config key 'pol' (did you mean 'pool'?)"),
        (BASE + ["pool.id_colum=a"], "unknown config key pool.id_colum (did you mean 'id_column'?)"),
        (
            BASE + ["selection.lamb=1", "selection.strategy=bait"],
            "selection.lamb for strategy 'bait' (did you mean 'lam'?)",
        ),
        (BASE + ["selection.lam=1"], "unknown config key selection.lam for strategy 'badge'"),
        (BASE + ["selection.strategy=badg"], "unknown strategy 'badg' (did you mean 'badge'?)"),
        (["pool.uri=x"], "config key selection.budget is required"),
        (BASE + ["selection.budget=ten"], "config key selection.budget: expected an integer, got 'ten'"),
        (BASE + ["selection.budget=0"], "selection.budget must be positive"),
        (BASE + ["cluster.workers=yes"], "config key cluster.workers: expected an integer, got True"),
        (
            BASE + ["selection.strategy=bait", "selection.weighting=median"],
            "config key selection.weighting must be reference or mean, got 'median'",
        ),
        (
            BASE + ["selection.strategy=bait", "selection.lam=-1"],
            "config key selection: option lam must be a positive number",
        ),
        (BASE + ["model.autocast=int8"], "model.autocast must be bf16, fp16 or null"),
        (BASE + ["cluster.start_timeout_s=0"], "config key cluster.start_timeout_s must be positive, got 0"),
        (BASE + ["noequals"], "--set expects key=value"),
    ],
)
def test_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert message in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match=r"config file \S+ cannot be read: Is a directory"):
        load_config(str(tmp_path))
    bad = tmp_path / "bad.yaml"
    bad.write_text("pool: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("pool: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):  # safe loader: no object construction
        load_config(str(unsafe))
