"""Covariance representations (emjax.gmm.covariance) against NumPy and scikit-learn: round trips,
log-determinants, Mahalanobis distances, parameter counts, the jitter of indefinite matrices and
the blocked triangular inverse."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.mixture._gaussian_mixture import _compute_precision_cholesky

from emjax.gmm import covariance as cov_lib
from tests.conftest import COV_TYPES, DTYPES
from tests.gmm._random import spd


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


def indefinite(rng, k, d, dtype):
    """``k`` symmetric ``d x d`` matrices with one eigenvalue of ``-0.3`` times the retry's
    jitter (a covariance of fewer samples than features, after rounding): not positive definite
    in ``dtype``, but within the jitter of ``relative_jitter * mean(diag)``."""
    out = []
    rel = cov_lib.relative_jitter(dtype, d)
    for _ in range(k):
        q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        lam = rng.uniform(0.5, 2.0, size=d)
        lam[0] = -0.3 * rel * lam.mean()
        out.append((q * lam) @ q.T)
    return np.stack(out).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_positive_definite_covariance_is_regularised_and_flagged(dtype):
    """A full covariance that is not positive definite gets a diagonal jitter; the stored
    covariance is then the SPD matrix that was factorised (its inverse is U U^T), the flag is
    set, and an SPD input is left bit for bit as it was, with the flag clear."""
    rng = np.random.default_rng(11)
    d = 5
    bad = indefinite(rng, 2, d, dtype)
    assert np.linalg.eigvalsh(bad.astype(np.float64)).min() < 0
    # One matrix of the batch is SPD: it keeps its value.
    good = np.asarray(spd(rng, d), dtype)
    covs = np.stack([bad[0], good, bad[1]])
    cov, flag = cov_lib.from_covariances_checked("full", covs)
    assert bool(flag)
    stored = np.asarray(cov.covariances, np.float64)
    u = np.asarray(cov.precisions_cholesky, np.float64)
    assert np.all(np.isfinite(u))
    assert np.linalg.eigvalsh(stored).min(axis=1).min() > 0
    # inv(U U^T) = U^-T U^-1 reproduces the stored matrix to a backward error of a few d eps
    # (a forward check of stored @ U U^T = I would measure the condition number instead).
    eps = np.finfo(dtype).eps
    for j in range(3):
        ui = np.linalg.inv(u[j])
        err = np.abs(ui.T @ ui - stored[j]).max() / np.abs(stored[j]).max()
        assert err < 10 * d * eps, (j, err)
    sym = 0.5 * (covs + np.swapaxes(covs, 1, 2)).astype(np.float64)
    for j in (0, 2):  # the documented jitter: relative_jitter * mean(diag) (+ sqrt(tiny))
        jit = cov_lib.relative_jitter(dtype, d) * np.trace(sym[j]) / d
        np.testing.assert_allclose(stored[j] - sym[j], jit * np.eye(d),
                                   atol=1e-3 * jit + 2 * eps * np.abs(sym[j]).max())
    np.testing.assert_array_equal(np.asarray(cov.covariances)[1], np.asarray(sym[1], dtype))
    kept, flag = cov_lib.from_covariances_checked("full", good[None])
    assert not bool(flag)
    np.testing.assert_array_equal(np.asarray(kept.covariances)[0], good)


# Jitted: one program per shape instead of the recursion's many eagerly dispatched operations.
_inverse_jvp = jax.jit(lambda L, dL: jax.jvp(cov_lib.lower_triangular_inverse, (L,), (dL,)))
_blocked_precisions_cholesky = jax.jit(lambda c: cov_lib.from_covariances_checked(
    "full", c, blocked_inverse=True)[0].precisions_cholesky)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", (1, 5, 24, 33))
def test_lower_triangular_inverse(dtype, d):
    """The level-wise block inverse against NumPy's, and its derivative against the identity
    ``d inv(L) = -inv(L) dL inv(L)``; the precision factors built with it (``blocked_inverse``)
    equal scikit-learn's."""
    rng = np.random.default_rng(d)
    a = rng.normal(size=(2, 3 * d, d))
    cov = a.transpose(0, 2, 1) @ a / (3 * d) + 0.1 * np.eye(d)
    L = np.linalg.cholesky(cov)
    dL = np.tril(rng.normal(size=L.shape))
    got, tangent = _inverse_jvp(jnp.asarray(L, dtype), jnp.asarray(dL, dtype))
    got = np.asarray(got, np.float64)
    ref = np.linalg.inv(L)
    tol = 1e-4 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.abs(ref).max())
    assert np.all(np.triu(got, 1) == 0)
    np.testing.assert_allclose(tangent, -ref @ dL @ ref, rtol=10 * tol,
                               atol=10 * tol * np.abs(ref @ dL @ ref).max())
    if d >= 24:
        pc = _blocked_precisions_cholesky(jnp.asarray(cov, dtype))
        np.testing.assert_allclose(pc, _compute_precision_cholesky(cov, "full"),
                                   rtol=10 * tol, atol=10 * tol)


_loop_precisions = jax.jit(lambda c: cov_lib.from_covariances_checked(
    "full", c, blocked_inverse=True, lapack=False))


@pytest.mark.parametrize("dtype", DTYPES)
def test_loop_cholesky_without_lapack(dtype):
    """The column loop's factors and inverses equal NumPy's; the precision factors built with
    it (``lapack=False``) equal scikit-learn's, and an indefinite matrix is regularised as the
    LAPACK path regularises it."""
    rng = np.random.default_rng(3)
    d = 6
    cov = np.stack([spd(rng, d) for _ in range(3)])
    L, inv = jax.jit(cov_lib.loop_cholesky)(jnp.asarray(cov, dtype))
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(L, np.linalg.cholesky(cov), rtol=tol, atol=tol)
    np.testing.assert_allclose(inv, np.linalg.inv(np.linalg.cholesky(cov)), rtol=tol, atol=tol)
    got, flag = _loop_precisions(jnp.asarray(cov, dtype))
    assert not bool(flag)
    np.testing.assert_allclose(got.precisions_cholesky, _compute_precision_cholesky(cov, "full"),
                               rtol=10 * tol, atol=10 * tol)
    covs = np.stack([indefinite(rng, 1, d, dtype)[0], np.asarray(cov[0], dtype)])
    loop, loop_flag = _loop_precisions(jnp.asarray(covs))
    ref, ref_flag = cov_lib.from_covariances_checked("full", jnp.asarray(covs))
    assert bool(loop_flag) and bool(ref_flag)
    np.testing.assert_allclose(loop.covariances, ref.covariances, rtol=tol, atol=tol)
    np.testing.assert_allclose(loop.precisions_cholesky, ref.precisions_cholesky,
                               rtol=100 * tol, atol=100 * tol)
