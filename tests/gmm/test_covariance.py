"""Covariance representations (emjax.gmm.covariance) against NumPy and scikit-learn: round trips,
log-determinants, Mahalanobis distances, parameter counts."""

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.mixture._gaussian_mixture import _compute_precision_cholesky

from emjax.gmm import covariance as cov_lib
from tests.conftest import COV_TYPES, DTYPES


def spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.5 * np.eye(d)


def random_covariances(rng, k, d, cov_type):
    """Well-conditioned covariances of ``cov_type`` in scikit-learn's shapes (float64)."""
    return {
        "full": lambda: np.stack([spd(rng, d) for _ in range(k)]),
        "tied": lambda: spd(rng, d),
        "diag": lambda: rng.uniform(0.3, 2.0, size=(k, d)),
        "spherical": lambda: rng.uniform(0.3, 2.0, size=(k,)),
    }[cov_type]()


def dense(covs, cov_type, k, d):
    return {
        "full": lambda: covs,
        "tied": lambda: np.broadcast_to(covs, (k, d, d)),
        "diag": lambda: np.stack([np.diag(c) for c in covs]),
        "spherical": lambda: covs[:, None, None] * np.eye(d),
    }[cov_type]()


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_round_trip_structure_and_shapes(cov_type):
    rng = np.random.default_rng(7)
    k, d = 3, 4
    c = random_covariances(rng, k, d, cov_type)
    assert c.shape == cov_lib.covariance_shape(cov_type, k, d)
    a = cov_lib.from_covariances(cov_type, jnp.asarray(c))
    assert isinstance(a, cov_lib.COVARIANCE_CLASSES[cov_type])
    assert cov_lib.covariance_type_of(a) == cov_type
    b = cov_lib.from_precisions_cholesky(cov_type, a.precisions_cholesky)
    np.testing.assert_allclose(b.covariances, c, rtol=1e-10)
    np.testing.assert_allclose(a.precisions_cholesky, _compute_precision_cholesky(c, cov_type),
                               rtol=1e-10)
    np.testing.assert_allclose(cov_lib.as_full(a, k, d), dense(c, cov_type, k, d), rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_log_det_and_mahalanobis_match_numpy(cov_type, dtype):
    rng = np.random.default_rng(3)
    k, d, n = 3, 4, 20
    c = random_covariances(rng, k, d, cov_type)
    full = dense(c, cov_type, k, d)
    X, means = rng.normal(size=(n, d)), rng.normal(size=(k, d))
    cov = cov_lib.from_covariances(cov_type, jnp.asarray(c, dtype))
    logdet = np.asarray(cov_lib.log_det_precision_cholesky(cov, d))
    maha = np.asarray(cov_lib.mahalanobis_squared(cov, jnp.asarray(X, dtype),
                                                  jnp.asarray(means, dtype)))
    assert maha.dtype == dtype and maha.shape == (n, k)
    rtol = 1e-4 if dtype == np.float32 else 1e-10
    # log det of the precision Cholesky factor = -1/2 log det(Sigma)
    np.testing.assert_allclose(logdet * np.ones(k), -0.5 * np.linalg.slogdet(full)[1], rtol=rtol)
    diff = X[:, None, :] - means[None]
    ref = np.einsum("nki,kij,nkj->nk", diff, np.linalg.inv(full), diff)
    np.testing.assert_allclose(maha, ref, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("cov_type, expected", [
    ("full", 3 * 4 * 5 // 2), ("tied", 4 * 5 // 2), ("diag", 3 * 4), ("spherical", 3)])
def test_parameter_counts(cov_type, expected):
    assert cov_lib.n_covariance_parameters(cov_type, 3, 4) == expected
