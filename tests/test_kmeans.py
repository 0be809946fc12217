"""Chunked k-means and initialisation against dense references (NumPy Lloyd/assignment, the dense
M-step on a centred copy, the one-block computation), with blocks that do and do not divide N."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emjax import gmm, kmeans
from emjax.gmm import fitting
from tests.conftest import DTYPES

N, D, K = 300, 3, 4
CHUNKS = (100, 64)  # divides N / leaves a remainder block

# Jitted: one program per configuration instead of many eagerly dispatched operations.
kmeans_plusplus = jax.jit(kmeans.kmeans_plusplus, static_argnums=2,
                          static_argnames=("chunk_size",))
lloyd = jax.jit(kmeans.lloyd, static_argnums=2, static_argnames=("chunk_size",))
assign = jax.jit(kmeans.assign, static_argnames=("chunk_size",))


def _data(dtype, offset=0.0):
    rng = np.random.default_rng(0)
    means = rng.normal(scale=4.0, size=(K, D))
    X = means[rng.integers(0, K, N)] + rng.normal(size=(N, D)) + offset
    w = rng.uniform(0.5, 2.0, N)
    return X.astype(dtype), w.astype(dtype)


def _np_lloyd(X, c, n_iter, w):
    X, c, w = (np.array(a, np.float64) for a in (X, c, w))
    for _ in range(n_iter):
        lab = np.argmin(((X[:, None] - c[None]) ** 2).sum(-1), 1)
        for k in range(len(c)):
            if w[lab == k].sum() > 0:
                c[k] = (w[lab == k, None] * X[lab == k]).sum(0) / w[lab == k].sum()
    return c


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("chunk", CHUNKS)
def test_chunked_kmeans_equals_dense_reference(dtype, chunk):
    X, w = _data(dtype, offset=50.0)
    c = X.mean(0)
    Xc = jnp.asarray(X - c)
    key = jax.random.key(1)
    tol = 2e-4 if dtype == np.float32 else 1e-10
    for sw in (None, jnp.asarray(w)):
        # k-means++ on X with the centre subtracted inside the blocks = on a centred copy in one
        # block (the dense (n, trials) form).
        cen, idx = kmeans_plusplus(key, jnp.asarray(X), K, sw, center=jnp.asarray(c),
                                   chunk_size=chunk)
        cen0, idx0 = kmeans_plusplus(key, Xc, K, sw, chunk_size=N)
        np.testing.assert_array_equal(idx, idx0)
        assert len(set(np.asarray(idx).tolist())) == K
        np.testing.assert_allclose(cen, np.asarray(Xc)[np.asarray(idx)], rtol=tol, atol=tol)
        assert cen.dtype == dtype
        # Lloyd against NumPy's.
        ww = np.ones(N) if sw is None else w
        lc = lloyd(jnp.asarray(X), cen0, 5, sw, center=jnp.asarray(c), chunk_size=chunk)
        np.testing.assert_allclose(lc, _np_lloyd(Xc, cen0, 5, ww), rtol=tol, atol=tol * 10)
        lab = assign(jnp.asarray(X), lc, center=jnp.asarray(c), chunk_size=chunk)
        np.testing.assert_array_equal(
            lab, np.argmin(((np.asarray(Xc)[:, None] - np.asarray(lc)[None]) ** 2).sum(-1), 1))


# Each initialisation in one dtype (both dtypes covered): every case is its own compiled program.
@pytest.mark.parametrize("init, chunk, cov_type, dtype", [
    ("kmeans", 100, "full", np.float64), ("k-means++", 64, "diag", np.float32),
    ("random_from_data", 100, "tied", np.float64), ("random", 64, "full", np.float32)])
def test_chunked_init_params_equals_dense_m_step(init, chunk, cov_type, dtype):
    X, w = _data(dtype)
    c = X.mean(0)
    Xc = jnp.asarray(X - c)
    key = jax.random.key(2)
    tol = 2e-4 if dtype == np.float32 else 1e-9
    sw = jnp.asarray(w) if init == "kmeans" else None
    p = jax.jit(functools.partial(
        fitting.init_params, n_components=K, covariance_type=cov_type, init_params=init,
        n_lloyd=3, chunk_size=chunk))(key, jnp.asarray(X), sample_weight=sw,
                                      center=jnp.asarray(c))
    if init == "random":
        # The dense responsibilities built from the same per-row draws.
        r = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i), (K,), dtype))(
            jnp.arange(N))
        resp = r / jnp.sum(r, axis=1, keepdims=True)
    else:
        # Centres from the same seeding (checked above), then a dense one-hot M-step.
        resp = jax.jit(functools.partial(fitting.responsibilities_init, n_components=K,
                                         init_params=init, n_lloyd=3, chunk_size=N))(
            key, Xc, sample_weight=sw)
    ref = jax.jit(functools.partial(gmm.m_step, covariance_type=cov_type))(
        resp, Xc, sample_weight=sw)
    assert p.means.dtype == dtype
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=tol, atol=tol), p, ref)


def test_single_block_init_is_the_dense_computation_and_vmaps():
    X, _ = _data(np.float64)
    Xj = jnp.asarray(X)
    keys = jax.random.split(jax.random.key(3), 3)
    # One block covering X: the dense M-step of the dense responsibilities (one program, not
    # some hundred op-by-op ones).
    p, ref = jax.jit(lambda k: (fitting.init_params(k, Xj, K),
                                gmm.m_step(fitting.responsibilities_init(k, Xj, K), Xj)))(keys[0])
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12), p, ref)
    # Vmapped over restart keys (as fit does), chunked: equal to one call per key.
    init = jax.jit(lambda k: fitting.init_params(k, Xj, K, chunk_size=64))
    batched = jax.jit(jax.vmap(init))(keys)
    for i in range(3):
        one = init(keys[i])
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(a[i], b, rtol=1e-12, atol=1e-12),
            batched, one)


def test_kmeans_plusplus_on_fewer_rows_than_centres_is_an_error():
    """As scikit-learn's: it would otherwise return repeated rows as centres, silently."""
    X, _ = _data(np.float64)
    with pytest.raises(ValueError, match=r"n_clusters=5 must be <= n_samples=3 .*\(3, 3\)"):
        kmeans.kmeans_plusplus(jax.random.key(0), X[:3], 5)


def test_concrete_calls_run_one_compiled_program_per_shape():
    """On NumPy data k-means++ and Lloyd run compiled, once per shape (op by op, their loops
    compiled again at every call), equal to the jitted functions."""
    X, w = _data(np.float64)
    cen, idx = kmeans.kmeans_plusplus(jax.random.key(1), X, K, w)
    programs = kmeans._kmeans_plusplus_compiled._cache_size()
    cen2, _ = kmeans.kmeans_plusplus(jax.random.key(2), X, K, w)
    assert kmeans._kmeans_plusplus_compiled._cache_size() == programs
    ref, ref_idx = kmeans_plusplus(jax.random.key(1), jnp.asarray(X), K, jnp.asarray(w))
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(cen, ref, rtol=1e-12)
    out = kmeans.lloyd(X, cen, 3, w)
    programs = kmeans._lloyd_compiled._cache_size()
    kmeans.lloyd(X, cen2, 3, w)
    assert kmeans._lloyd_compiled._cache_size() == programs
    np.testing.assert_allclose(out, lloyd(jnp.asarray(X), cen, 3, jnp.asarray(w)), rtol=1e-12)
