"""What the CLI commands do, once their arguments are parsed."""

from __future__ import annotations

import json
import sys

import numpy as np

from dist_al.core.errors import UserError


def select_command(args) -> int:
    from dist_al.config import load_config

    cfg = load_config(args.config, args.overrides)  # a bad config fails here, before torch and Ray are imported
    from dist_al.data.storage import write_table_atomic
    from dist_al.runtime.selection import run_selection

    result = run_selection(cfg, progress=not args.no_progress)
    sel = cfg.selection
    strategy = sel.strategy
    # named by what determines it, so running the same selection again rewrites the same bytes
    out = args.out or f"{cfg.workdir.rstrip('/')}/selections/{strategy}-budget{sel.budget}-seed{sel.seed}.parquet"
    write_table_atomic(out, result.table, cfg.pool.storage_options)
    from dist_al.inputs.pipeline import skipped_note

    print(
        f"selected {result.table.num_rows} rows with {strategy} on {result.workers} workers "
        f"(embedding {result.seconds_embed:.1f}s, selection {result.seconds_select:.1f}s) -> {out}"
        f"{skipped_note(result.skipped)}"
    )
    return 0


def config_command(args) -> int:
    """``config show``: the resolved config as YAML, credentials redacted; ``config schema``: its JSON Schema."""
    if args.action == "schema":
        from dist_al.config import schema

        print(json.dumps(schema(), indent=2))
        return 0
    from dist_al.config import load_config

    print(load_config(args.config, args.overrides).to_yaml(), end="")
    return 0


def make_pool_command(args) -> int:
    if args.images:
        return _make_image_pool(args)
    if args.text:
        return _make_text_pool(args)
    from dist_al.data import writer

    labels: np.ndarray | None = None
    if args.synthetic:
        from dist_al.data.synthetic import gaussian_mixture

        points, classes = gaussian_mixture(
            args.rows, args.classes, args.dim, seed=args.seed, sample_seed=args.sample_seed
        )
        feats, labels = points.numpy(), classes.numpy()
        ids = np.arange(len(feats), dtype=np.int64)
    elif args.features:
        feats = writer.read_npy(args.features, "--features")
        if feats.ndim != 2:
            raise UserError(f"--features {args.features} must hold a 2-D array, got shape {feats.shape}")
        if args.labels:
            labels = writer.read_npy(args.labels, "--labels")
        ids = np.arange(len(feats), dtype=np.int64)
    else:
        ids, feats, labels = writer.read_vector_csv(args.csv, args.id_column, args.label_column)
    files = writer.write_pool(
        args.out,
        ids,
        feats,
        labels,
        rows_per_file=args.rows_per_file or writer.ROWS_PER_FILE,
        rows_per_group=args.rows_per_group or writer.ROWS_PER_GROUP,
        overwrite=args.overwrite,
    )
    print(
        f"wrote {len(feats)} rows x {feats.shape[1]} features"
        f"{'' if labels is None else ' with labels'} in {len(files)} file(s) to {args.out}",
        file=sys.stdout,
    )
    return 0


def _make_image_pool(args) -> int:
    from dist_al.data import writer

    folder = writer.scan_image_folder(args.images)
    writer.check_images(folder)
    files = writer.write_image_pool(
        args.out,
        folder,
        storage=args.image_storage,
        rows_per_file=args.rows_per_file,
        rows_per_group=args.rows_per_group,
        overwrite=args.overwrite,
    )
    column = "image" if args.image_storage == "bytes" else "image_uri"
    print(
        f"wrote {len(folder.files)} images ({'encoded bytes' if args.image_storage == 'bytes' else 'URIs'} in column "
        f"{column!r}){_classes(folder.class_names)} in {len(files)} file(s) to {args.out}"
        + (f"; skipped {len(folder.skipped)} file(s) that are not images" if folder.skipped else "")
    )
    return 0


def _make_text_pool(args) -> int:
    from dist_al.data import writer

    rows = writer.read_text_csv(args.text, args.id_column, args.text_column, args.label_column)
    files = writer.write_text_pool(
        args.out,
        rows,
        rows_per_file=args.rows_per_file or writer.ROWS_PER_FILE,
        rows_per_group=args.rows_per_group or writer.ROWS_PER_GROUP,
        overwrite=args.overwrite,
    )
    labels = "" if rows.labels is None else _classes(rows.class_names) if rows.class_names else " with labels"
    print(f"wrote {len(rows.ids)} texts (column 'text'){labels} in {len(files)} file(s) to {args.out}")
    return 0


def _classes(names, shown: int = 10) -> str:
    """' with labels 0=cat, 1=dog' (the first ``shown`` of them), or '' for an unlabeled pool."""
    if not names:
        return ""
    listed = ", ".join(f"{i}={name}" for i, name in enumerate(names[:shown]))
    return f" with labels {listed}{f', ... ({len(names)} classes)' if len(names) > shown else ''}"


def _rounds_config(args):
    """The config, loaded before the command imports torch and Ray, so a bad one fails in a fraction of a second."""
    from dist_al.config import load_config

    return load_config(args.config, args.overrides)


EXIT_LOCKED = 75  # sysexits EX_TEMPFAIL: another dist-al holds the workdir; the next tick will try again
EXIT_LOCK_LOST = 76  # this one lost the workdir's lock midway and stopped before its next write; the next tick resumes
EXIT_STORAGE = 1


def _locked(cfg, command: str, step) -> int:
    """Runs a mutating step under the workdir lock; a held or lost lock or a store that stays down is one line."""
    from dist_al.campaign.labelstudio import LabelStudioUnavailable
    from dist_al.campaign.lock import LockLost, WorkdirLocked
    from dist_al.campaign.workdir import workdir_lock
    from dist_al.data.storage import StorageUnavailable

    try:
        with workdir_lock(cfg.workdir, cfg.pool.storage_options, command):
            print(step())
    except WorkdirLocked as err:
        print(f"dist-al: {err}", file=sys.stderr)
        return EXIT_LOCKED
    except LockLost as err:
        print(f"dist-al: error: {err}; nothing more was written; the next tick resumes", file=sys.stderr)
        return EXIT_LOCK_LOST
    except StorageUnavailable as err:
        print(f"dist-al: error: {err}; the workdir was left as it was", file=sys.stderr)
        return EXIT_STORAGE
    except LabelStudioUnavailable as err:  # what Label Studio confirmed is recorded, nothing else
        print(f"dist-al: error: {err}; the next tick carries on", file=sys.stderr)
        return EXIT_STORAGE
    return 0


def round_command(args) -> int:
    cfg = _rounds_config(args)
    from dist_al.campaign.rounds import advance

    return _locked(cfg, "round", lambda: advance(cfg, progress=not args.no_progress))


def _workdir_step(args, step: str) -> int:
    cfg = _rounds_config(args)
    from dist_al.campaign import rounds
    from dist_al.campaign.workdir import open_workdir

    return _locked(cfg, step.removesuffix("_step"), lambda: getattr(rounds, step)(cfg, open_workdir(cfg, create=False)))


def export_command(args) -> int:
    return _workdir_step(args, "export_step")


def ingest_command(args) -> int:
    class_names = [c.strip() for c in args.class_names.split(",")] if args.class_names else None
    cfg = _rounds_config(args)
    from dist_al.campaign.rounds import ingest

    return _locked(cfg, "ingest", lambda: ingest(cfg, args.file, class_names))


def train_command(args) -> int:
    return _workdir_step(args, "train_step")


def status_command(args) -> int:
    cfg = _rounds_config(args)
    from dist_al.campaign.rounds import status_table

    print(status_table(cfg))
    return 0


def submit_command(args) -> int:
    from dist_al.runtime.jobs import submit

    command_line = args.command_line[1:] if args.command_line[:1] == ["--"] else args.command_line
    if not args.config:
        raise UserError("submit needs --config FILE (it travels with the job)")
    return submit(
        address=args.address,
        config=args.config,
        overrides=args.overrides,
        command_line=command_line,
        working_dir=args.working_dir,
        wait=args.wait,
        job_id=args.submission_id,
    )


def jobs_command(args) -> int:
    from dist_al.runtime.jobs import list_jobs

    print(list_jobs(args.address, show_all=args.all))
    return 0


def logs_command(args) -> int:
    from dist_al.runtime.jobs import show_logs

    return show_logs(args.address, args.submission_id, follow_logs=args.follow)
