"""The config: one typed model per section, and the only place where defaults live.

A YAML file (safe loader) and ``--set key=value`` overrides (each value parsed as YAML) are merged first and checked
once, so a file and an override are the same thing. Every error is one line naming the key; a misspelt key suggests
the closest valid one. Credentials in ``pool.storage_options`` (``dist_al.credentials`` says what counts) are held
as `Secret` values that print, dump and serialise as ``<redacted>``: a config copy that dist-al writes (``dist-al
config show``, the workdir's ``config.yaml``, a log line) cannot leak one, while the filesystem still gets the value
(``dist_al.data.storage.filesystem``, the one place it reaches fsspec). Each layer gets only its section:
``PoolConfig`` the data layer, ``ModelConfig`` the model layer, ``ClusterConfig`` the Ray runtime, ``TrainConfig``
training. Strategy options are typed per strategy from the core's own option types (``dist_al.core.api``), so the
core and the config cannot disagree on a default.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import typing
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    create_model,
    field_serializer,
    field_validator,
    model_validator,
)

from dist_al.core.errors import UserError
from dist_al.core.options import STRATEGY_OPTIONS, StrategyOptions
from dist_al.credentials import REDACTED, Secret, credential_paths, redact, reveal


class ConfigError(UserError):
    """A config problem; the message names the key."""


def _hide_credentials(options: dict) -> dict:
    """storage_options with every credential (at any depth) wrapped in a Secret."""
    options = reveal(options)
    out = json.loads(json.dumps(options, default=str)) if options else {}
    for path in credential_paths({"pool": {"storage_options": out}}):
        keys = path.split(".")[2:]
        node = out
        for key in keys[:-1]:
            node = node[key]
        leaf = keys[-1]
        if leaf in node:  # a key that names a credential
            node[leaf] = Secret(_original(options, keys))
    return out


def _original(options: dict, keys: list[str]) -> Any:
    node: Any = options
    for key in keys:
        node = node[key]
    return node


def _redacted(value: Any) -> Any:
    if isinstance(value, Secret):
        return REDACTED
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redacted(v) for v in value]
    return value


class Section(BaseModel):
    """Unknown keys are errors; values are not coerced across types (yaml's `yes` is no integer)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, arbitrary_types_allowed=True)


class PoolConfig(Section):
    """Where the pool lives and which columns hold ids and labels (the data layer's input); the columns the
    model reads are the ``inputs`` section's."""

    uri: str = Field(
        description="Parquet file, directory or prefix; a local path or any fsspec URL (s3://, gs://, file://, memory://)"
    )
    id_column: str = Field("id", description="unique row id (int64 or string)")
    label_column: str | None = Field(None, description="integer labels; read only by simulation and evaluation")
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec/s3fs options, e.g. {endpoint_url: ...}; keep credentials in the "
        "environment (any given here are held as secrets and never written)",
    )

    @field_validator("storage_options", mode="after")
    @classmethod
    def _secrets(cls, value: dict) -> dict:
        return _hide_credentials(value)

    @field_serializer("storage_options")
    def _dump_storage_options(self, value: dict) -> dict:
        return _redacted(value)


class InputsConfig(Section):
    """How a batch of pool rows becomes the model's input: a reader (``dist_al.inputs``, "The reader contract")."""

    reader: str = Field(
        "dist_al.inputs:vectors",
        description="module:function(batch: pyarrow.RecordBatch, **kwargs) -> tensor or dict of tensors; built in: "
        "dist_al.inputs:vectors, dist_al.inputs:images, dist_al.inputs:text",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments of the reader, e.g. {column: features} for vectors"
    )
    columns: list[str] | None = Field(
        None,
        description="pool columns a reader without a columns() attribute reads; null = every column but the id "
        "and label columns",
    )
    on_error: Literal["raise", "skip"] = Field(
        "raise",
        description="a row the reader cannot read: raise = fail naming it; skip = leave it out of selection, "
        "counted, logged with its id and reported",
    )
    max_skipped: float = Field(
        0.01, ge=0, le=1, description="with on_error=skip: fail when more than this fraction of the pool is skipped"
    )
    threads: int | None = Field(
        None, gt=0, description="decode threads per worker; null = the worker's CPUs (cluster.cpus_per_worker)"
    )


class ModelConfig(Section):
    """The model by import path and its weights (the model layer's input)."""

    factory: str = Field(
        "dist_al.models:mlp",
        description="module:function returning an nn.Module (dist_al.models.build says what it must return; "
        "the built-ins are dist_al.models:NAME)",
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the factory")
    checkpoint: str | None = Field(
        None,
        description="state_dict URI (local or object store), loaded with weights_only=True; null = initialise once "
        "from selection.seed and ship the same weights to every worker",
    )
    classifier: str | None = Field(
        None, description="module name of the final nn.Linear; null = the last nn.Linear of the model"
    )
    autocast: Literal["bf16", "fp16"] | None = Field(
        None, description="mixed precision on GPU workers (bf16 or fp16); null = float32"
    )
    batch_size: int = Field(4096, gt=0, description="rows per forward pass")


_DEFAULT_STRATEGY = "badge"  # of a selection section that names none


class SelectionBase(Section):
    """The selection section's keys that every strategy has; each strategy adds its own options."""

    strategy: str = Field(_DEFAULT_STRATEGY, description=f"the acquisition strategy: {', '.join(STRATEGY_OPTIONS)}")
    budget: int = Field(gt=0, description="rows to select")
    seed: int = Field(
        0,
        ge=0,
        description="seeds the coordinator's RNG and the model initialisation (round n of dist-al round uses "
        "seed + n, seed s of a simulation seed + s)",
    )

    def options(self) -> StrategyOptions:
        """This strategy's options, as the core takes them."""
        return self.options_for(self.strategy)

    def options_for(self, strategy: str) -> StrategyOptions:
        """The options ``strategy`` takes, from the keys of this section it shares with it (simulate runs several
        strategies from one section); the core's defaults for the rest."""
        kind = STRATEGY_OPTIONS[strategy]
        given = {f.name: getattr(self, f.name) for f in dataclasses.fields(kind) if f.name in self.model_fields_set}
        return kind(**given)


def _selection_model(name: str) -> type[SelectionBase]:
    kind = STRATEGY_OPTIONS[name]
    hints = typing.get_type_hints(kind)
    fields: dict[str, Any] = {
        "strategy": (Literal[name], name),  # the tag that picks this model
        **{
            f.name: (hints[f.name], Field(f.default, description=f.metadata.get("description")))
            for f in dataclasses.fields(kind)
        },
    }
    model_name = "".join(part.capitalize() for part in name.split("-")) + "Selection"
    return create_model(
        model_name,
        __base__=SelectionBase,
        __module__=__name__,
        __doc__=f"The selection section with strategy {name!r}.",
        **fields,
    )


def _strategy_of(value: Any) -> str:
    if isinstance(value, dict):
        return value.get("strategy", _DEFAULT_STRATEGY)
    return getattr(value, "strategy", _DEFAULT_STRATEGY)


SELECTION_MODELS = {name: _selection_model(name) for name in STRATEGY_OPTIONS}
globals().update({model.__name__: model for model in SELECTION_MODELS.values()})  # picklable, for Ray
if TYPE_CHECKING:  # one static type for the checker; at run time a union tagged by the strategy
    SelectionConfig = SelectionBase
else:
    SelectionConfig = Annotated[
        Union[tuple(Annotated[model, Tag(name)] for name, model in SELECTION_MODELS.items())],  # noqa: UP007
        Discriminator(_strategy_of),
    ]


class TrainConfig(Section):
    """Retraining on the labeled rows (Ray Train, or the same loop in this process)."""

    epochs: int = Field(20, gt=0, description="passes over the labeled rows")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    batch_size: int = Field(128, gt=0, description="rows per optimiser step on each worker")
    workers: int = Field(2, gt=0, description="Ray Train workers (DDP processes)")
    use_gpu: bool = Field(False, description="one GPU per Ray Train worker")
    cpus_per_worker: float = Field(1, ge=0, description="CPUs reserved per worker (also its torch threads)")
    warm_start: bool = Field(
        False, description="false: each round trains from the seed; true: from the previous round's weights"
    )
    seed: int | None = Field(None, ge=0, description="model init and shuffling; null = selection.seed")
    storage_path: str | None = Field(None, description="Ray Train run storage; null = next to the checkpoint")
    backend: Literal["ray", "local"] = Field(
        "ray", description="ray: Ray Train's TorchTrainer; local: the same loop in this process (small simulations)"
    )


class SimulationConfig(Section):
    """`dist-al simulate`: the loop against the pool's hidden labels."""

    initial_labeled: int = Field(100, ge=0, description="random rows labeled before the first round")
    rounds: int = Field(5, gt=0, description="select-reveal-train rounds")
    strategies: str | None = Field(None, description="comma-separated strategies; null = selection.strategy")
    seeds: int = Field(1, gt=0, description="repetitions per strategy")


class EvalConfig(Section):
    """The held-out labeled rows on which training records its accuracy."""

    uri: str | None = Field(
        None, description="a labeled Parquet dataset with the pool's columns; null = no eval accuracy"
    )


class LabelingConfig(Section):
    """What annotators see and how their labels come back (the campaign layer's input).

    ``files``: each round is exported as files (a Label Studio tasks file among them) and labels come back with
    `dist-al ingest`. ``label-studio``: every `dist-al round` pushes the round's tasks to a Label Studio project
    once and pulls the finished annotations; the API key comes from the environment (LABEL_STUDIO_API_KEY), never
    from here.
    """

    backend: Literal["files", "label-studio"] = Field(
        "files", description="files: export/ingest by hand; label-studio: each round tick pushes and pulls"
    )
    url: str | None = Field(None, description="Label Studio's base URL, e.g. http://label-studio:8080")
    project: int | str | None = Field(
        None, description="a Label Studio project id, or a title (created with the generated labeling config)"
    )
    classes: list[str] | None = Field(
        None, description="class names in class-index order; null = 0, 1, ... up to the model's class count"
    )
    image: str | None = Field(
        None, description="pool column shown as an image: a URI (s3://, https://, a path) or bytes"
    )
    text: str | None = Field(None, description="pool column shown as text")
    context: list[str] = Field(default_factory=list, description="more pool columns, shown as a table")
    features: Literal["hidden", "table"] = Field(
        "hidden",
        description="table: show the vector the vectors reader gives for each row (vector pools); hidden: not at all",
    )
    predictions: bool = Field(False, description="send the model's predicted class and score with each task")
    min_fraction: float = Field(
        1.0, gt=0, le=1, description="a round is labeled once this fraction is and max_wait_s has passed"
    )
    max_wait_s: float = Field(0, ge=0, description="seconds after the push before min_fraction suffices")
    presign_expiry_s: int | None = Field(
        604800,
        gt=0,
        le=604800,
        description="object-store links become presigned URLs valid this long; null = sent as they are, for "
        "Label Studio's own cloud storage connection to resolve",
    )
    local_files_root: str | None = Field(
        None,
        description="LOCAL_FILES_DOCUMENT_ROOT of a Label Studio that sees this machine's files: local images are "
        "linked through its local-files storage",
    )
    timeout_s: float = Field(30, gt=0, description="seconds to wait for each Label Studio request")
    push_batch: int = Field(100, gt=0, description="tasks per import request (each batch is recorded before the next)")

    @field_validator("project", mode="before")
    @classmethod
    def _id_or_title(cls, value: Any) -> Any:
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, str))):
            raise ValueError(f"must be a project id or a title, got {value!r}")
        return value

    @field_validator("classes", mode="after")
    @classmethod
    def _distinct_classes(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or len(set(value)) != len(value) or "" in value):
            raise ValueError(f"class names must be distinct and non-empty, got {value}")
        return value

    @model_validator(mode="after")
    def _connected(self) -> LabelingConfig:
        if self.backend == "label-studio":
            missing = [key for key in ("url", "project") if getattr(self, key) is None]
            if missing:
                raise ValueError(f"backend label-studio needs labeling.{' and labeling.'.join(missing)}")
        shown = [c for c in (self.image, self.text) if c is not None] + list(self.context)
        if len(set(shown)) != len(shown):
            raise ValueError(f"a pool column is shown twice ({', '.join(shown)})")
        return self

    def class_names(self, n_classes: int) -> list[str]:
        """The names of the model's ``n_classes`` classes, in class-index order."""
        if self.classes is None:
            return [str(k) for k in range(n_classes)]
        if len(self.classes) != n_classes:
            raise ConfigError(
                f"config key labeling.classes names {len(self.classes)} classes, the model has {n_classes}"
            )
        return list(self.classes)


class ClusterConfig(Section):
    """Where the ShardWorkers run and what each asks for (the Ray runtime's input)."""

    address: str | None = Field(
        None,
        description="null = a private local Ray (the job's cluster inside a Ray Job); auto, ray://... or HOST:PORT "
        "= connect",
    )
    workers: int = Field(2, gt=0, description="ShardWorker actors (shards)")
    gpus_per_worker: float = Field(0, ge=0, description="GPUs per ShardWorker (CUDA is used when Ray assigns one)")
    cpus_per_worker: float = Field(
        1,
        ge=0,
        description="CPUs per ShardWorker (also its torch thread count; on a local Ray, at most its share of the "
        "cores)",
    )
    start_timeout_s: float = Field(
        300.0,
        gt=0,
        description="on a cluster dist-al connects to: how long to wait for it to place and start the ShardWorkers "
        "(and Ray Train's workers) before a one-line error; a progress line every 10 s says what is missing",
    )
    driver_select_rows: int = Field(
        0,
        ge=0,
        description="a pool of at most this many rows is selected in the driver: the ShardWorkers embed it and send "
        "their (p, h) once, and the same coordinator loop runs without a Ray round trip per step (same ids; BAIT's "
        "rounds 3x faster in `dist-al demo`, see docs/BENCHMARKS.md); 0 = always on the workers",
    )
    compiled_graph: bool = Field(
        False,
        description="exact BADGE's centres through a Ray compiled graph (true) or plain actor calls (false): the same "
        "ids; the graph's channels poll while they wait, which costs CPUs a small node does not have",
    )


class Config(Section):
    """A whole dist-al config: one model per section (README, "Config reference", lists every key).

    Make one with `load_config` (a YAML file and ``--set`` overrides) or `validate` (plain data);
    both check everything at once. A Config is frozen: `replace` makes a checked copy.
    """

    pool: PoolConfig
    inputs: InputsConfig = InputsConfig()
    model: ModelConfig = ModelConfig()
    selection: SelectionConfig
    train: TrainConfig = TrainConfig()
    simulation: SimulationConfig = SimulationConfig()
    eval: EvalConfig = EvalConfig()
    cluster: ClusterConfig = ClusterConfig()
    labeling: LabelingConfig = LabelingConfig()
    workdir: str = Field("./dist-al-work", description="where outputs and rounds go (local path or s3:// prefix)")

    @property
    def train_seed(self) -> int:
        """``train.seed``, or ``selection.seed`` when that is null."""
        return self.selection.seed if self.train.seed is None else self.train.seed

    def raw(self) -> dict:
        """The config as plain data that ``validate`` takes back, credentials still held as secrets."""
        data = self.model_dump(mode="python", exclude_unset=False)
        data["pool"]["storage_options"] = copy.deepcopy(self.pool.storage_options)
        return data

    def replace(self, **sections: Any) -> Config:
        """A copy with some sections or keys changed, checked again.

        Args:
            **sections: per section, the keys to change (``replace(model={"checkpoint": uri})``); a top-level
                key by its value (``replace(workdir="/tmp/w")``).

        Returns:
            A new, checked Config; this one is unchanged.

        Raises:
            ConfigError: the changed config is invalid (the message names the key).
        """
        raw = self.raw()
        selection = sections.get("selection")
        if (
            isinstance(selection, dict)
            and selection.get("strategy", self.selection.strategy) != self.selection.strategy
        ):
            # another strategy: the old one's options do not carry over
            raw["selection"] = {k: v for k, v in raw["selection"].items() if k in SelectionBase.model_fields}
        return validate(_merge(raw, sections))

    def dump(self) -> dict:
        """Plain data with every credential redacted (``dist_al.credentials``, at any depth, not only the
        secrets of storage_options): what `config show` prints and the workdir keeps."""
        return redact(self.model_dump(mode="json"))

    def to_yaml(self) -> str:
        """`dump` as YAML, sections in their order: what ``dist-al config show`` prints."""
        return yaml.safe_dump(self.dump(), sort_keys=False)


# -- reading -------------------------------------------------------------------------------------------


def load_config(path: str | None = None, overrides: Sequence[str] = (), base: dict | None = None) -> Config:
    """The checked config of a YAML file with ``--set`` overrides, defaults filled in.

    Args:
        path: a YAML file (read with a safe loader); None = only ``base`` and the overrides.
        overrides: ``"key=value"`` strings, each value parsed as YAML (``"model.kwargs={in_dim: 8}"``), applied
            after the file.
        base: plain data the file and the overrides are merged onto.

    Returns:
        The checked Config.

    Raises:
        ConfigError: the file is missing, unreadable or not YAML, an override is not ``key=value``, a key is
            unknown (the message suggests the closest valid one), missing or of the wrong type or range.
    """
    return validate(read_config(path, overrides, base))


def read_config(path: str | None = None, overrides: Sequence[str] = (), base: dict | None = None) -> dict:
    """What `load_config` checks: the YAML file with the overrides applied, as given (no defaults, unchecked)."""
    raw: dict = copy.deepcopy(base) if base else {}
    if path is not None:
        try:
            with open(path) as f:
                loaded = yaml.safe_load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except OSError as err:
            raise ConfigError(f"config file {path} cannot be read: {err.strerror or err}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(loaded).__name__}")
        raw = _merge(raw, loaded)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        _set_path(raw, key.strip(), value)
    return raw


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _set_path(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a section")
        node = nxt
    node[parts[-1]] = value


def validate(raw: dict) -> Config:
    """A complete, checked config from plain data (as the YAML holds it); raises ConfigError naming the first bad
    key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a config is a mapping of sections, got {type(raw).__name__}")
    # an absent or empty section is a section of defaults, so a missing key is named as such
    raw = {**{name: {} for name, f in Config.model_fields.items() if f.annotation is not str}, **raw}
    raw = {k: ({} if v is None and k != "workdir" else v) for k, v in raw.items()}
    _moved_keys(raw)
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_message(err, raw)) from None
    try:
        cfg.selection.options()  # the core's own checks of the values (lam > 0, ...)
    except UserError as err:
        raise ConfigError(f"config key selection: {err}") from None
    return cfg


def _moved_keys(raw: dict) -> None:
    """Keys of earlier versions that now live elsewhere: one line saying where, not "unknown key"."""
    pool = raw.get("pool")
    if isinstance(pool, dict) and "feature_column" in pool:
        column = pool["feature_column"]
        raise ConfigError(
            f"config key pool.feature_column moved: the vectors reader's column is inputs.kwargs.column; write "
            f"`inputs: {{reader: dist_al.inputs:vectors, kwargs: {{column: {column}}}}}` (or --set "
            f"inputs.kwargs.column={column}) and remove pool.feature_column"
        )


def schema() -> dict:
    """JSON Schema (draft 2020-12) of a config file, for editors' YAML plugins (completion and checking): what
    ``dist-al config schema`` prints. A selection section without ``strategy`` is badge's, as in `validate`."""
    out = Config.model_json_schema()
    out["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    out["title"] = "dist-al config"
    for name, model in SELECTION_MODELS.items():  # one branch of the union per strategy: only badge's may omit it
        if name != _DEFAULT_STRATEGY:
            out["$defs"][model.__name__]["required"] = ["strategy", *out["$defs"][model.__name__]["required"]]
    return out


def reference_table() -> str:
    """README's "Config reference" table (markdown) from the models' fields and the strategies' options: every key,
    its default and its description. ``python scripts/config_reference.py`` writes it into README.md and
    tests/test_config.py checks that README holds it."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for name, f in Config.model_fields.items():
        section = SelectionBase if name == "selection" else f.annotation
        if not (isinstance(section, type) and issubclass(section, BaseModel)):
            rows.append(_reference_row(name, f.get_default(call_default_factory=True), f.is_required(), f.description))
            continue
        for key, sub in section.model_fields.items():
            default = sub.get_default(call_default_factory=True)
            rows.append(_reference_row(f"{name}.{key}", default, sub.is_required(), sub.description))
        if name == "selection":
            rows += _option_rows()
    return "\n".join(rows) + "\n"


def _option_rows() -> list[str]:
    """One row per strategy option, named with the strategies that take it."""
    options: dict[str, tuple[list[str], dataclasses.Field]] = {}
    for strategy, kind in STRATEGY_OPTIONS.items():
        for f in dataclasses.fields(kind):
            options.setdefault(f.name, ([], f))[0].append(strategy)
    return [
        _reference_row(f"selection.{name}", f.default, False, f"{', '.join(strategies)}: {f.metadata['description']}")
        for name, (strategies, f) in options.items()
    ]


def _reference_row(key: str, default: Any, required: bool, description: str | None) -> str:
    if required:
        shown = "required"
    elif isinstance(default, str):
        shown = f"`{default}`"
    else:
        shown = f"`{json.dumps(default)}`"
    return f"| `{key}` | {shown} | {(description or '').replace('|', chr(92) + '|')} |"


# -- one line per error ----------------------------------------------------------------------------

_TYPE_NAMES = {
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "int_from_float": "an integer",
}


def _key(loc: tuple, raw: dict) -> str:
    """The dotted config key of an error's location (without the union tags pydantic adds)."""
    parts = [str(p) for p in loc if not (loc[:1] == ("selection",) and p == _selection_tag(raw) and p != loc[-1])]
    return ".".join(p for p in parts if not p.startswith(("function-", "nullable[", "literal[")))


def _selection_tag(raw: dict) -> str:
    section = raw.get("selection")
    return _strategy_of(section) if isinstance(section, dict) else _DEFAULT_STRATEGY


def _shown(key: str, value: Any) -> str:
    return f"a {type(value).__name__}" if key.startswith("pool.storage_options") else repr(value)


def _nullable(key: str, raw: dict) -> bool:
    """Whether the config key may be null (for the messages)."""
    model: Any = Config
    *sections, name = key.split(".")
    for part in sections:
        field = model.model_fields.get(part)
        model = SELECTION_MODELS[_selection_tag(raw)] if part == "selection" else (field and field.annotation)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return False
    field = model.model_fields.get(name)
    return field is not None and type(None) in typing.get_args(field.annotation)


def _one_of(values: list[str]) -> str:
    return values[0] if len(values) == 1 else f"{', '.join(values[:-1])} or {values[-1]}"


def _message(err: ValidationError, raw: dict) -> str:
    errors = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")  # a misspelt key explains the rest
    e = errors[0]
    key, kind, value = _key(e["loc"], raw), e["type"], e.get("input")
    if kind == "extra_forbidden":
        return _unknown_key(key, raw)
    if kind == "missing":
        return f"config key {key} is required"
    if kind == "union_tag_invalid":
        tag = e["ctx"]["tag"]
        hint = difflib.get_close_matches(str(tag), STRATEGY_OPTIONS, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        choices = ", ".join(STRATEGY_OPTIONS)
        return f"config key selection.strategy: unknown strategy {tag!r}{extra}; choose one of {choices}"
    if kind == "literal_error":
        allowed = [v.strip().strip("'") for v in e["ctx"]["expected"].replace(" or ", ", ").split(",")]
        return f"config key {key} must be {_one_of(allowed + ['null'] * _nullable(key, raw))}, got {_shown(key, value)}"
    if kind in ("greater_than", "greater_than_equal"):
        bound = e["ctx"].get("gt", e["ctx"].get("ge"))
        want = (
            "positive"
            if kind == "greater_than" and bound == 0
            else f"{'>' if kind == 'greater_than' else '>='} {bound}"
        )
        return f"config key {key} must be {want}, got {_shown(key, value)}"
    if kind in _TYPE_NAMES:
        want = _TYPE_NAMES[kind] + (" or null" if _nullable(key, raw) else "")
        return f"config key {key}: expected {want}, got {_shown(key, value)}"
    if kind == "value_error":  # a strategy option's own check in the core
        return f"config key {key}: {str(e['ctx']['error'])}"
    return f"config key {key}: {e['msg']}"


def _unknown_key(key: str, raw: dict) -> str:
    *section, name = key.split(".")
    if not section:
        valid = list(Config.model_fields)
        hint = _suggest(name, valid)
        return f"unknown config key {name!r}{hint}; valid sections: {', '.join(valid)}"
    if section == ["selection"]:
        strategy = _selection_tag(raw)
        valid = [k for k in SELECTION_MODELS[strategy].model_fields if k != "strategy"] + ["strategy"]
        return (
            f"unknown config key {key} for strategy {strategy!r}{_suggest(name, valid)}; valid keys: {', '.join(valid)}"
        )
    model: Any = Config
    for part in section:
        field = model.model_fields.get(part)
        model = field.annotation if field is not None else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return f"unknown config key {key}"
    return f"unknown config key {key}{_suggest(name, list(model.model_fields))}"


def _suggest(key: str, valid: list[str]) -> str:
    hint = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f" (did you mean {hint[0]!r}?)" if hint else ""
