"""Simulated active learning: the whole loop against the pool's hidden label column, for learning curves.

For every strategy and seed, starting from ``simulation.initial_labeled``
random rows (the same rows for every strategy at a given seed) whose labels
are revealed from ``pool.label_column``, ``simulation.rounds`` times:

1. train the model on the labeled rows (``dist_al.campaign.train.train``; with
   ``train.backend: local`` in this process, else with Ray Train) and write the
   checkpoint to ``{workdir}/simulation/{strategy}/seed{s}/round{r}.pt``;
2. score it on ``eval.uri`` and record (strategy, seed, round, labeled, accuracy);
3. re-embed the pool with those weights (one ``ShardedPool`` for the whole
   run: the ShardWorker actors start once and keep ids and labels resident)
   and select ``selection.budget`` unlabeled rows with the strategy;
4. reveal the picked rows' labels (looked up on the workers that hold them:
   the driver never loads the pool's label column).

A last train + eval after the final round gives each curve ``rounds + 1``
points.  Outputs (written atomically, local or object store):
``{workdir}/simulation/curve.csv`` and ``curve.png`` (accuracy against labels,
mean over seeds with a +-1 standard error band).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import posixpath
import time
from typing import Any, cast

import numpy as np

from dist_al.config import Config
from dist_al.core.api import strategy_spec
from dist_al.core.errors import UserError
from dist_al.core.progress import progress_bar
from dist_al.data.storage import filesystem, write_bytes_atomic

log = logging.getLogger(__name__)

__all__ = ["CURVE_COLUMNS", "curve_uris", "format_table", "parse_strategies", "simulate", "simulate_command"]

#: Columns of curve.csv, in order.
CURVE_COLUMNS = ["strategy", "seed", "round", "labeled", "accuracy", "train_seconds", "embed_seconds", "select_seconds"]


# --------------------------------------------------------------------------- settings


def parse_strategies(value) -> list[str]:
    """Strategy names from "badge,bait,random" (or a list); unknown names are a one-line UserError."""
    names = value.split(",") if isinstance(value, str) else list(value)
    names = [str(n).strip() for n in names if str(n).strip()]
    if not names:
        raise UserError("no strategies given: name one or more, e.g. badge,bait,random")
    for name in names:
        strategy_spec(name)  # raises "unknown strategy 'x' (did you mean ...); choose one of ..."
    if len(set(names)) < len(names):
        raise UserError(f"strategies must not repeat: {','.join(names)}")
    return names


def curve_uris(cfg: Config) -> tuple[str, str]:
    """Where simulate writes (curve.csv, curve.png)."""
    base = _join(cfg.workdir, "simulation")
    return _join(base, "curve.csv"), _join(base, "curve.png")


def _join(base: str, *parts: str) -> str:
    if "://" in base:
        return posixpath.join(base.rstrip("/"), *parts)
    return os.path.join(base, *parts)


def _round_seed(seed: int, round_: int) -> int:
    """A different, reproducible selection seed per round (random picks must not repeat a pattern)."""
    return int(np.random.SeedSequence([seed, round_]).generate_state(1)[0])


def _check(cfg: Config, strategies: list[str], seeds: int):
    from dist_al.campaign.train import open_eval_set
    from dist_al.inputs.contract import open_inputs

    if not cfg.pool.label_column:
        raise UserError(
            "simulation reveals the pool's hidden labels: set config key pool.label_column "
            "(an integer label column of the pool)"
        )
    if not cfg.eval.uri:
        raise UserError(
            "simulation needs a labeled evaluation set: set config key eval.uri (a Parquet dataset "
            "with the pool's id, input and label column names)"
        )
    if seeds < 1:
        raise UserError(f"seeds must be >= 1, got {seeds}")
    pool, _ = open_inputs(cfg.pool, cfg.inputs)  # footers only: schema problems before anything starts
    open_eval_set(cfg.pool, cfg.eval.uri, cfg.inputs)
    sim, budget = cfg.simulation, cfg.selection.budget
    need = sim.initial_labeled + sim.rounds * budget
    if need > pool.num_rows:
        raise UserError(
            f"the pool has {pool.num_rows} rows but simulation.initial_labeled "
            f"({sim.initial_labeled}) + simulation.rounds ({sim.rounds}) x selection.budget "
            f"({budget}) = {need} labels"
        )
    if "bait" in strategies:
        from dist_al.core.bait import check_reduction
        from dist_al.core.options import BaitOptions
        from dist_al.models.build import build_model, classifier_layer

        layer = classifier_layer(build_model(cfg.model, storage_options=cfg.pool.storage_options), cfg.model.classifier)
        options = cast(BaitOptions, cfg.selection.options_for("bait"))
        check_reduction(options, layer.out_features, layer.in_features)
    return pool


# --------------------------------------------------------------------------- the loop


def simulate(
    cfg: Config,
    *,
    strategies: list[str] | str | None = None,
    seeds: int | None = None,
    progress: bool = False,
    name: str | None = None,
) -> list[dict]:
    """Runs the simulated active-learning loop; returns the curve records (also written as curve.csv/png).

    ``strategies`` defaults to ``simulation.strategies`` (comma-separated), else
    ``[selection.strategy]``; ``seeds`` to ``simulation.seeds``.  Seed s of
    ``range(seeds)`` uses ``selection.seed + s`` for the initial rows, the
    selections and the model (``train.seed + s`` when ``train.seed`` is set).
    Each record: strategy, seed, round, labeled, accuracy, train_seconds,
    embed_seconds and select_seconds (None in the last round, which selects
    nothing).  ``name`` names the data in the plot (default: the pool URI).  Starts a local Ray unless one is
    running or ``cluster.address`` names one.
    """
    from dist_al.models.build import build_model
    from dist_al.runtime.cluster import cluster_session
    from dist_al.runtime.selection import sharded_pool

    if strategies is None:
        strategies = cfg.simulation.strategies or cfg.selection.strategy
    strategies = parse_strategies(strategies)
    seeds = cfg.simulation.seeds if seeds is None else seeds
    if isinstance(seeds, bool) or not isinstance(seeds, int):
        raise UserError(f"seeds must be an integer >= 1, got {seeds!r}")
    pool_info = _check(cfg, strategies, seeds)
    sim, sel = cfg.simulation, cfg.selection
    n_runs = len(strategies) * seeds

    records: list[dict] = []
    t0 = time.perf_counter()
    with cluster_session(cfg, train=True):  # the ShardWorkers live through every training
        network = build_model(cfg.model, seed=sel.seed, storage_options=cfg.pool.storage_options)
        pool = sharded_pool(cfg, network, progress=progress, labels=True)
        log.info(
            "pool %s: %d rows on %d workers, embedded in %.1fs",
            cfg.pool.uri,
            pool.num_rows,
            len(pool.workers),
            pool.seconds_embed,
        )
        bar = progress_bar(n_runs * (sim.rounds + 1), "simulation rounds", progress)
        try:
            for s in range(seeds):
                seed = sel.seed + s
                rng = np.random.default_rng(seed)
                first = np.sort(rng.choice(pool.num_rows, size=sim.initial_labeled, replace=False))
                init_ids, init_labels = pool.rows_at(first)
                shared_round0: dict[str, Any] = {}
                for strategy in strategies:
                    records += _run(cfg, pool, strategy, seed, s, init_ids, init_labels, shared_round0, bar)
        finally:
            bar.close()
            pool.close()
    log.info("simulation: %d runs in %.1fs", n_runs, time.perf_counter() - t0)
    _write_outputs(cfg, records, seeds, pool_info.num_rows, name)
    return records


def _run_config(cfg: Config, seed: int, offset: int) -> Config:
    base = cfg.train.seed
    return cfg.replace(selection={"seed": seed}, train={"seed": seed if base is None else base + offset})


def _run(cfg, pool, strategy, seed, offset, init_ids, init_labels, shared_round0, bar) -> list[dict]:
    """One strategy at one seed: rounds + 1 train/eval points, `rounds` selections."""
    import torch

    from dist_al.campaign.train import _label_keys, train
    from dist_al.campaign.train import accuracy as eval_accuracy
    from dist_al.models.build import build_model

    run_cfg = _run_config(cfg, seed, offset)
    sim, budget = cfg.simulation, cfg.selection.budget
    storage = cfg.pool.storage_options
    eval_uri = cfg.eval.uri
    options = cfg.selection.options_for(strategy)
    labeled = dict(zip(init_ids.tolist(), init_labels.tolist()))
    out_dir = _join(cfg.workdir, "simulation", strategy, f"seed{seed}")
    warm = cfg.train.warm_start
    weights = None
    records = []
    for r in range(sim.rounds + 1):
        uri = _join(out_dir, f"round{r}.pt")
        t_train = time.perf_counter()
        if r == 0 and "weights" in shared_round0:
            # Round 0 trains on the seed's initial rows only: the same model for every strategy.
            weights, accuracy = shared_round0["weights"], shared_round0["accuracy"]
            write_bytes_atomic(uri, shared_round0["bytes"], storage)
            t_train -= shared_round0["seconds"]  # report the training it stands for
        elif labeled:
            result = train(
                run_cfg,
                labeled,
                checkpoint_uri=uri,
                eval_uri=eval_uri,
                storage_options=storage,
                warm_start_weights=weights if warm else None,
            )
            weights, accuracy = result.weights, result.accuracy
        else:  # initial_labeled: 0 -- the untrained model selects the first batch
            model = build_model(run_cfg.model, seed=run_cfg.train_seed, storage_options=storage)
            weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            accuracy = eval_accuracy(run_cfg.pool, model, eval_uri, inputs=run_cfg.inputs)
            buf = io.BytesIO()
            torch.save(weights, buf)
            write_bytes_atomic(uri, buf.getvalue(), storage)
        if r == 0 and "weights" not in shared_round0:
            buf = io.BytesIO()
            torch.save(weights, buf)
            shared_round0.update(
                weights=weights, accuracy=accuracy, bytes=buf.getvalue(), seconds=time.perf_counter() - t_train
            )
        record = {
            "strategy": strategy,
            "seed": seed,
            "round": r,
            "labeled": len(labeled),
            "accuracy": accuracy,
            "train_seconds": time.perf_counter() - t_train,
            "embed_seconds": None,
            "select_seconds": None,
        }
        if r < sim.rounds:
            record["embed_seconds"] = pool.reembed(weights)
            picked = pool.select(
                strategy, budget, seed=_round_seed(seed, r), options=options, labeled_ids=_label_keys(labeled)
            )
            ids = picked.table.column("id").to_numpy(zero_copy_only=False)
            labeled.update(zip(ids.tolist(), pool.labels_of(ids).tolist()))
            record["select_seconds"] = picked.seconds_select
        log.info("%s seed %d round %d: %d labels, accuracy %.4f", strategy, seed, r, record["labeled"], accuracy)
        records.append(record)
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(
                f"{strategy} seed {seed}: {record['labeled']} labels, accuracy {accuracy:.3f}", refresh=False
            )
        bar.update(1)
    return records


# --------------------------------------------------------------------------- outputs


def _csv_bytes(records: list[dict]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CURVE_COLUMNS)
    for rec in records:
        row = []
        for col in CURVE_COLUMNS:
            v = rec.get(col)
            row.append("" if v is None else (f"{v:.6g}" if col.endswith("seconds") else v))
        writer.writerow(row)
    return buf.getvalue().encode()


def _write_outputs(cfg: Config, records: list[dict], seeds: int, pool_rows: int, name: str | None) -> None:
    from dist_al.data.storage import write_bytes_atomic
    from dist_al.experiments.plots import plot_curve

    csv_uri, png_uri = curve_uris(cfg)
    storage = cfg.pool.storage_options
    write_bytes_atomic(csv_uri, _csv_bytes(records), storage)
    if name is None:
        uri = cfg.pool.uri
        name = "pool " + (uri if len(uri) <= 40 else "..." + uri[-37:])
    subtitle = (
        f"{name} ({pool_rows:,} rows), {cfg.simulation.initial_labeled} initial labels, "
        f"+{cfg.selection.budget} per round; " + (f"mean ± 1 s.e. over {seeds} seeds" if seeds > 1 else "1 seed")
    )
    png = plot_curve(records, title="Active learning: test accuracy vs labels", subtitle=subtitle)
    write_bytes_atomic(png_uri, png, storage)


def format_table(records: list[dict]) -> str:
    """Markdown table: one row per strategy, one column per label count, mean accuracy over seeds."""
    from dist_al.experiments.plots import curve_stats

    stats = curve_stats(records)
    counts = sorted({n for rows in stats.values() for n, *_ in rows})
    seeds = len({r["seed"] for r in records})
    header = f"| {'strategy':<14} |" + "".join(f" {n:>6} |" for n in counts) + " select s/round |"
    rule = f"|{'-' * 16}|" + "".join(f"{'-' * 7}:|" for _ in counts) + f"{'-' * 15}:|"
    lines = [f"mean test accuracy over {seeds} seed{'s' if seeds > 1 else ''}, by number of labels", "", header, rule]
    for strategy, rows in stats.items():
        by_n = {n: mean for n, mean, _, _ in rows}
        sel = [r["select_seconds"] for r in records if r["strategy"] == strategy and r["select_seconds"] is not None]
        cells = "".join(f" {by_n[n]:6.3f} |" if n in by_n else f" {'':>6} |" for n in counts)
        sel_cell = f"{np.mean(sel):14.3f}" if sel else f"{'':>14}"
        lines.append(f"| {strategy:<14} |{cells} {sel_cell} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- command


def simulate_command(args) -> int:
    """`dist-al simulate`: config + overrides, run, print the table and where the curve went."""
    from dist_al.config import load_config

    logging.basicConfig(
        level=getattr(logging, args.log_level or "WARNING"), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    cfg = load_config(args.config, args.overrides)
    csv_uri, png_uri = curve_uris(cfg)
    done_uri = _join(cfg.workdir, "simulation", "run.json")
    # what determines the curve: the same again is already done (durations aside); credentials do not
    settings = {k: v for k, v in cfg.dump().items() if k not in ("cluster", "workdir")}
    run_key = json.dumps({"strategies": args.strategies, "seeds": args.seeds, **settings}, sort_keys=True, default=str)
    opts = cfg.pool.storage_options
    fs, done_path = filesystem(done_uri, opts)
    if fs.exists(done_path) and fs.cat_file(done_path).decode() == run_key:
        print(f"simulation already complete for this config: {csv_uri}, {png_uri} (remove {done_uri} to run it again)")
        return 0
    t0 = time.perf_counter()
    records = simulate(cfg, strategies=args.strategies, seeds=args.seeds, progress=not args.no_progress)
    write_bytes_atomic(done_uri, run_key.encode(), opts)
    print(format_table(records))
    print(f"\n{len(records)} points in {time.perf_counter() - t0:.1f}s -> {csv_uri}, {png_uri}")
    return 0
