"""Data, starting points and the scikit-learn reference shared by tests/gmm/test_distributed.py, its
subprocess worker and tests/gmm/test_streaming.py."""

import warnings

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


def sklearn_reference(X: np.ndarray, covariance_type: str, n_iter: int,
                      tol: float = 0.0):
    """scikit-learn's EM from :func:`params_init`: exactly ``n_iter`` iterations if ``tol=0``."""
    # imported here: the subprocess workers share this module and never need scikit-learn
    from sklearn.mixture import GaussianMixture as SKGaussianMixture

    p = params_init(X, covariance_type)
    covs = np.asarray(p.covariance.covariances)
    prec = 1.0 / covs if covariance_type in ("diag", "spherical") else np.linalg.inv(covs)
    sk = SKGaussianMixture(3, covariance_type=covariance_type, max_iter=n_iter, tol=tol,
                           reg_covar=1e-6, weights_init=np.asarray(p.weights),
                           means_init=np.asarray(p.means), precisions_init=prec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: tol=0 never converges
        return sk.fit(X)
