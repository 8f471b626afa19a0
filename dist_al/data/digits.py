"""scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes), read from the file the package ships.

The same arrays as ``sklearn.datasets.load_digits(return_X_y=True)`` without importing scikit-learn, whose import
alone takes 3-4 s of the demo's minute.
"""

from __future__ import annotations

import gzip
import importlib.util
import os

import numpy as np

from dist_al.core.errors import UserError

__all__ = ["digit_images", "load_digits"]


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(x, y): x float64 (1797, 64), pixel intensities 0..16; y int64 (1797,), the digit."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise UserError("the digits data set ships in scikit-learn: pip install scikit-learn")
    path = os.path.join(os.path.dirname(spec.origin), "datasets", "data", "digits.csv.gz")
    with gzip.open(path, "rt") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1], data[:, -1].astype(np.int64)


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """(images, y): the same digits as (1797, 8, 8) float64 images, intensities 0..16 (scikit-learn's ``.images``)."""
    x, y = load_digits()
    return x.reshape(-1, 8, 8), y
