"""Generalised EM: the optax M-step reaches the closed form's Q, and the driver stays monotone."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import emjax
from emjax import em, gmm
from emjax.gmm import gem
from emjax.gmm import objective as obj

COV_TYPES = ("full", "tied", "diag", "spherical")


def _problem(cov_type, seed=0):
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.normal(size=(30, 3)), rng.normal(size=(25, 3)) * 0.7 + 4.0,
                        rng.normal(size=(20, 3)) * 0.5 - 3.0])
    X = jnp.asarray(X)
    gamma = jax.nn.softmax(jnp.asarray(rng.normal(size=(75, 3)) * 2.0), axis=1)
    w = jnp.asarray(rng.uniform(0.5, 2.0, size=75))
    start = gmm.m_step(jax.nn.softmax(jnp.asarray(rng.normal(size=(75, 3))), axis=1), X,
                       covariance_type=cov_type)
    return X, gamma, w, start


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_fast_q_matches_dense_reference(cov_type):
    """The Q the optax M-step differentiates equals the dense reference, with reg_covar."""
    X, gamma, w, params = _problem(cov_type)
    for reg in (0.0, 0.1):
        fast = gem.expected_log_likelihood(params, gamma, X, w, reg_covar=reg)
        dense = obj.complete_data_log_likelihood(params, gamma, X, w, reg_covar=reg)
        np.testing.assert_allclose(float(fast), float(dense), rtol=1e-11)


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_unconstrained_round_trip(cov_type):
    _, _, _, params = _problem(cov_type)
    back = gem.from_unconstrained(gem.to_unconstrained(params), cov_type)
    chex.assert_trees_all_close(back, params, rtol=1e-10, atol=1e-12)


_ADAM = optax.adam(0.05)


@pytest.mark.parametrize("cov_type,optimizer,n_steps", [
    ("full", None, 30), ("tied", None, 30), ("diag", None, 30), ("spherical", None, 30),
    ("full", _ADAM, 300),
])
def test_optax_m_step_reaches_closed_form_q(cov_type, optimizer, n_steps):
    """From a poor warm start, the default L-BFGS (30 steps) and plain Adam (300 steps) reach
    the closed-form M-step's (regularised) Q to 1e-10 relative, and the same parameters."""
    X, gamma, w, start = _problem(cov_type)
    reg = 1e-3
    closed = gmm.m_step(gamma, X, covariance_type=cov_type, reg_covar=reg, sample_weight=w)
    step = jax.jit(lambda g, x, p, sw: gem.optax_m_step(g, x, p, reg_covar=reg, sample_weight=sw,
                                                        optimizer=optimizer, n_steps=n_steps))
    new = step(gamma, X, start, w)
    q = lambda p: float(obj.complete_data_log_likelihood(p, gamma, X, w, reg_covar=reg))
    q_closed, q_gem, q_start = q(closed), q(new), q(start)
    assert q_start < q_closed - 1.0  # the warm start is genuinely far from the optimum
    np.testing.assert_allclose(q_gem, q_closed, rtol=1e-10)
    assert q_gem <= q_closed + 1e-9 * abs(q_closed)  # the closed form is the maximiser
    chex.assert_trees_all_close((new.weights, new.means, new.covariance.covariances),
                                (closed.weights, closed.means, closed.covariance.covariances),
                                rtol=1e-4, atol=1e-5)


def test_optax_m_step_keeps_params_when_q_would_fall():
    """An optimiser that descends Q never gets a step accepted: params0 comes back (up to the
    round-off of mapping it to coordinates and back) and Q does not move."""
    X, gamma, w, start = _problem("diag")
    new = gem.optax_m_step(gamma, X, start, sample_weight=w, optimizer=optax.sgd(-0.5),
                           n_steps=5)
    chex.assert_trees_all_close(new, start, rtol=1e-13, atol=1e-14)
    q_new = gem.expected_log_likelihood(new, gamma, X, w)
    q_old = gem.expected_log_likelihood(start, gamma, X, w)
    assert float(q_new) >= float(q_old)


@pytest.mark.parametrize("cov_type", ["full", "spherical"])
def test_gem_in_driver_is_monotone_and_ends_where_closed_form_em_ends(cov_type):
    """The optax M-step inside the compiled driver (emjax.em.run): the log-likelihood never
    falls, no STATUS_DECREASED, and it converges to closed-form EM's log-likelihood from the
    same start."""
    X, _, _, _ = _problem(cov_type)
    rng = np.random.default_rng(2)
    start = gmm.m_step(jax.nn.softmax(jnp.asarray(rng.normal(size=(75, 3)) * 3.0), axis=1), X,
                       covariance_type=cov_type)
    e_gem, m_gem, _ = gem.make_gem_model(cov_type, 1e-6, n_steps=5)
    e_cf, m_cf, _ = emjax.gmm.fitting.make_model(cov_type, 1e-6)

    @jax.jit
    def both(p0, X):
        kw = dict(tol=1e-9, max_iter=60)
        return em.run(e_gem, m_gem, p0, (X, None), **kw), em.run(e_cf, m_cf, p0, (X, None), **kw)

    res, ref = both(start, X)
    hist = np.asarray(res.history)
    hist = hist[np.isfinite(hist)]
    assert len(hist) > 5
    assert np.all(np.diff(hist) >= -1e-12), np.diff(hist).min()
    assert int(res.status) & em.STATUS_DECREASED == 0, em.describe_status(res.status)
    assert hist[-1] > hist[0] + 0.1
    np.testing.assert_allclose(float(res.log_likelihood), float(ref.log_likelihood), atol=1e-5)


def test_fit_gem_public_api_runs_and_caches_its_program():
    """Fits of nearby sizes and lengths share one program (rows padded with zero weight, the
    history to its class) and equal the program run on the rows as given."""
    X = np.asarray(_problem("diag")[0])
    before = gem._fit_gem_compiled._cache_size()
    kw = dict(key=jax.random.key(1), covariance_type="diag", n_steps=5,
              init_params="random_from_data")
    res = gem.fit_gem(X, 3, max_iter=15, **kw)
    res2 = gem.fit_gem(X[:71], 3, max_iter=13, **kw)
    # One program for both calls (the default optimiser object is cached: it is static).
    assert gem._fit_gem_compiled._cache_size() == before + 1
    chex.assert_shape(res.params.means, (3, 3))
    assert res.history.shape == (15,) and res2.history.shape == (13,)
    assert int(res2.n_iter) <= 13
    hist = np.asarray(res.history)
    assert np.all(np.diff(hist[np.isfinite(hist)]) >= -1e-12)
    # the unpadded reference: the program itself, jitted on the 75 rows as given
    c = gem.check_fit(X, 3, max_iter=15, **{k: v for k, v in kw.items() if k != "n_steps"})
    ref = jax.jit(gem._fit_gem_program, static_argnames=("options", "optimizer", "n_steps"))(
        X, c.key, None, c.tol, options=c.options, optimizer=gem.default_optimizer(), n_steps=5)
    assert int(res.n_iter) == int(ref.n_iter)
    np.testing.assert_allclose(float(res.log_likelihood), float(ref.log_likelihood), rtol=1e-12)
    np.testing.assert_allclose(res.params.means, ref.params.means, rtol=1e-9, atol=1e-12)


def test_fit_gem_validates_arguments():
    X = np.zeros((10, 2))
    with pytest.raises(ValueError, match="n_steps"):
        gem.fit_gem(X, 2, n_steps=0)
    with pytest.raises(ValueError, match="covariance_type"):
        gem.fit_gem(X, 2, covariance_type="banana")
    with pytest.raises(ValueError, match=r"optax.GradientTransformation.*got 'adam'"):
        gem.fit_gem(X, 2, optimizer="adam")
