"""The pure GMM functions against independent references: scikit-learn and dense NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal
from sklearn.mixture import GaussianMixture as SKGaussianMixture
from sklearn.mixture._gaussian_mixture import _compute_precision_cholesky

import emjax
from emjax import gmm
from emjax.gmm import covariance as cov_lib
from emjax.gmm import fitting, steps
from tests.conftest import COV_TYPES, DTYPES, rtol_for
from tests.gmm._random import spd
from tests.gmm.test_covariance import indefinite as indefinite_covariances


def random_params(rng, k, d, cov_type, dtype):
    """Well-conditioned random mixture parameters in scikit-learn's shapes."""
    weights = rng.dirichlet(np.full(k, 3.0))
    means = rng.normal(scale=2.0, size=(k, d))
    covs = {
        "full": np.stack([spd(rng, d) for _ in range(k)]),
        "tied": spd(rng, d),
        "diag": rng.uniform(0.3, 2.0, size=(k, d)),
        "spherical": rng.uniform(0.3, 2.0, size=(k,)),
    }[cov_type]
    return weights.astype(dtype), means.astype(dtype), covs.astype(dtype)


def sklearn_model(weights, means, covs, cov_type):
    sk = SKGaussianMixture(len(weights), covariance_type=cov_type)
    sk.weights_ = np.asarray(weights, np.float64)
    sk.means_ = np.asarray(means, np.float64)
    sk.covariances_ = np.asarray(covs, np.float64)
    sk.precisions_cholesky_ = _compute_precision_cholesky(sk.covariances_, cov_type)
    return sk


def dense_covs(covs, cov_type, k, d):
    return {
        "full": lambda: covs,
        "tied": lambda: np.broadcast_to(covs, (k, d, d)),
        "diag": lambda: np.stack([np.diag(c) for c in covs]),
        "spherical": lambda: covs[:, None, None] * np.eye(d),
    }[cov_type]()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_e_step_matches_sklearn(cov_type, dtype):
    rng = np.random.default_rng(1)
    k, d = 3, 4
    w, m, c = random_params(rng, k, d, cov_type, dtype)
    X = rng.normal(scale=2.0, size=(40, d)).astype(dtype)
    params = emjax.make_params(w, m, c, cov_type)
    gamma, ll = emjax.e_step(params, X)
    sk = sklearn_model(w, m, c, cov_type)
    assert gamma.dtype == dtype and ll.dtype == dtype
    rtol = rtol_for(dtype)
    np.testing.assert_allclose(
        np.asarray(params.covariance.precisions_cholesky), sk.precisions_cholesky_,
        rtol=rtol * 10, atol=rtol)
    np.testing.assert_allclose(gamma, sk.predict_proba(X.astype(np.float64)), rtol=rtol * 10,
                               atol=rtol)
    np.testing.assert_allclose(emjax.score_samples(params, X), sk.score_samples(X), rtol=rtol)
    np.testing.assert_allclose(ll, sk.score(X), rtol=rtol)
    np.testing.assert_array_equal(emjax.predict(params, X), sk.predict(X))


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_component_log_prob_matches_scipy(cov_type):
    rng = np.random.default_rng(2)
    k, d = 3, 3
    w, m, c = random_params(rng, k, d, cov_type, np.float64)
    X = rng.normal(size=(25, d))
    dense = dense_covs(c, cov_type, k, d)
    ref = np.stack([multivariate_normal(m[j], dense[j]).logpdf(X) for j in range(k)], axis=1)
    got = gmm.component_log_prob(emjax.make_params(w, m, c, cov_type), X)
    np.testing.assert_allclose(got, ref, rtol=1e-10)


def dense_m_step(gamma, X, cov_type, reg, sw=None):
    """The seeds' closed forms, written with explicit sums (no shared code with emjax)."""
    n, d = X.shape
    k = gamma.shape[1]
    g = gamma * (np.ones(n) if sw is None else sw)[:, None]
    nk = g.sum(0) + 10 * np.finfo(X.dtype).eps
    weights = nk / nk.sum()
    means = np.stack([(g[:, j, None] * X).sum(0) / nk[j] for j in range(k)])
    full = np.zeros((k, d, d))
    for j in range(k):
        for i in range(n):
            diff = X[i] - means[j]
            full[j] += g[i, j] * np.outer(diff, diff)
        full[j] /= nk[j]
    if cov_type == "full":
        covs = full + reg * np.eye(d)
    elif cov_type == "tied":
        covs = (nk[:, None, None] * full).sum(0) / nk.sum() + reg * np.eye(d)
    elif cov_type == "diag":
        covs = np.stack([np.diag(f) for f in full]) + reg
    else:
        covs = np.stack([np.diag(f).mean() for f in full]) + reg
    return weights, means, covs


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_m_step_matches_dense_closed_form(cov_type, dtype):
    rng = np.random.default_rng(3)
    n, d, k = 30, 3, 4
    X = (rng.normal(size=(n, d)) * 2 + 1).astype(dtype)
    gamma = rng.dirichlet(np.ones(k), size=n).astype(dtype)
    sw = rng.uniform(0.2, 2.0, size=n).astype(dtype)
    for weights in (None, sw):
        p = emjax.m_step(gamma, X, covariance_type=cov_type, reg_covar=1e-3,
                         sample_weight=weights)
        w_ref, m_ref, c_ref = dense_m_step(gamma.astype(np.float64), X.astype(np.float64),
                                           cov_type, 1e-3, weights)
        assert p.means.dtype == dtype
        rtol = rtol_for(dtype) * 10
        np.testing.assert_allclose(p.weights, w_ref, rtol=rtol)
        np.testing.assert_allclose(p.means, m_ref, rtol=rtol, atol=rtol)
        np.testing.assert_allclose(p.covariance.covariances, c_ref, rtol=rtol, atol=rtol)
        assert isinstance(p.covariance, cov_lib.COVARIANCE_CLASSES[cov_type])


def test_sufficient_statistics_are_additive_and_reference_free():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(50, 3))
    gamma = rng.dirichlet(np.ones(2), size=50)
    for cov_type in COV_TYPES:
        direct = emjax.m_step(gamma, X, covariance_type=cov_type)
        ref = rng.normal(size=(2, 3)) * 5  # any reference point gives the same M-step
        s1 = gmm.suff_stats(gamma[:20], X[:20], ref, covariance_type=cov_type)
        s2 = gmm.suff_stats(gamma[20:], X[20:], ref, covariance_type=cov_type)
        total = gmm.SuffStats(s1.nk + s2.nk, s1.sx + s2.sx, s1.sxx + s2.sxx, ref)
        via = gmm.params_from_stats(total, covariance_type=cov_type)
        for a, b in zip(np.asarray(direct.means), np.asarray(via.means)):
            np.testing.assert_allclose(a, b, rtol=1e-10)
        np.testing.assert_allclose(direct.covariance.covariances, via.covariance.covariances,
                                   rtol=1e-9)


def test_cross_type_equivalences():
    rng = np.random.default_rng(5)
    k, d = 3, 4
    X = rng.normal(size=(30, d))
    w, m, var = random_params(rng, k, d, "diag", np.float64)
    diag = emjax.make_params(w, m, var, "diag")
    full = emjax.make_params(w, m, np.stack([np.diag(v) for v in var]), "full")
    np.testing.assert_allclose(gmm.weighted_log_prob(diag, X), gmm.weighted_log_prob(full, X),
                               rtol=1e-10)
    s = var[:, 0]
    sph = emjax.make_params(w, m, s, "spherical")
    diag_eq = emjax.make_params(w, m, np.repeat(s[:, None], d, 1), "diag")
    np.testing.assert_allclose(gmm.weighted_log_prob(sph, X), gmm.weighted_log_prob(diag_eq, X),
                               rtol=1e-10)
    _, _, tied_cov = random_params(rng, k, d, "tied", np.float64)
    tied = emjax.make_params(w, m, tied_cov, "tied")
    full_eq = emjax.make_params(w, m, np.broadcast_to(tied_cov, (k, d, d)), "full")
    np.testing.assert_allclose(gmm.weighted_log_prob(tied, X), gmm.weighted_log_prob(full_eq, X),
                               rtol=1e-10)
    # And the M-steps agree: diag == diagonal of full, spherical == mean of diag.
    gamma = rng.dirichlet(np.ones(k), size=30)
    f = emjax.m_step(gamma, X, covariance_type="full").covariance.covariances
    dg = emjax.m_step(gamma, X, covariance_type="diag").covariance.covariances
    sp = emjax.m_step(gamma, X, covariance_type="spherical").covariance.covariances
    np.testing.assert_allclose(dg, np.stack([np.diag(c) for c in f]), rtol=1e-10)
    np.testing.assert_allclose(sp, np.mean(dg, axis=1), rtol=1e-10)


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_parameter_count_bic_aic_match_sklearn(blobs, cov_type):
    sk = SKGaussianMixture(3, covariance_type=cov_type, random_state=0).fit(blobs)
    params = emjax.make_params(sk.weights_, sk.means_, sk.covariances_, cov_type)
    assert emjax.n_parameters(cov_type, 3, 3) == sk._n_parameters()
    np.testing.assert_allclose(emjax.bic(params, blobs), sk.bic(blobs), rtol=1e-10)
    np.testing.assert_allclose(emjax.aic(params, blobs), sk.aic(blobs), rtol=1e-10)


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_sample_moments(cov_type):

    rng = np.random.default_rng(6)
    w, m, c = random_params(rng, 2, 2, cov_type, np.float64)
    m[1] += 10.0  # separate the components so labels can be checked
    params = emjax.make_params(w, m, c, cov_type)
    Xs, labels = emjax.sample(jax.random.key(0), params, 20000)
    labels = np.asarray(labels)
    dense = dense_covs(c, cov_type, 2, 2)
    np.testing.assert_allclose(np.bincount(labels) / 20000, w, atol=0.015)
    for j in range(2):
        pts = np.asarray(Xs)[labels == j]
        np.testing.assert_allclose(pts.mean(0), m[j], atol=0.06)
        np.testing.assert_allclose(np.cov(pts.T), dense[j], atol=0.08)


def test_driver_reports_regularised_covariance():
    """The GMM model's M-step returns em.Flagged with STATUS_REGULARISED when a covariance
    needed the jitter, and em.run records the bit in the fit's status (and not otherwise)."""

    from emjax import em
    from emjax.gmm import fitting

    rng = np.random.default_rng(3)
    k, d = 2, 4
    for indefinite in (True, False):
        covs = (indefinite_covariances(rng, k, d, np.float64) if indefinite
                else random_params(rng, k, d, "full", np.float64)[2])
        nk = jnp.asarray([40.0, 60.0])
        ref = jnp.zeros((k, d))
        stats = gmm.SuffStats(nk, jnp.zeros((k, d)), nk[:, None, None] * jnp.asarray(covs), ref)
        plan = emjax.make_plan("full", np.float64, 8, d, k).replace(fused=True)
        _, m_step, _ = fitting.make_model("full", 0.0, plan=plan)  # statistics in, as fused
        out = m_step((stats, jnp.zeros(8)), (jnp.zeros((8, d)), None))
        assert isinstance(out, em.Flagged)
        assert bool(int(out.flags) & em.STATUS_REGULARISED) == indefinite
        # em.run with an E-step that returns these statistics every iteration.
        params0 = out.params
        res = jax.jit(lambda p: em.run(lambda p_, data: ((stats, jnp.zeros(8)), jnp.float64(-1.0)),
                                       m_step, p, (jnp.zeros((8, d)), None), tol=1e-3,
                                       max_iter=3))(params0)
        assert bool(int(res.status) & em.STATUS_REGULARISED) == indefinite
        if indefinite:
            assert "regularised" in emjax.describe_status(int(res.status))


def test_sample_sizes_share_one_program_and_draw_prefixes():
    """Draws for 300 and 301 points run one compiled program (their class, 512) and are the
    first rows of the draws for the class itself, as the unpadded draw in a trace gives them."""
    rng = np.random.default_rng(7)
    w, m, c = random_params(rng, 3, 2, "full", np.float64)
    params = emjax.make_params(w, m, c, "full")
    key = jax.random.key(3)
    a, la = emjax.sample(key, params, 300)
    programs = steps._draw_compiled._cache_size()
    b, lb = emjax.sample(key, params, 301)
    assert steps._draw_compiled._cache_size() == programs
    assert a.shape == (300, 2) and b.shape == (301, 2) and la.shape == (300,)
    np.testing.assert_array_equal(np.asarray(b)[:300], np.asarray(a))
    np.testing.assert_array_equal(np.asarray(lb)[:300], np.asarray(la))
    # an int seed outside a trace, as emjax.fit takes (it failed inside jax.random)
    c_, lc = emjax.sample(3, params, 300)
    np.testing.assert_array_equal(np.asarray(c_), np.asarray(a))
    np.testing.assert_array_equal(np.asarray(lc), np.asarray(la))
    traced, lt = jax.jit(emjax.sample, static_argnums=2)(key, params, 300)
    np.testing.assert_allclose(np.asarray(traced), np.asarray(a), rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(lt), np.asarray(la))


def test_functional_api_on_new_row_counts_shares_programs():
    """score_samples, predict_proba, predict, e_step and bic on concrete data of 300 and 301
    rows run one compiled program each (rows padded to their class), with the values of the
    same functions traced on the rows as given."""
    rng = np.random.default_rng(8)
    w, m, c = random_params(rng, 3, 2, "full", np.float64)
    params = emjax.make_params(w, m, c, "full")
    fns = (emjax.score_samples, emjax.predict_proba, emjax.predict)
    X = rng.normal(size=(301, 2)) * 3.0
    sw = rng.uniform(0.5, 2.0, 301)
    for f in fns:
        f(params, X[:300])
    gmm.e_step(params, X[:300], sw[:300])
    sizes = [f._cache_size() for f in steps._PER_ROW.values()]
    for f in fns:
        np.testing.assert_allclose(f(params, X), jax.jit(f)(params, X), rtol=1e-12)
    gamma, ll = gmm.e_step(params, X, sw)
    gamma_t, ll_t = jax.jit(gmm.e_step)(params, X, sw)
    np.testing.assert_allclose(gamma, gamma_t, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(ll, ll_t, rtol=1e-12)
    np.testing.assert_allclose(emjax.bic(params, X), jax.jit(emjax.bic)(params, X), rtol=1e-12)
    assert [f._cache_size() for f in steps._PER_ROW.values()] == sizes
    # the M-step too: padded with zero-weight rows, one program, the traced step's values
    emjax.m_step(np.asarray(gamma[:300]), X[:300], sample_weight=sw[:300])
    before = steps._m_step_compiled._cache_size()
    got = emjax.m_step(np.asarray(gamma), X, sample_weight=sw)
    ref = jax.jit(lambda g, x, w: emjax.m_step(g, x, sample_weight=w))(gamma, X, sw)
    assert steps._m_step_compiled._cache_size() == before
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)
    with pytest.raises(ValueError, match=r"gamma must have shape \(n_samples=301, n_components\) "
                                         r"to match X of shape \(301, 2\); got shape \(300, 3\)"):
        emjax.m_step(np.asarray(gamma[:300]), X)
    with pytest.raises(ValueError, match="covariance_type must be one of"):
        emjax.m_step(np.asarray(gamma), X, covariance_type="banana")


@pytest.mark.parametrize("method", ["kmeans", "random"])
def test_init_params_on_concrete_data(method):
    """emjax.init_params takes NumPy data (it failed with a TracerArrayConversionError inside
    k-means++), checks it, and runs one program for the sizes of a class: equal to the traced
    function on the rows as given."""
    rng = np.random.default_rng(3)
    X = np.concatenate([rng.normal(size=(60, 2)), rng.normal(size=(61, 2)) + 5.0])
    key = jax.random.key(4)
    kw = dict(covariance_type="diag", init_params=method)
    emjax.init_params(key, X[:120], 2, **kw)
    before = fitting._init_params_compiled._cache_size()
    got = emjax.init_params(key, X, 2, **kw)
    assert fitting._init_params_compiled._cache_size() == before
    ref = jax.jit(lambda k, x: emjax.init_params(k, x, 2, **kw))(key, X)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="init_params must be one of"):
        emjax.init_params(key, X, 2, init_params="bogus")
    with pytest.raises(ValueError, match="n_components=200 must be <= n_samples=121"):
        emjax.init_params(key, X, 200)


def test_make_params_checks_concrete_values():
    """Mis-shaped or invalid parameters are a ValueError quoting them, not a mixture that fails
    later (3 covariances for 2 components were taken; an indefinite one was jittered)."""
    eye2 = np.stack([np.eye(2)] * 2)
    w, m = np.array([0.5, 0.5]), np.zeros((2, 2))
    with pytest.raises(ValueError, match=r"covariances for covariance_type='full' must have "
                                         r"shape \(2, 2, 2\); got \(3, 2, 2\)"):
        emjax.make_params(w, m, np.stack([np.eye(2)] * 3), "full")
    with pytest.raises(ValueError, match="covariances must be positive definite"):
        emjax.make_params(w, m, -eye2, "full")
    with pytest.raises(ValueError, match="weights must sum to 1; got sum 2.0"):
        emjax.make_params(np.ones(2), m, eye2, "full")
    with pytest.raises(ValueError, match=r"means must be \(n_components, n_features\)"):
        emjax.make_params(w, np.zeros(2), eye2, "full")
    with pytest.raises(ValueError, match="covariances must be positive"):
        emjax.make_params(w, m, np.array([1.0, 0.0]), "spherical")
    with pytest.raises(ValueError, match="covariance_type must be one of"):
        emjax.make_params(w, m, eye2, "ful")
    p = emjax.make_params(w, m, eye2, "full")
    np.testing.assert_array_equal(p.covariance.covariances, eye2)
    # inside a trace nothing is checked (values are not known)
    jax.jit(emjax.make_params, static_argnums=3)(w, m, eye2, "full")
