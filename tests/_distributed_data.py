"""Data and starting points shared by tests/test_distributed.py and its subprocess worker."""

import numpy as np

from emjax import gmm

COV_TYPES = ("full", "tied", "diag", "spherical")
N_ITER_FIXED = 8  # EM iterations run with tol=0 when comparing parameters
MAX_ITER = 200


def data(n: int) -> np.ndarray:
    """Three overlapping 3-D clusters, ``(n, 3)`` float64 (deterministic)."""
    rng = np.random.default_rng(7)
    centres = np.array([[0.0, 0.0, 0.0], [3.0, 3.0, 0.0], [-2.5, 2.0, 1.5]])
    scales = np.array([1.0, 0.8, 0.6])
    labels = np.arange(n) % 3
    return centres[labels] + scales[labels, None] * rng.normal(size=(n, 3))


def params_init(X: np.ndarray, covariance_type: str) -> gmm.GMMParams:
    """A fixed, deliberately rough start: three data rows as means, unit covariances."""
    k, d = 3, X.shape[1]
    covs = {"full": np.tile(np.eye(d), (k, 1, 1)), "tied": np.eye(d),
            "diag": np.ones((k, d)), "spherical": np.ones(k)}[covariance_type]
    return gmm.make_params(np.full(k, 1.0 / k), X[[0, 1, 2]] + 0.5, covs, covariance_type)
