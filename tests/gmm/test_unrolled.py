"""The unrolled steps of small problems (emjax.gmm.unrolled, PassPlan.unrolled) against the dense
reference steps and NumPy, and the batch-aware conditional they rank re-seeding candidates under."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import emjax
from emjax import _batching, _sizes
from emjax.gmm import covariance as cov_lib
from emjax.gmm import steps, unrolled
from emjax.gmm.plan import make_plan


def _spd(rng, batch, d, dtype):
    a = rng.normal(size=batch + (d, d))
    return (a @ np.swapaxes(a, -1, -2) + 0.1 * np.eye(d)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("d", [1, 2, 4])
def test_unrolled_factorisations_match_numpy(dtype, d):
    rng = np.random.default_rng(d)
    a = _spd(rng, (5, 3), d, dtype)
    L = np.asarray(cov_lib.unrolled_cholesky(jnp.asarray(a)))
    ref = np.linalg.cholesky(a.astype(np.float64))
    tol = 1e-12 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(L, ref, rtol=tol, atol=tol * np.abs(ref).max())
    inv = np.asarray(cov_lib.unrolled_lower_inverse(jnp.asarray(L)))
    np.testing.assert_allclose(inv, np.linalg.inv(ref), rtol=50 * tol,
                               atol=50 * tol * np.abs(np.linalg.inv(ref)).max())
    assert np.all(np.triu(inv, 1) == 0)
    # Not positive definite: non-finite, as LAPACK's failure in jnp.linalg.cholesky.
    bad = a.copy()
    bad[0, 0, -1, -1] = -1.0
    out = np.asarray(cov_lib.unrolled_cholesky(jnp.asarray(bad)))
    assert not np.all(np.isfinite(out[0, 0])) and np.all(np.isfinite(out[1:]))


@pytest.mark.parametrize("cov_type", ["full", "tied", "diag", "spherical"])
def test_unrolled_e_step_statistics_match_the_dense_steps(cov_type):
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.normal(size=(50, 3)))
    w = jnp.asarray(rng.uniform(0.5, 2.0, size=50))
    k = 3
    covs = {"full": _spd(rng, (k,), 3, np.float64), "tied": _spd(rng, (), 3, np.float64),
            "diag": rng.uniform(0.5, 2, (k, 3)), "spherical": rng.uniform(0.5, 2, k)}[cov_type]
    params = steps.make_params(np.array([0.2, 0.3, 0.5]), rng.normal(size=(k, 3)), covs,
                               cov_type)
    st, ll = unrolled.e_step_stats(params, X.T, w)
    np.testing.assert_allclose(ll, steps.score_samples(params, X), rtol=1e-12)
    gamma, _ = steps.e_step(params, X)
    new = steps.params_from_stats(st, covariance_type=cov_type)
    ref = steps.m_step(gamma, X, covariance_type=cov_type, sample_weight=w)
    for a, b in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def _data(n, seed, dtype):
    rng = np.random.default_rng(seed)
    lab = np.arange(n) % 3
    X = rng.normal(size=(n, 2)) * (0.4 + 0.3 * lab)[:, None] + np.array(
        [[0, 0], [4, 0], [0, 4]])[lab]
    return X.astype(dtype)


@pytest.mark.parametrize("cov_type, init", [("full", "kmeans"), ("tied", "k-means++"),
                                            ("diag", "random"),
                                            ("spherical", "random_from_data")])
def test_unrolled_fit_equals_the_dense_fit(cov_type, init):
    X = _data(120, 1, np.float64)
    plan = make_plan(cov_type, X.dtype, _sizes.size_class(X.shape[0]), 2, 3)
    assert plan.unrolled and not plan.fused
    kw = dict(covariance_type=cov_type, init_params=init, key=jax.random.key(2), n_init=2,
              tol=1e-8)
    fast = emjax.fit(X, 3, plan=plan, **kw)
    dense = emjax.fit(X, 3, plan=plan.replace(unrolled=False), **kw)
    assert int(fast.n_iter) == int(dense.n_iter)
    np.testing.assert_allclose(fast.log_likelihood, dense.log_likelihood, rtol=1e-12)
    for a, b in zip(jax.tree_util.tree_leaves(fast.params),
                    jax.tree_util.tree_leaves(dense.params)):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)


def test_rare_cond_under_vmap_equals_the_cond_of_each_element():
    def true_fn(op):
        return jnp.cumsum(op[0]) * op[1]

    def false_fn(op):
        return jnp.zeros_like(op[0])

    def one(p, x, s):
        return _batching.rare_cond(p, true_fn, false_fn, (x, s))

    x = jnp.arange(12.0).reshape(4, 3)
    s = jnp.float32(2.0)
    for pred in ([False] * 4, [False, True, False, True]):
        pred = jnp.asarray(pred)
        got = jax.jit(jax.vmap(one, in_axes=(0, 0, None)))(pred, x, s)
        want = [jax.lax.cond(p, true_fn, false_fn, (xi, s)) for p, xi in zip(pred, x)]
        np.testing.assert_array_equal(got, np.stack(want))
    # Unbatched predicate, batched operand; and no vmap at all.
    got = jax.vmap(one, in_axes=(None, 0, None))(jnp.asarray(True), x, s)
    np.testing.assert_array_equal(got, jax.vmap(true_fn)((x, jnp.broadcast_to(s, (4,)))))
    np.testing.assert_array_equal(one(jnp.asarray(True), x[1], s), true_fn((x[1], s)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vmapped_fits_stepped_in_chunks_equal_each_fit_alone(dtype):
    """More fits than the plan's chunk: the unfinished ones are stepped a chunk at a time
    (em.run_compacted); each result equals the same data fitted alone."""
    n_sets = 9
    Xs = np.stack([_data(60, s, dtype) for s in range(n_sets)])
    keys = jax.random.split(jax.random.key(5), n_sets)
    plan = make_plan("full", dtype, 60, 2, 3).replace(compact=4)
    assert plan.unrolled

    def fit(X, k):
        return emjax.fit(X, 3, key=k, plan=plan, tol=1e-5, max_iter=60)

    batch = jax.jit(jax.vmap(fit))(Xs, keys)
    alone = jax.jit(fit)
    n_iter = np.asarray(batch.n_iter)
    assert len(set(n_iter.tolist())) > 1  # fits stop at different iterations
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-5)
    for b in range(n_sets):
        one = alone(Xs[b], keys[b])
        assert int(one.n_iter) == n_iter[b] and bool(one.converged) == bool(batch.converged[b])
        np.testing.assert_allclose(one.log_likelihood, batch.log_likelihood[b], **tol)
        np.testing.assert_allclose(one.params.means, batch.params.means[b], **tol)
        np.testing.assert_allclose(one.history, batch.history[b], **tol)
    # The same data for every fit (only the keys batched): the data stay unbatched.
    same = jax.jit(jax.vmap(fit, in_axes=(None, 0)))(Xs[0], keys)
    for b in (0, 5):
        np.testing.assert_allclose(same.log_likelihood[b], alone(Xs[0], keys[b]).log_likelihood,
                                   **tol)


def test_vmapped_fits_that_reseed_equal_each_fit_alone():
    """Half the fits start with a component far from all data (re-seeded at once): under vmap
    the re-seeding candidates are ranked for the batch (rare_cond) and the fits are stepped in
    chunks; each result, status included, equals the fit alone."""
    rng = np.random.default_rng(0)
    n_sets = 6
    Xs = np.stack([_data(60, s, np.float64) for s in range(n_sets)])
    M = np.tile(np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]]), (n_sets, 1, 1))
    M[::2, 0] = 1e3
    M += rng.normal(scale=0.1, size=M.shape)
    keys = jax.random.split(jax.random.key(0), n_sets)
    plan = make_plan("full", np.float64, 60, 2, 3).replace(compact=4)

    def fit(X, m, k):
        return emjax.fit(X, 3, key=k, means_init=m, plan=plan, tol=1e-6)

    batch = jax.jit(jax.vmap(fit))(Xs, M, keys)
    status = np.asarray(batch.status)
    assert np.all(status[::2] & emjax.em.STATUS_RESEEDED)
    assert not np.any(status[1::2] & emjax.em.STATUS_RESEEDED)
    alone = jax.jit(fit)
    for b in range(n_sets):
        one = alone(Xs[b], M[b], keys[b])
        assert int(one.status) == status[b] and int(one.n_iter) == int(batch.n_iter[b])
        np.testing.assert_allclose(one.log_likelihood, batch.log_likelihood[b], rtol=1e-12)
        np.testing.assert_allclose(one.params.means, batch.params.means[b], rtol=1e-10,
                                   atol=1e-10)
