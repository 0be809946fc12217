"""Random, well-conditioned Gaussian-mixture parameters shared by the GMM tests."""

import numpy as np

from emjax import gmm


def spd(rng, d):
    """A random ``(d, d)`` symmetric positive-definite matrix (eigenvalues above 0.5)."""
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.5 * np.eye(d)


def random_params(rng, cov_type, k, d):
    """Random mixture parameters (float64 :class:`emjax.gmm.GMMParams`)."""
    weights = rng.dirichlet(np.full(k, 3.0))
    means = rng.normal(size=(k, d)) * 1.5
    covs = {
        "full": lambda: np.stack([spd(rng, d) for _ in range(k)]),
        "tied": lambda: spd(rng, d),
        "diag": lambda: rng.uniform(0.5, 2.0, size=(k, d)),
        "spherical": lambda: rng.uniform(0.5, 2.0, size=(k,)),
    }[cov_type]()
    return gmm.make_params(weights, means, covs, cov_type)
