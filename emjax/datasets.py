"""Bundled data sets: small enough to ship in the wheel, made with a fixed seed."""

from __future__ import annotations

from importlib import resources

import numpy as np


def default_path() -> str:
    """Path of the bundled default data set (CSV with a header, 600 rows, 2 columns)."""
    return str(resources.files("emjax") / "data" / "default.csv")


def load_default() -> np.ndarray:
    """The bundled default data set: 600 points from 3 correlated 2-D Gaussians (float64)."""
    return np.loadtxt(default_path(), delimiter=",", skiprows=1)
