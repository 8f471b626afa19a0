"""Config files: defaults, overrides, and errors that name the key."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from dist_al.cli import main
from dist_al.config import SELECTION_MODELS, ConfigError, load_config, reference_table, schema, validate
from dist_al.core.api import STRATEGIES
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


# -- the JSON Schema, `dist-al config show|schema`, README's reference table ----------------------------------

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs").glob("*.yaml"))


def _schema_errors(data: dict) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema())
    return [e.message for e in validator.iter_errors(data)]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_schema_accepts_every_shipped_config(path):
    assert _schema_errors(yaml.safe_load(path.read_text())) == []


@pytest.mark.parametrize(
    "data",
    [
        {"pool": {"uri": "p", "id_colum": "a"}, "selection": {"budget": 1}},  # a misspelt key
        {"pool": {"uri": "p"}, "selection": {"budget": 1}, "clusters": {}},  # an unknown section
        {"pool": {"uri": "p"}, "selection": {"budget": 1, "lam": 1.0}},  # bait's option on badge (the default)
        {"pool": {"uri": "p"}, "selection": {"budget": 1, "strategy": "random", "lam": 1.0}},
        {"pool": {"uri": "p"}, "selection": {"budget": 1, "strategy": "badg"}},
        {"pool": {"uri": "p"}, "selection": {"budget": "ten"}},
        {"pool": {"uri": "p"}},  # selection.budget is required
    ],
)
def test_schema_rejects_what_the_config_rejects(data):
    assert _schema_errors(data)
    with pytest.raises(ConfigError):
        validate(data)


def test_schema_takes_each_strategy_with_its_options():
    for strategy in SELECTION_MODELS:
        assert _schema_errors({"pool": {"uri": "p"}, "selection": {"budget": 1, "strategy": strategy}}) == []
    bait = {"budget": 1, "strategy": "bait", "lam": 0.1, "pca_dim": 8}
    assert _schema_errors({"pool": {"uri": "p"}, "selection": bait}) == []


def test_config_schema_command_prints_the_schema(capsys):
    assert main(["config", "schema"]) == 0
    assert json.loads(capsys.readouterr().out) == schema()


def test_config_show_redacts_credentials_and_resolves_defaults(capsys):
    secret = "hunter2-not-a-real-secret"
    code = main(
        [
            "config",
            "show",
            "--config",
            str(ROOT / "configs" / "s3-select.yaml"),
            "--set",
            f"pool.storage_options={{secret: {secret}, client_kwargs: {{aws_secret_access_key: {secret}}}}}",
            "--set",
            "selection.budget=7",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and secret not in out
    shown = yaml.safe_load(out)
    assert shown["pool"]["storage_options"] == {
        "secret": "<redacted>",
        "client_kwargs": {"aws_secret_access_key": "<redacted>"},
    }
    assert shown["selection"]["budget"] == 7 and shown["selection"]["lam"] == 1.0  # bait's default, filled in
    assert shown["train"]["epochs"] == 10 and shown["cluster"]["start_timeout_s"] == 300.0


def test_config_show_refuses_unknown_keys(capsys):
    code = main(["config", "show", "--config", str(ROOT / "configs" / "local-select.yaml"), "--set", "pool.ur=x"])
    assert code == 2
    assert "unknown config key pool.ur (did you mean 'uri'?)" in capsys.readouterr().err


def test_readme_config_reference_is_the_models_table():
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "scripts" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    readme = (ROOT / "README.md").read_text()
    assert module.updated(readme) == readme, "README's Config reference is stale: python scripts/config_reference.py"


def test_every_config_key_and_strategy_option_has_a_description():
    assert not [row for row in reference_table().splitlines() if row.endswith("|  |")]  # no empty meaning
    for spec in STRATEGIES.values():
        for f in dataclasses.fields(spec.options):
            assert f.metadata.get("description"), f"{spec.options.__name__}.{f.name}: use options.option(default, doc)"


def test_replace_with_another_strategy_drops_the_old_strategys_options():
    cfg = validate({"pool": {"uri": "x"}, "selection": {"budget": 5, "prune": False}})
    margin = cfg.replace(selection={"strategy": "margin", "budget": 20})
    assert margin.selection.model_dump() == {"strategy": "margin", "budget": 20, "seed": 0}
    assert cfg.replace(selection={"budget": 7}).selection.model_dump()["prune"] is False  # same strategy: kept
