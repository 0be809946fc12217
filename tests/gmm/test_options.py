"""The one options/validation path of the GMM fits (emjax.gmm.options) and the shared result."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emjax import _validation as v
from emjax import em
from emjax.gmm import options


def _spd(d=3, k=2):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(k, d, d))
    return a @ np.swapaxes(a, 1, 2) + d * np.eye(d)


@pytest.mark.parametrize("traced", [False, True])
def test_precisions_init_gives_their_inverse_as_covariances(traced):
    prec = _spd().astype(np.float32)
    opts = options.check_options(2, (10, 3), covariance_type="full")[1]

    def cov(p):
        init = options.check_initial_values(opts, 3, np.float32, precisions_init=p,
                                            traced=traced)
        return init.covariance.covariances

    got = jax.jit(cov)(prec) if traced else cov(prec)
    np.testing.assert_allclose(np.asarray(got), np.linalg.inv(prec.astype(np.float64)),
                               rtol=2e-4, atol=1e-5)


def test_check_fit_quotes_shapes_and_normalises():
    X = np.ones((5, 2), np.float32)
    X[:, 0] = np.arange(5)
    with pytest.raises(ValueError, match=r"n_components=6 must be <= n_samples=5 .*\(5, 2\)"):
        options.check_fit(X, 6)
    with pytest.raises(ValueError, match=r"means_init must have shape \(2, 2\); got \(2, 3\)"):
        options.check_fit(X, 2, means_init=np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"precisions_init for covariance_type='diag' must "
                                         r"have shape \(2, 2\); got \(2,\)"):
        options.check_fit(X, 2, covariance_type="diag", precisions_init=np.ones(2))
    c = options.check_fit(X, 2, key=3, tol=1, weights_init=[0.5, 0.5])
    assert c.options == options.FitOptions(2, "full", "kmeans", 1e-6, 100, 1, 10)
    assert hash(c.options) == hash(options.FitOptions(2, "full", "kmeans", 1e-6, 100, 1, 10))
    assert isinstance(c.tol, float) and c.initial.given and not c.initial.complete
    assert c.initial.weights.dtype == jnp.float32
    np.testing.assert_array_equal(jax.random.key_data(c.key),
                                  jax.random.key_data(jax.random.key(3)))


def test_as_key_accepts_one_key_or_seed():
    k0 = jax.random.key_data(jax.random.key(0))
    np.testing.assert_array_equal(jax.random.key_data(v.as_key(None)), k0)
    raw = jax.random.PRNGKey(5)
    assert v.as_key(raw) is raw
    assert v.as_key(None, default=None).shape == ()  # a fresh random key
    for bad in (np.zeros(3), jax.random.split(jax.random.key(0), 2), True, "0"):
        with pytest.raises(ValueError, match="key must be a single JAX PRNG key"):
            v.as_key(bad)


def test_best_restart_keeps_all_and_is_a_pytree():
    ll = jnp.array([1.0, jnp.nan, 3.0, 3.0])
    res = em.EMResult(params=jnp.arange(4.0), log_likelihood=ll, n_iter=jnp.arange(4),
                      converged=jnp.ones(4, bool), status=jnp.zeros(4, jnp.int32),
                      history=jnp.zeros((4, 2)))
    best = jax.jit(em.best_restart)(res)
    assert int(best.best_index) == 2 and float(best.params) == 2.0  # first of the tie, NaN out
    assert best.restarts is not None and best.restarts.params.shape == (4,)
    batched = jax.vmap(em.best_restart)(jax.tree_util.tree_map(lambda a: a[None], res))
    assert batched.best_index.shape == (1,)
    assert best._replace(params=0.0).params == 0.0

    @jax.tree_util.register_dataclass
    @dataclasses.dataclass(frozen=True, eq=False)
    class Extended(em.FitResult):
        extra: jax.Array

    ext = Extended.extend(best, extra=jnp.ones(2), log_likelihood=jnp.asarray(-1.0))
    leaves = jax.tree_util.tree_leaves(ext)
    assert len(leaves) == len(jax.tree_util.tree_leaves(best)) + 1
    assert float(ext.log_likelihood) == -1.0 and int(ext.best_index) == 2


def test_lists_and_integers_are_read_in_jax_default_float():
    """With x64 off a list or integer data is fitted in float32, as jnp.asarray reads it (it
    was refused: 'X is float64 but JAX's x64 mode is off'); float64 arrays still need x64."""
    rows = [[0, 1], [1, 0], [5, 5], [6, 5]]
    with jax.enable_x64(False):
        for X in (rows, np.asarray(rows), jnp.asarray(rows), np.asarray(rows, bool)):
            assert options.check_fit(X, 2).X.dtype == np.float32
        with pytest.raises(ValueError, match="x64 mode is off"):
            options.check_fit(np.asarray(rows, np.float64), 2)
    with jax.enable_x64(True):
        assert options.check_fit(rows, 2).X.dtype == np.float64
        assert options.check_fit(np.asarray(rows, np.float32), 2).X.dtype == np.float32
