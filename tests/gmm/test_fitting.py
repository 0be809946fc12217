"""The compiled EM driver and restarts: against scikit-learn, a Python loop, and itself."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.mixture import GaussianMixture as SKGaussianMixture

import emjax
from emjax import _sizes, em
from emjax.gmm import fitting
from tests import conftest
from tests.conftest import COV_TYPES, DTYPES


def sk_init(blobs, cov_type):
    """Initial parameters from a short scikit-learn fit (an independent starting point)."""
    sk = SKGaussianMixture(3, covariance_type=cov_type, max_iter=1, random_state=1)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk.fit(blobs)
    return sk.weights_, sk.means_, sk.precisions_


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_same_init_reaches_sklearn_log_likelihood(blobs, cov_type, dtype):
    w0, m0, p0 = sk_init(blobs, cov_type)
    X = blobs.astype(dtype)
    res = emjax.fit(X, 3, covariance_type=cov_type, tol=1e-8, max_iter=200,
                    weights_init=w0, means_init=m0, precisions_init=p0)
    sk = SKGaussianMixture(3, covariance_type=cov_type, tol=1e-8, max_iter=200,
                           weights_init=w0, means_init=m0, precisions_init=p0).fit(blobs)
    assert res.params.means.dtype == dtype
    assert bool(res.converged) and int(res.status) == 0
    tol = 1e-5 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(res.log_likelihood, sk.score(blobs), rtol=tol)
    np.testing.assert_allclose(res.params.means, sk.means_, rtol=tol * 100, atol=tol * 100)
    # Log-likelihood never decreases along the way (up to round-off).
    h = np.asarray(res.history)[: int(res.n_iter)]
    assert np.all(np.isnan(np.asarray(res.history)[int(res.n_iter):]))
    assert np.all(np.diff(h) >= -1e-6 * np.abs(h[1:]))


@pytest.mark.parametrize("cov_type", ["full", "spherical"])
def test_vmapped_restarts_match_python_loop_and_are_deterministic(blobs, cov_type):
    key = jax.random.key(42)
    kw = dict(covariance_type=cov_type, tol=1e-6, max_iter=60)
    res = emjax.fit(blobs, 3, key=key, n_init=3, init_params="random", **kw)
    again = emjax.fit(blobs, 3, key=key, n_init=3, init_params="random", **kw)
    # Same key, same result, bit for bit.
    jax.tree_util.tree_map(np.testing.assert_array_equal, res, again)
    # Each vmapped restart equals a separate single fit from the same initialisation.
    keys = jax.random.split(key, 3)
    init = jax.jit(lambda k, X: fitting.init_params(k, X, 3, covariance_type=cov_type,
                                                     init_params="random"))
    for i in range(3):
        p0 = init(keys[i], jnp.asarray(blobs - blobs.mean(0)))
        p0 = p0._replace(means=p0.means + blobs.mean(0))
        single = emjax.fit(blobs, 3, params_init=p0, **kw)
        r = em.select(res.restarts, i)
        assert int(r.n_iter) == int(single.n_iter)
        assert bool(r.converged) == bool(single.converged)
        np.testing.assert_allclose(r.log_likelihood, single.log_likelihood, rtol=1e-10)
        np.testing.assert_allclose(r.params.means, single.params.means, rtol=1e-7, atol=1e-8)
    # The best: the first restart within 16 ulps of the highest log-likelihood (em.best_index).
    lls = np.asarray(res.restarts.log_likelihood)
    best = int(np.argmax(lls >= lls.max() - 16 * np.finfo(lls.dtype).eps * abs(lls.max())))
    assert int(res.best_index) == best
    assert float(res.log_likelihood) == float(lls[best])


def test_converged_flag_is_right_when_tol_is_met_on_the_last_iteration(blobs):
    """The driver's rule on toy models is tests/test_em.py's; here through fit's wiring (the
    loop starts from the initial statistics, an M-step that is not an iteration)."""
    kw = dict(covariance_type="diag", tol=1e-4, key=jax.random.key(3))
    free = emjax.fit(blobs, 3, max_iter=100, **kw)
    n = int(free.n_iter)
    assert bool(free.converged) and 1 < n < 100
    exact = emjax.fit(blobs, 3, max_iter=n, **kw)  # converges on its very last iteration
    assert bool(exact.converged) and int(exact.n_iter) == n
    # tol = 0 never converges: max_iter iterations (the same program: tol is traced).
    fixed = emjax.fit(blobs, 3, max_iter=n, **{**kw, "tol": 0.0})
    assert not bool(fixed.converged) and int(fixed.n_iter) == n


def test_driver_compiles_once_per_configuration(blobs):
    before = fitting.compiled_programs()
    for seed in range(3):
        emjax.fit(blobs, 2, key=jax.random.key(seed), covariance_type="tied", n_init=2,
                  tol=1e-3 * (seed + 1), max_iter=20 + 5 * seed)
    # New data values, keys, tol and max_iter (of one history class): no retrace. Two
    # programs: the initialisation's centres, then EM.
    assert fitting.compiled_programs() - before == 2
    # max_iter, an argument, still stops the loop: with tol = 0 a fit runs exactly max_iter
    # iterations, and a shorter fit is the start of a longer one.
    kw = dict(key=jax.random.key(0), covariance_type="tied", n_init=2, tol=0.0)
    short, long = emjax.fit(blobs, 2, max_iter=21, **kw), emjax.fit(blobs, 2, max_iter=30, **kw)
    assert fitting.compiled_programs() - before == 2
    assert int(short.n_iter) == 21 and int(long.n_iter) == 30
    assert short.history.shape == (21,) and short.restarts.history.shape == (2, 21)
    np.testing.assert_array_equal(short.restarts.history, long.restarts.history[:, :21])
    assert np.all(np.isfinite(long.history))
    emjax.fit(blobs[:100], 2, covariance_type="tied", n_init=2, max_iter=20)
    assert fitting.compiled_programs() - before == 4  # a new size class compiles once
    # Another covariance type on the same data (a model-selection sweep): with few features
    # every type runs the full fit's programs (plan.pooled_type).
    emjax.fit(blobs[:100], 2, covariance_type="spherical", n_init=2, max_iter=20)
    emjax.fit(blobs[:100], 2, covariance_type="diag", n_init=2, max_iter=20)
    assert fitting.compiled_programs() - before == 4
    # Past the tiny data, a small diagonal (or tied) fit runs the full fit's program too (up
    # to Tuning.diagonal_as_full_max_features), as a branch of it.
    wide = np.hstack([blobs[:100], np.random.default_rng(0).normal(size=(100, 16))])
    emjax.fit(wide, 2, covariance_type="full", n_init=2, max_iter=20)
    assert fitting.compiled_programs() - before == 6
    emjax.fit(wide, 2, covariance_type="diag", n_init=2, max_iter=20)
    emjax.fit(wide, 2, covariance_type="tied", n_init=2, max_iter=20)
    assert fitting.compiled_programs() - before == 6
    assert [_sizes.history_class(m) for m in (0, 1, 2, 3, 20, 100, 128, 129)] == [
        1, 1, 2, 4, 32, 128, 128, 256]


@pytest.mark.parametrize("init", ["kmeans", "k-means++", "random", "random_from_data"])
def test_every_initialisation_finds_the_clusters(blobs, init):
    # three restarts: k-means is then the program of tests/gmm/test_estimator.py's full fit
    res = emjax.fit(blobs, 3, init_params=init, n_init=3, key=jax.random.key(0),
                    covariance_type="full")
    sk = SKGaussianMixture(3, n_init=4, random_state=0).fit(blobs)
    assert int(res.status) & em.STATUS_NONFINITE == 0
    np.testing.assert_allclose(res.log_likelihood, sk.score(blobs), rtol=1e-4)


def test_sample_weight_equals_repeated_rows(blobs):
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 4, size=len(blobs))
    rep = np.repeat(blobs, counts, axis=0)
    w0, m0, p0 = sk_init(blobs, "full")
    # max_iter as test_same_init_reaches_sklearn_log_likelihood: the weighted fit is its program
    kw = dict(tol=1e-9, max_iter=200, weights_init=w0, means_init=m0, precisions_init=p0)
    a = emjax.fit(blobs, 3, sample_weight=counts.astype(float), **kw)
    b = emjax.fit(rep, 3, **kw)
    np.testing.assert_allclose(a.log_likelihood, b.log_likelihood, rtol=1e-9)
    np.testing.assert_allclose(a.params.covariance.covariances, b.params.covariance.covariances,
                               rtol=1e-6)


DEGENERATE = {
    "duplicated points": lambda rng: np.repeat(rng.normal(size=(3, 3)), 20, axis=0),
    "constant column": lambda rng: np.c_[rng.normal(size=(60, 2)), np.full(60, 3.0)],
    "offset 1e6": lambda rng: rng.normal(size=(60, 3)) + 1e6,
    "scale 1e-8": lambda rng: rng.normal(size=(60, 3)) * 1e-8,
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(DEGENERATE))
def test_degenerate_data_gives_finite_parameters(case, dtype):
    X = DEGENERATE[case](np.random.default_rng(0)).astype(dtype)
    for cov_type in COV_TYPES:
        res = emjax.fit(X, 4, covariance_type=cov_type, n_init=2, key=jax.random.key(0),
                        max_iter=30)
        finite = jax.tree_util.tree_map(lambda a: bool(np.all(np.isfinite(a))),
                                        (res.params, res.restarts.params,
                                         res.restarts.log_likelihood))
        assert all(jax.tree_util.tree_leaves(finite)), (case, cov_type)
        for h, n in zip(np.asarray(res.restarts.history), np.asarray(res.restarts.n_iter)):
            assert n >= 1 and np.all(np.isfinite(h[:n])), (case, cov_type)
        assert int(res.status) & em.STATUS_NONFINITE == 0
        assert res.params.means.dtype == dtype
        np.testing.assert_allclose(np.sum(np.asarray(res.params.weights)), 1.0, rtol=1e-5)


def test_empty_component_is_reseeded_and_reported():
    rng = np.random.default_rng(0)
    X = np.r_[rng.normal(size=(40, 2)), rng.normal(size=(40, 2)) + 8]
    # Start one component far from every point: it empties at the first E-step.
    means0 = np.array([[0.0, 0.0], [8.0, 8.0], [1e3, 1e3]])
    res = emjax.fit(X, 3, means_init=means0, weights_init=np.array([0.45, 0.45, 0.1]),
                    precisions_init=np.ones(3), covariance_type="spherical", max_iter=50)
    assert int(res.status) & em.STATUS_RESEEDED
    assert np.all(np.abs(np.asarray(res.params.means)) < 50)  # moved back to the data
    assert np.all(np.asarray(res.params.weights) > 0.01)
    assert "reseeded" in emjax.describe_status(int(res.status))


BAD = [
    (dict(X=np.array([[0.0, np.nan], [1, 1], [2, 2]])), "NaN or infinity in 1 row"),
    (dict(X=np.array([[0.0, 1], [np.inf, 1], [2, 2]])), "rows? ?\\(s\\)?: 1"),
    (dict(X=np.zeros(5)), "2-D array"),
    (dict(X=np.zeros((2, 2, 2))), "shape \\(2, 2, 2\\)"),
    (dict(n_components=5), "n_components=5 must be <= n_samples=3"),
    (dict(n_components=0), "n_components must be an integer >= 1"),
    (dict(covariance_type="banana"), "covariance_type must be one of"),
    (dict(init_params="nope"), "init_params must be one of"),
    (dict(tol=-1.0), "tol must be"),
    (dict(reg_covar=-1e-6), "reg_covar must be"),
    (dict(max_iter=-1), "max_iter must be"),
    (dict(n_init=0), "n_init must be"),
    (dict(means_init=np.zeros((3, 2))), "means_init must have shape \\(2, 2\\)"),
    (dict(weights_init=np.array([0.2, 0.2])), "must sum to 1"),
    (dict(precisions_init=-np.ones(2), covariance_type="spherical"), "must be positive"),
    (dict(sample_weight=np.ones(4)), "sample_weight must have shape \\(3,\\)"),
    (dict(X=np.array([["a", "b"]] * 3)), "must be numeric"),
]


@pytest.mark.parametrize("kwargs,match", BAD)
def test_bad_input_raises_clear_value_error(kwargs, match):
    args = dict(X=np.arange(6.0).reshape(3, 2), n_components=2)
    args.update(kwargs)
    X = args.pop("X")
    original = X.copy()
    with pytest.raises(ValueError, match=match):
        emjax.fit(X, **args)
    np.testing.assert_array_equal(X, original)  # nothing the user passed is mutated


def test_run_from_statistics_equals_run_from_their_m_step():
    """em.run(estats0=s): the loop's own M-step makes the start (not an iteration); the rest is
    the run from params0 = m_step(s). A non-finite first step returns the template, flagged."""

    def e_step(p, data):  # EM-like fixed point p <- (p + mean) / 2
        return p, -jnp.square(p - jnp.mean(data))

    def m_step(s, data):
        return 0.5 * (s + jnp.mean(data))

    data = jnp.linspace(0.0, 2.0, 11, dtype=jnp.float32)
    run = jax.jit(lambda p0, s0: em.run(e_step, m_step, p0, data, tol=1e-8, max_iter=50,
                                        estats0=s0))
    plain = jax.jit(lambda p0: em.run(e_step, m_step, p0, data, tol=1e-8, max_iter=50))
    a, b = run(jnp.float32(0.0), jnp.float32(9.0)), plain(m_step(jnp.float32(9.0), data))
    assert int(a.n_iter) == int(b.n_iter) > 3 and bool(a.converged) and bool(b.converged)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-6)
    # The returned log-likelihood is that of the returned parameters.
    np.testing.assert_allclose(a.log_likelihood, e_step(a.params, data)[1], rtol=1e-6)
    bad = run(jnp.float32(-7.0), jnp.float32(np.nan))
    assert int(bad.status) & em.STATUS_NONFINITE and int(bad.n_iter) == 0
    assert float(bad.params) == -7.0


def test_sequential_restarts_fit_equals_vmapped_restarts(blobs):
    """Restarts one after the other (the plan of large problems) fit what vmapped restarts
    fit: every restart's iterations, log-likelihood and parameters."""
    n, d = blobs.shape
    vmapped = emjax.make_plan("full", blobs.dtype, _sizes.size_class(n), d, 8)
    assert not vmapped.sequential_restarts
    a = emjax.fit(blobs, 5, key=3, n_init=3, tol=1e-8, plan=vmapped)
    b = emjax.fit(blobs, 5, key=3, n_init=3, tol=1e-8,
                  plan=vmapped.replace(sequential_restarts=True))
    np.testing.assert_array_equal(a.restarts.n_iter, b.restarts.n_iter)
    assert len(set(np.asarray(a.restarts.n_iter).tolist())) > 1
    rtol = 1e-10 if blobs.dtype == np.float64 else 1e-5
    np.testing.assert_allclose(a.restarts.log_likelihood, b.restarts.log_likelihood, rtol=rtol)
    for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
        np.testing.assert_allclose(x, y, rtol=rtol * 100, atol=rtol)


def test_small_plan_fit_equals_lapack_plan_fit(blobs):
    """The small-problem plan (no LAPACK, XLA level 0, LLVM IR emitters) fits what the default
    path fits, and an int seed is the key ``jax.random.key(seed)``: the same fit, by the same
    compiled program."""
    n, d = blobs.shape
    small = emjax.make_plan("full", blobs.dtype, _sizes.size_class(n), d, 3)
    assert not small.lapack and small.opt_level == 0 and not small.fusion_emitters
    assert conftest._PRODUCTION["plan"](small)["xla_disable_hlo_passes"] == (
        "while-loop-invariant-code-motion,simplify-while-loops")
    lapack = small.replace(lapack=True, blocked_inverse=False, opt_level=1, fusion_emitters=True,
                           skipped_passes=())
    a = emjax.fit(blobs, 3, key=7, n_init=2, plan=small)
    programs = fitting.compiled_programs()
    same = emjax.fit(blobs, 3, key=jax.random.key(7), n_init=2, plan=small)
    assert fitting.compiled_programs() == programs
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(same)):
        np.testing.assert_array_equal(x, y)
    b = emjax.fit(blobs, 3, key=jax.random.key(7), n_init=2, plan=lapack)
    assert int(a.n_iter) == int(b.n_iter) and int(a.best_index) == int(b.best_index)
    np.testing.assert_allclose(a.log_likelihood, b.log_likelihood, rtol=1e-12)
    for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12)
