"""`dist-al`: the command line. It only parses arguments and calls the library."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import traceback

from dist_al.core.errors import UserError

EXAMPLES = {
    "select": "examples:\n  dist-al select --config configs/local-select.yaml\n"
    "  dist-al select --config configs/local-select.yaml --set selection.strategy=bait --set selection.budget=50\n"
    "  dist-al select --config configs/s3-select.yaml --out s3://bucket/selections/round-1.parquet",
    "make-pool": "examples:\n  dist-al make-pool ./pool --synthetic --rows 100000 --classes 10 --dim 64\n"
    "  dist-al make-pool ./eval-pool --synthetic --rows 2000 --classes 10 --dim 64 --sample-seed 1   (its eval set)\n"
    "  dist-al make-pool ./pool --features X.npy --labels y.npy\n"
    "  dist-al make-pool ./pool --csv data.csv --id-column id --label-column label\n"
    "  dist-al make-pool ./pool --images ./photos                       (photos/CLASS/*.jpg: labels from folders)\n"
    "  dist-al make-pool s3://bucket/pool --images ./photos --image-storage files\n"
    "  dist-al make-pool ./pool --text tickets.csv --text-column body --label-column team",
    "demo": "examples:\n  dist-al demo\n  dist-al demo --workdir /tmp/al-demo --seeds 3\n"
    "  dist-al demo --set simulation.rounds=8 --set train.epochs=100\n"
    "reproduce it with the general command (after a first `dist-al demo` wrote the pools):\n"
    "  dist-al simulate --config configs/demo.yaml --set pool.uri=./dist-al-demo/pool",
    "simulate": "examples:\n  dist-al simulate --config configs/demo.yaml\n"
    "  dist-al simulate --config my.yaml --strategies badge,bait,random --seeds 3\n"
    "  dist-al simulate --config my.yaml --set simulation.rounds=10 --set train.backend=local --log-level INFO\n"
    "needs pool.label_column (the hidden labels) and eval.uri (a labeled test set);\n"
    "writes WORKDIR/simulation/curve.csv, curve.png and one checkpoint per round",
    "evaluate": "examples:\n  dist-al evaluate eval-runs/digits-scratch-b10 eval-runs/digits-scratch-b60 --out docs\n"
    "  scripts/evaluate.sh     (every run and figure of docs/EVALUATION.md)\n"
    "writes OUT/eval-curves-DATASET.png, eval-penalty.png, eval-tables.md and eval-summary.csv",
    "round": "examples:\n  dist-al round --config configs/local-round.yaml\n"
    "  */5 * * * *  dist-al round --config /etc/dist-al/prod.yaml     (crontab: one tick every 5 minutes)\n"
    "  LABEL_STUDIO_API_KEY=... dist-al round --config configs/label-studio-round.yaml   (push and pull)\n"
    "prints one line, e.g. 'round 3: waiting for labels, 412/500 received'",
    "export": "examples:\n  dist-al export --config configs/local-round.yaml\n"
    "writes WORKDIR/rounds/NNNN/export/{selection.parquet,selection.csv,label_studio_tasks.json,\n"
    "label_studio_config.xml}; with labeling.backend label-studio it also pushes the tasks (once)",
    "ingest": "examples:\n"
    "  dist-al ingest --config configs/local-round.yaml project-3-export.json   (Label Studio JSON export)\n"
    "  dist-al ingest --config configs/local-round.yaml labels.csv                (columns id,label)\n"
    "  dist-al ingest --config configs/local-round.yaml labels.json --class-names cat,dog,bird",
    "train": "examples:\n  dist-al train --config configs/local-round.yaml\n"
    "  dist-al train --config configs/local-round.yaml --set train.workers=4 --set train.use_gpu=true",
    "status": "examples:\n  dist-al status --config configs/local-round.yaml",
    "submit": "examples:\n"
    "  dist-al submit --address http://HEAD:8265 --config configs/gpu-cluster.yaml --wait -- round\n"
    "  RAY_ADDRESS=http://HEAD:8265 dist-al submit --config configs/s3-select.yaml --set selection.budget=500 \\\n"
    "    -- select\n"
    "  dist-al submit --config my.yaml --working-dir . --wait -- simulate --strategies badge,random\n"
    "the working directory (default: the current one) is uploaded with the job; the config must lie inside it.\n"
    "the Ray token comes from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, never from the config",
    "jobs": "examples:\n  dist-al jobs --address http://HEAD:8265\n  RAY_ADDRESS=http://HEAD:8265 dist-al jobs --all",
    "logs": "examples:\n  dist-al logs dist-al-round-20261121-101500-3fa2c1 --address http://HEAD:8265\n"
    "  dist-al logs dist-al-round-20261121-101500-3fa2c1 --follow",
    "config": "examples:\n  dist-al config show --config configs/local-select.yaml\n"
    "  dist-al config show --config configs/local-round.yaml --set selection.strategy=bait --set selection.lam=0.1\n"
    "  dist-al config schema > dist-al.schema.json\n"
    "then, as a config's first line, for VS Code's YAML extension (completion, descriptions, checking):\n"
    "  # yaml-language-server: $schema=./dist-al.schema.json",
    "bench": "examples:\n  dist-al bench core\n  dist-al bench core --quick --only badge-bound,bait-step\n"
    "  dist-al bench core --device cuda --scale 10\n"
    "  dist-al bench distributed\n  dist-al bench distributed --quick --only coordination,gather\n"
    "  dist-al bench distributed --device cuda --only embedding,full\n"
    "both suites take --quick (small sizes, seconds), --device cpu|cuda and --only ROW,ROW,...;\n"
    "`dist-al bench SUITE --help` lists a suite's rows and its other options",
}


_WIRE_LOGGERS = ("botocore", "aiobotocore", "boto3", "s3transfer", "urllib3", "s3fs", "gcsfs", "adlfs", "google")
# Failures of the environment, not of dist-al (a store that stays down, workers that keep dying): their message is
# the whole story. (module, class): a module not imported cannot have raised its error.
_ENVIRONMENT_FAILURES = (
    ("dist_al.data.storage", "StorageUnavailable"),
    ("dist_al.runtime.sharded_pool", "WorkerLostError"),
)
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_FRAME = re.compile(r'File "[^"]*/(dist_al/[^"]+)", line (\d+), in (\S+)')  # in a traceback's text


def _remote_cause(err: BaseException) -> BaseException:
    """An exception raised on a Ray worker arrives wrapped with the worker's traceback; answer the original."""
    cause = getattr(err, "cause", None)  # ray.exceptions.RayTaskError keeps the original exception here
    return _remote_cause(cause) if isinstance(cause, BaseException) else err


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:300] if lines else ""


def _is_environment_failure(err: BaseException) -> bool:
    kinds = (getattr(sys.modules.get(module), name, None) for module, name in _ENVIRONMENT_FAILURES)
    return any(kind is not None and isinstance(err, kind) for kind in kinds)


def _where(err: BaseException) -> str:
    """The innermost place in dist-al's own code the error went through, on the Ray worker that raised it
    if one did, as "dist_al/x.py:123 in fn"."""
    wrapped = isinstance(getattr(err, "cause", None), BaseException)  # a RayTaskError: its text holds the traceback
    remote = _FRAME.findall(str(err)) if wrapped else []
    if remote:
        return "{}:{} in {}".format(*remote[-1])
    frames = traceback.extract_tb(err.__traceback__)
    ours = [f for f in frames if os.path.abspath(f.filename).startswith(_PACKAGE_DIR + os.sep)]
    if not ours:
        return f"{frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames else "an unknown place"
    return f"{os.path.relpath(ours[-1].filename, os.path.dirname(_PACKAGE_DIR))}:{ours[-1].lineno} in {ours[-1].name}"


def _internal_error_line(err: BaseException) -> str:
    cause = _remote_cause(err)
    return (
        f"dist-al: internal error: {type(cause).__name__}: {_first_line(cause)} (at {_where(err)}); "
        "run with --debug for the traceback, and please report it"
    )


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help="YAML config file (see README, Config reference)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set selection.budget=500 (repeatable)",
    )


def _address_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address", default=None, help="the cluster's dashboard address, e.g. http://HEAD:8265 (default: RAY_ADDRESS)"
    )


def _log_level_arg(parser: argparse.ArgumentParser, dest: str = "log_level") -> None:
    parser.add_argument(
        "--log-level",
        dest=dest,
        default=None,
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level (default WARNING)",
    )


def _command(sub, name: str, **kwargs) -> argparse.ArgumentParser:
    """A subcommand: its examples in --help, and --log-level after its name too."""
    cmd = sub.add_parser(name, epilog=EXAMPLES[name], formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
    _log_level_arg(cmd)
    return cmd


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dist-al",
        description="Large-pool active learning: pick the batch most worth labeling (BADGE, BAIT, baselines).",
        epilog="Run `dist-al COMMAND --help` for the options and examples of each command.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    _log_level_arg(parser, "global_log_level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = _command(
        sub,
        "demo",
        help="learning curves of badge, bait and random on scikit-learn's digits (local, about a minute)",
        description="Writes a pool and a test set from scikit-learn's bundled digits data under WORKDIR, then "
        "runs `dist-al simulate` with configs/demo.yaml on a local Ray: prints mean test accuracy per "
        "strategy and label count, writes WORKDIR/simulation/curve.csv and curve.png.",
    )
    demo.add_argument(
        "--workdir", default="./dist-al-demo", help="where the pools, checkpoints and curve go (default ./dist-al-demo)"
    )
    demo.add_argument("--seeds", type=int, default=None, help="repetitions per strategy (default: the config's)")
    demo.add_argument("--config", "-c", default=None, help="demo config (default: configs/demo.yaml)")
    demo.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (repeatable)",
    )
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")

    simulate = _command(
        sub,
        "simulate",
        help="learning curves: the whole active-learning loop against the pool's hidden labels",
        description="For each strategy and seed: train on the labeled rows, score on eval.uri, select "
        "selection.budget rows with the trained model, reveal their labels from pool.label_column; "
        "simulation.rounds times. Prints mean accuracy per strategy and label count.",
    )
    _config_args(simulate)
    simulate.add_argument(
        "--strategies",
        default=None,
        metavar="A,B,...",
        help="comma-separated strategies (default: simulation.strategies, else selection.strategy)",
    )
    simulate.add_argument(
        "--seeds", type=int, default=None, help="repetitions per strategy (default: simulation.seeds)"
    )
    simulate.add_argument("--no-progress", action="store_true", help="no progress bars")

    evaluate = _command(
        sub,
        "evaluate",
        help="compare strategies over `dist-al simulate` runs: AUC, labels to target, penalty matrix, plots",
        description="Reads RUN_DIR/simulation/curve.csv of each run (one setting each) and writes learning-curve "
        "panels per data set, the pairwise penalty heatmap and markdown tables (docs/EVALUATION.md).",
    )
    evaluate.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="workdirs of `dist-al simulate` runs")
    evaluate.add_argument("--out", default="docs", help="where the figures and tables go (default docs)")

    select = _command(
        sub,
        "select",
        help="select the next batch from a Parquet pool on Ray (config file)",
    )
    _config_args(select)
    select.add_argument("--out", help="where to write the selection (Parquet); default: WORKDIR/selections/")
    select.add_argument("--no-progress", action="store_true", help="no progress bars")

    make_pool = _command(
        sub,
        "make-pool",
        help="write a Parquet pool from arrays, a CSV file, a folder of images, a CSV of texts, or a synthetic mixture",
        description="Writes part-NNNNN.parquet files under OUT (which must be empty, or --overwrite). Bad input (an "
        "unreadable image, an empty folder, a missing column, an empty text, a repeated id) is one line and nothing "
        "is written.",
    )
    make_pool.add_argument("out", help="pool directory or prefix (local path or fsspec URL)")
    source = make_pool.add_mutually_exclusive_group(required=True)
    source.add_argument("--synthetic", action="store_true", help="a labeled Gaussian mixture")
    source.add_argument("--features", help=".npy file with an (N, D) feature matrix")
    source.add_argument("--csv", help="CSV file: an id column, an optional label column, the rest are features")
    source.add_argument(
        "--images",
        metavar="DIR",
        help="local folder of images (.png, .jpg, ...): one sub-folder per class gives the label column, images only "
        "give an unlabeled pool; columns id, path, image or image_uri, label",
    )
    source.add_argument(
        "--text", metavar="FILE.csv", help="CSV of texts: an id column, a text column, an optional label column"
    )
    make_pool.add_argument("--labels", help=".npy file with N integer labels (with --features)")
    make_pool.add_argument("--rows", type=int, default=100_000, help="synthetic: rows (default 100000)")
    make_pool.add_argument("--classes", type=int, default=10, help="synthetic: classes (default 10)")
    make_pool.add_argument("--dim", type=int, default=64, help="synthetic: feature width (default 64)")
    make_pool.add_argument("--seed", type=int, default=0, help="synthetic: seed of the mixture and rows (default 0)")
    make_pool.add_argument(
        "--sample-seed",
        type=int,
        default=None,
        help="synthetic: draw other rows of the --seed mixture with this seed (a labeled eval set for a pool)",
    )
    make_pool.add_argument("--id-column", default="id", help="CSV: id column (default id)")
    make_pool.add_argument(
        "--label-column", default=None, help="CSV: label column (default none; with --text, integers or class names)"
    )
    make_pool.add_argument("--text-column", default="text", help="--text: text column (default text)")
    make_pool.add_argument(
        "--image-storage",
        choices=["bytes", "files"],
        default="bytes",
        help="--images: the encoded bytes in a binary column 'image' (default), or the files copied under "
        "OUT/_images/ with their URIs in 'image_uri'",
    )
    make_pool.add_argument(
        "--rows-per-file", type=int, default=None, help="rows per Parquet file (default 262144; images: ~512 MiB)"
    )
    make_pool.add_argument(
        "--rows-per-group",
        type=int,
        default=None,
        help="rows per row group, the unit workers read (default 16384; images: ~32 MiB, at most 1024 rows)",
    )
    make_pool.add_argument("--overwrite", action="store_true", help="replace an existing pool at OUT")

    for name, text in (
        ("round", "advance the current labeling round as far as it can go (safe from cron)"),
        ("export", "write the round's selection for labelers (Parquet, CSV, Label Studio tasks; push them)"),
        ("ingest", "add labels from a Label Studio JSON export or a CSV/Parquet file (id, label)"),
        ("train", "retrain on all labeled rows with Ray Train and record eval accuracy"),
        ("status", "rounds, their states, label counts and metrics, as a table"),
    ):
        cmd = _command(sub, name, help=text, description=text)
        _config_args(cmd)
        if name == "round":
            cmd.add_argument("--no-progress", action="store_true", help="no progress bars")
        if name == "ingest":
            cmd.add_argument("file", help="labels file or URI (.json Label Studio export, .csv, .parquet)")
            cmd.add_argument(
                "--class-names", help="comma-separated class names, in class-index order (default: labeling.classes)"
            )

    submit = _command(
        sub,
        "submit",
        help="run a dist-al command on a Ray cluster as a Ray Job (select, round, train, simulate, ...)",
        description="Submits `dist-al COMMAND --config FILE --set ...` as a Ray Job through the cluster's dashboard "
        "address. The working directory travels with the job (runtime_env working_dir), so the config and any model "
        "module it names are importable by the job's driver, its ShardWorkers and its Ray Train workers. Prints the "
        "submission id.",
    )
    _address_arg(submit)
    _config_args(submit)
    submit.add_argument("--working-dir", default=None, help="directory uploaded with the job (default: current)")
    submit.add_argument("--wait", action="store_true", help="stream the job's logs and exit with its status")
    submit.add_argument("--submission-id", default=None, help="job id (default: dist-al-COMMAND-UTCTIME-RANDOM)")
    submit.add_argument(
        "command_line",
        nargs=argparse.REMAINDER,
        metavar="-- COMMAND [ARGS]",
        help="the dist-al command to run, after `--`",
    )

    jobs = _command(sub, "jobs", help="list the dist-al jobs on a Ray cluster")
    _address_arg(jobs)
    jobs.add_argument("--all", action="store_true", help="every job on the cluster, not only dist-al's")

    logs = _command(sub, "logs", help="show the logs of a submitted job")
    _address_arg(logs)
    logs.add_argument("submission_id", help="the id `dist-al submit` printed")
    logs.add_argument("--follow", "-f", action="store_true", help="stream until the job ends; exit with its status")

    config = _command(
        sub,
        "config",
        help="print the resolved config (credentials redacted) or the JSON Schema of config files",
        description="`show` prints the config a command would run with: the file, then the --set overrides, with "
        "every default filled in and every credential shown as <redacted>. `schema` prints the JSON Schema that "
        "editors' YAML plugins use to complete and check config files.",
    )
    actions = config.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser(
        "show",
        help="the resolved config as YAML, credentials redacted",
        epilog=EXAMPLES["config"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _config_args(show)
    actions.add_parser(
        "schema",
        help="the JSON Schema of config files",
        epilog=EXAMPLES["config"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    bench = _command(
        sub,
        "bench",
        help="benchmarks that print ratios measured in one run",
    )
    bench.add_argument("suite", choices=["core", "distributed"], help="which benchmark suite")
    bench.add_argument(
        "args",
        nargs=argparse.REMAINDER,
        help="options of the suite: --quick, --device, --only ROW,... (see `dist-al bench SUITE --help`)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    level = args.global_log_level or getattr(args, "log_level", None) or "WARNING"
    logging.basicConfig(level=getattr(logging, level), format="%(levelname)s %(name)s: %(message)s")
    for name in _WIRE_LOGGERS:  # their DEBUG lines carry request headers (access key ids, signatures)
        logging.getLogger(name).setLevel(max(getattr(logging, level), logging.INFO))
    try:
        if args.command == "demo":
            from dist_al.experiments.demo import run_demo

            return run_demo(
                workdir=args.workdir,
                seeds=args.seeds,
                config=args.config,
                overrides=args.overrides,
                progress=not args.no_progress,
            )
        if args.command == "simulate":
            from dist_al.experiments.simulate import simulate_command

            return simulate_command(args)
        if args.command == "evaluate":
            from dist_al.experiments.report import evaluate_command

            return evaluate_command(args)
        if args.command in ("round", "export", "ingest", "train", "status"):
            from dist_al import commands

            return getattr(commands, f"{args.command}_command")(args)
        if args.command == "select":
            from dist_al.commands import select_command

            return select_command(args)
        if args.command == "make-pool":
            from dist_al.commands import make_pool_command

            return make_pool_command(args)
        if args.command == "config":
            from dist_al.commands import config_command

            return config_command(args)
        if args.command in ("submit", "jobs", "logs"):
            from dist_al import commands

            return getattr(commands, f"{args.command}_command")(args)
        if args.command == "bench":
            if args.suite == "core":
                from dist_al.bench.core import main as bench_main
            else:
                from dist_al.bench.distributed import main as bench_main
            return bench_main(args.args)
    except UserError as err:  # a mistake the user can fix (also when a Ray worker found it): one line, exit 2
        if args.debug:
            raise
        print(f"dist-al: error: {_remote_cause(err)}", file=sys.stderr)
        return 2
    except Exception as err:
        if args.debug:
            raise
        if _is_environment_failure(err):
            print(f"dist-al: error: {_first_line(err)}", file=sys.stderr)
        else:
            print(_internal_error_line(err), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
