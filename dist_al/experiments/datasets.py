"""The evaluation's data sets (docs/EVALUATION.md): a pool and a disjoint held-out test split each, as Parquet.

All three are available offline, and the same bytes come out on every run:

* ``digits``: scikit-learn's bundled handwritten digits (1,797 rows, 64 pixel
  features scaled to [0, 1], 10 classes);
* ``weather``: the Seattle daily weather records shipped in the
  ``vega_datasets`` wheel (1,461 days, 2012-2015; features: precipitation,
  max/min temperature, wind and the day of year as sine/cosine, standardised
  with the pool's mean and std; 5 classes: sun, fog, rain, drizzle, snow;
  ``pip install dist-al[eval]``);
* ``synthetic``: ``dist_al.data.synthetic.gaussian_mixture`` at ``--synthetic-rows``;
* ``digits-images``: the digits again, as image files: each 8x8 grayscale
  image a PNG under ``images/{pool,test}/DIGIT/INDEX.png``, made into a pool
  exactly as ``dist-al make-pool --images DIR --image-storage files`` makes
  one (the files copied under the pool, a manifest of their URIs, labels from
  the folders), so a model reads them through ``dist_al.inputs:images``.

Each test split is stratified with a fixed seed and never overlaps its pool
(ids are the rows' indices in the source; for ``digits-images``, the images'
positions in path order, as make-pool numbers them).  Run::

    python -m dist_al.experiments.datasets ./eval-data            # all three
    python -m dist_al.experiments.datasets ./eval-data --only digits
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from dist_al.core.errors import UserError

__all__ = ["DATASETS", "load", "write_dataset"]

SPLIT_SEED = 0
# the "synthetic" data set: a Gaussian mixture, its held-out test rows after the pool's
SYNTHETIC_CLASSES, SYNTHETIC_DIM, SYNTHETIC_SEPARATION, SYNTHETIC_TEST_ROWS = 10, 32, 1.5, 2000


def _digits() -> tuple[np.ndarray, np.ndarray, int]:
    from dist_al.data.digits import load_digits

    x, y = load_digits()
    return (x / 16.0).astype(np.float32), y.astype(np.int64), 500


def _weather() -> tuple[np.ndarray, np.ndarray, int]:
    try:
        from vega_datasets import local_data
    except ImportError:
        raise UserError(
            "the weather data set ships in the vega_datasets package: pip install 'dist-al[eval]' (or vega_datasets)"
        ) from None
    df = local_data.seattle_weather()
    day = df["date"].dt.day_of_year.to_numpy() / 365.25 * 2 * np.pi
    x = np.column_stack(
        [df[c].to_numpy(dtype=np.float64) for c in ("precipitation", "temp_max", "temp_min", "wind")]
        + [np.sin(day), np.cos(day)]
    )
    classes = sorted(df["weather"].unique())
    y = np.searchsorted(classes, df["weather"].to_numpy()).astype(np.int64)
    return x, y, 400


def _synthetic(rows: int) -> tuple[np.ndarray, np.ndarray, int]:
    from dist_al.data.synthetic import gaussian_mixture

    x, y = gaussian_mixture(
        rows + SYNTHETIC_TEST_ROWS, SYNTHETIC_CLASSES, SYNTHETIC_DIM, seed=SPLIT_SEED, separation=SYNTHETIC_SEPARATION
    )
    return x.numpy(), y.numpy().astype(np.int64), SYNTHETIC_TEST_ROWS


DATASETS = ("digits", "weather", "synthetic", "digits-images")


def load(name: str, synthetic_rows: int = 20_000) -> tuple[np.ndarray, np.ndarray, int]:
    """(features, labels, test rows) of a data set by name."""
    if name in ("digits", "digits-images"):
        return _digits()
    if name == "weather":
        return _weather()
    if name == "synthetic":
        return _synthetic(synthetic_rows)
    raise UserError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")


def split(y: np.ndarray, test_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(pool indices, test indices): a stratified split with a fixed seed, both sorted."""
    from sklearn.model_selection import train_test_split

    pool, test = train_test_split(np.arange(len(y)), test_size=test_rows, stratify=y, random_state=SPLIT_SEED)
    return np.sort(pool), np.sort(test)


def write_dataset(out: str, name: str, synthetic_rows: int = 20_000) -> dict:
    """Writes {out}/{name}/pool and {out}/{name}/test (replacing them); returns a summary."""
    from dist_al.data.writer import write_pool

    x, y, test_rows = load(name, synthetic_rows)
    pool, test = split(y, test_rows)
    if name == "weather":  # standardise with the pool's statistics only
        mean, std = x[pool].mean(0), x[pool].std(0)
        x = ((x - mean) / std).astype(np.float32)
    base = os.path.join(out, name)
    group = max(64, len(pool) // 8)  # several row groups, so the pool splits over the workers
    if name == "digits-images":
        for part, rows in (("pool", pool), ("test", test)):
            _write_image_files(
                os.path.join(base, part), os.path.join(base, "images", part), x[rows], y[rows], rows, group
            )
        return {"name": name, "pool": len(pool), "test": len(test), "features": "8x8 PNG", "classes": int(y.max()) + 1}
    write_pool(os.path.join(base, "pool"), pool, x[pool], y[pool], rows_per_group=group, overwrite=True)
    write_pool(os.path.join(base, "test"), test, x[test], y[test], overwrite=True)
    return {"name": name, "pool": len(pool), "test": len(test), "features": x.shape[1], "classes": int(y.max()) + 1}


def _write_image_files(uri: str, folder: str, x: np.ndarray, y: np.ndarray, index: np.ndarray, group: int) -> None:
    """Each row of ``x`` (64 values in [0, 1]) as folder/LABEL/INDEX.png, then the pool make-pool makes of them."""
    import shutil

    from PIL import Image

    from dist_al.data.writer import check_images, scan_image_folder, write_image_pool

    shutil.rmtree(folder, ignore_errors=True)
    for pixels, label, i in zip(x, y, index):
        os.makedirs(os.path.join(folder, str(label)), exist_ok=True)
        image = Image.fromarray(np.round(pixels.reshape(8, 8) * 255).astype(np.uint8), "L")
        image.save(os.path.join(folder, str(label), f"{i:04d}.png"))
    images = scan_image_folder(folder)
    check_images(images)
    write_image_pool(uri, images, storage="files", rows_per_group=group, overwrite=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dist_al.experiments.datasets", description=__doc__.split("\n")[0])
    parser.add_argument("out", help="directory for {dataset}/pool and {dataset}/test")
    parser.add_argument("--only", default=",".join(DATASETS), help="comma-separated data sets (default: all)")
    parser.add_argument("--synthetic-rows", type=int, default=20_000, help="synthetic pool rows (default 20000)")
    args = parser.parse_args(argv)
    try:
        for name in [n.strip() for n in args.only.split(",") if n.strip()]:
            info = write_dataset(args.out, name, args.synthetic_rows)
            print(
                f"{name}: {info['pool']} pool rows, {info['test']} test rows, {info['features']} features, "
                f"{info['classes']} classes -> {os.path.join(args.out, name)}"
            )
    except UserError as err:
        print(f"dist_al.experiments.datasets: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
