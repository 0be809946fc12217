"""Missing entries (NaN) marginalised exactly: the E-step, the M-step and the observed-data
log-likelihood against a per-row NumPy/SciPy reference written from the formulas, stationarity of
the expected complete-data log-likelihood (jax.grad), monotone EM, and imputation."""

import functools
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal

import emjax
from emjax import _sizes, gmm
from emjax.gmm import missing as ms
from emjax.gmm import objective as obj
from tests.conftest import COV_TYPES
from tests.gmm._random import random_params

N, D, K = 40, 4, 3
REG = 1e-2


def holes(rng, n=N, d=D, frac=0.3):
    """Data with about ``frac`` of entries NaN, every row keeping one entry (of 0..d-1 missing,
    so every bucket of the layout is exercised, and one bucket's patterns shared enough to be
    factorised once per pattern)."""
    X = rng.normal(size=(n, d)) * 2.0 + 0.5
    miss = rng.uniform(size=(n, d)) < frac
    miss[np.arange(n), rng.integers(0, d, n)] = False
    miss[:d, :] = np.arange(d)[None, :] < np.arange(d)[:, None]  # rows missing 0..d-1 entries
    miss[d:2 * d, :] = np.arange(d)[None, :] == 0  # a pattern shared by several rows
    # a bucket of mostly unshared patterns, but one pattern shared by four rows
    miss[2 * d:2 * d + 4, :] = np.arange(d)[None, :] < 2
    Xn = X.copy()
    Xn[miss] = np.nan
    return Xn


# ------------------------------------------------------------------------- independent reference


def ref_e_step(params, X):
    """Per row and component: log pi_k + log N(x_o | mu_o, S_oo), the conditional mean of the
    full vector and the conditional covariance embedded in (D, D) (SciPy, row by row)."""
    k, d = params.means.shape
    covs = np.asarray(obj.dense_covariances(params))
    means = np.asarray(params.means)
    wlp = np.zeros((len(X), k))
    xhat = np.zeros((len(X), k, d))
    cc = np.zeros((len(X), k, d, d))
    for n, x in enumerate(X):
        o = ~np.isnan(x)
        m = ~o
        for j in range(k):
            S, mu = covs[j], means[j]
            wlp[n, j] = np.log(params.weights[j]) + multivariate_normal(
                mu[o], S[np.ix_(o, o)]).logpdf(x[o])
            xh = x.copy()
            if m.any():
                B = S[np.ix_(m, o)] @ np.linalg.inv(S[np.ix_(o, o)])
                xh[m] = mu[m] + B @ (x[o] - mu[o])
                cc[n, j][np.ix_(m, m)] = S[np.ix_(m, m)] - B @ S[np.ix_(o, m)]
            xhat[n, j] = xh
    return wlp, xhat, cc


def ref_m_step(params, X, w, cov_type, reg_covar):
    """The M-step written out: weights, means and the four covariance types."""
    wlp, xhat, cc = ref_e_step(params, X)
    gamma = np.exp(wlp - np.logaddexp.reduce(wlp, axis=1, keepdims=True))
    g = gamma * w[:, None]
    nk = g.sum(0)
    means = np.einsum("nk,nkd->kd", g, xhat) / nk[:, None]
    diff = xhat - means[None]
    S = (np.einsum("nk,nkd,nke->kde", g, diff, diff) + np.einsum("nk,nkde->kde", g, cc))
    d = X.shape[1]
    if cov_type == "full":
        covs = S / nk[:, None, None] + reg_covar * np.eye(d)
    elif cov_type == "tied":
        covs = S.sum(0) / nk.sum() + reg_covar * np.eye(d)
    elif cov_type == "diag":
        covs = np.diagonal(S, axis1=1, axis2=2) / nk[:, None] + reg_covar
    else:
        covs = np.diagonal(S, axis1=1, axis2=2).mean(1) / nk + reg_covar
    return nk / nk.sum(), means, covs, np.logaddexp.reduce(wlp, axis=1), gamma, xhat


def _data(X, w, cov_type, k=K, chunk_size=None, size_classes=False):
    data, rows = ms.layout(X, w, k, cov_type, chunk_size, size_classes=size_classes)
    return jax.tree_util.tree_map(jnp.asarray, data), rows


@functools.partial(jax.jit, static_argnames=("cov_type", "reg"))
def one_step(params, data, cov_type, reg):
    """One compiled E-step and M-step: new parameters, mean and per-row log-likelihoods."""
    e_step, m_step, _ = ms.make_model(cov_type, reg)
    (stats, cand), mean_ll = e_step(params, data)
    _, ll_rows = ms.e_step_stats(params, data)
    return m_step((stats, cand), data).params, mean_ll, ll_rows


# ------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("cov_type, classes",
                         [(c, False) for c in COV_TYPES] + [("full", True)])
def test_e_step_m_step_and_log_likelihood_match_reference(cov_type, classes):
    rng = np.random.default_rng(1)
    X = holes(rng)
    w = rng.uniform(0.5, 2.0, N)
    params = random_params(rng, cov_type, K, D)
    wts, means, covs, ll_ref, gamma_ref, xhat = ref_m_step(params, X, w, cov_type, REG)
    # chunks of 3 rows: several chunks per bucket and padding rows
    data, rows = _data(X, w, cov_type, chunk_size=3, size_classes=classes)
    if classes:  # every bucket of the coarse ladder, rows padded past their size class
        assert data.x.shape[0] >= _sizes.size_class(N) > N
        if cov_type == "full":
            assert [s.shape[2] for s in data.slots] == list(ms.class_slot_ladder(D))
    elif cov_type in ("full", "tied"):  # a bucket factorised per pattern, over several chunks
        assert any(p.shape[1] for p in data.pwin)
        # chunks restricted to their missing columns; a bucket split into rows of shared
        # patterns (factorised per pattern) and the others (per row)
        assert any(u.shape[1] for u in data.ucols)
        n_slots = [s.shape[2] for s in data.slots]
        assert len(set(n_slots)) < len(n_slots)
    centred = params._replace(means=params.means - data.center)
    new, mean_ll, ll_rows = one_step(centred, data, cov_type, REG)
    keep = rows >= 0
    ll = np.empty(N)
    ll[rows[keep]] = np.asarray(ll_rows)[keep]
    np.testing.assert_allclose(ll, ll_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(float(mean_ll), np.sum(w * ll_ref) / np.sum(w), rtol=1e-10)
    np.testing.assert_allclose(new.weights, wts, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(new.means + data.center, means, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(new.covariance.covariances, covs, rtol=1e-10, atol=1e-10)
    # the model's per-row outputs: responsibilities and conditional-mean imputation
    rr = ms.row_results(params, X)
    np.testing.assert_allclose(jax.nn.softmax(rr.weighted_log_prob, axis=1), gamma_ref,
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(rr.imputed, np.einsum("nk,nkd->nd", gamma_ref, xhat),
                               rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ms.score_samples(params, X), ll_ref, rtol=1e-10)


def expected_complete_ll(p, w, gamma, xhat, cc, reg_covar):
    """Q = E[log p(x, z | theta)] over z and the missing entries, given the E-step's gamma,
    conditional means and covariances: the complete-data Q at xhat plus -1/2 tr(P_k C_nk)."""
    n, k, d = xhat.shape
    covs = obj.dense_covariances(p)
    q = 0.0
    for j in range(k):
        lp = obj.gaussian_log_density(xhat[:, j], p.means[j], covs[j])
        tr = jnp.einsum("de,ned->n", jnp.linalg.inv(covs[j]), cc[:, j])
        q = q + jnp.sum(w * gamma[:, j] * (jnp.log(p.weights[j]) + lp - 0.5 * tr))
        q = q - 0.5 * reg_covar * jnp.sum(w * gamma[:, j]) * jnp.trace(jnp.linalg.inv(covs[j]))
    return q


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_m_step_is_stationary_point_of_expected_complete_log_likelihood(cov_type):
    """jax.grad of the Lagrangian of Q (expectation over z and the missing entries) is zero
    at the M-step's output."""
    rng = np.random.default_rng(1)  # the data of the test above (its compiled step)
    X = holes(rng)
    w = rng.uniform(0.5, 2.0, N)
    params = random_params(np.random.default_rng(2), cov_type, K, D)
    reg = REG
    wlp, xhat, cc = ref_e_step(params, X)
    gamma = np.exp(wlp - np.logaddexp.reduce(wlp, axis=1, keepdims=True))
    data, _ = _data(X, w, cov_type, chunk_size=3)
    centred = params._replace(means=params.means - data.center)
    new = one_step(centred, data, cov_type, reg)[0]
    new = new._replace(means=new.means + data.center)
    total = float(np.sum(w))

    def lagrangian(p):
        q = expected_complete_ll(p, w, gamma, xhat, cc, reg)
        return q - total * (jnp.sum(p.weights) - 1.0)

    g = jax.grad(lagrangian)(new)
    chex.assert_trees_all_close(g.weights, np.zeros(K), atol=1e-9 * total)
    chex.assert_trees_all_close(g.means, np.zeros((K, D)), atol=1e-9 * total)
    chex.assert_trees_all_close(g.covariance.covariances,
                                np.zeros_like(new.covariance.covariances), atol=1e-9 * total)


@pytest.mark.parametrize("cov_type, dtype", [("full", np.float64), ("tied", np.float32)])
def test_fit_is_monotone_and_keeps_dtype(cov_type, dtype):
    rng = np.random.default_rng(3)
    truth = np.array([[0.0, 0.0, 0.0, 0.0], [4.0, 4.0, 0.0, 1.0], [-3.0, 3.0, 2.0, -2.0]])
    X = truth[np.arange(150) % 3] + rng.normal(size=(150, D))
    X[rng.uniform(size=X.shape) < 0.25] = np.nan
    X[np.isnan(X).all(1), 0] = 1.0
    X = X.astype(dtype)
    res = ms.fit(X, 3, covariance_type=cov_type, tol=0.0, max_iter=30, n_init=2,
                            key=jax.random.key(0), sample_weight=rng.uniform(0.5, 2.0, 150))
    assert res.params.means.dtype == dtype
    assert int(res.status) & ~emjax.em.STATUS_RESEEDED == 0
    h = np.asarray(res.restarts.history)
    step = np.diff(h, axis=1)
    slack = 1e-4 if dtype == np.float32 else 1e-10
    assert np.all(step > -slack * np.abs(h[:, 1:])), step.min()
    found = np.sort(np.asarray(res.params.means)[:, 0])
    np.testing.assert_allclose(found, np.sort(truth[:, 0]), atol=0.6)


def test_no_missing_equals_dense_steps():
    """Without NaN the steps are today's dense E- and M-steps."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(N, D))
    for cov_type in ("full",):
        params = random_params(rng, cov_type, K, D)
        data, rows = _data(X, None, cov_type)
        centred = params._replace(means=params.means - data.center)
        new, ll, _ = one_step(centred, data, cov_type, 1e-6)
        gamma, ll_ref = gmm.e_step(params, jnp.asarray(X))
        ref = gmm.m_step(gamma, jnp.asarray(X), covariance_type=cov_type, reg_covar=1e-6)
        np.testing.assert_allclose(ll, ll_ref, rtol=1e-12)
        np.testing.assert_allclose(new.means + data.center, ref.means, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(new.covariance.covariances, ref.covariance.covariances,
                                   rtol=1e-10, atol=1e-12)


def test_size_class_layouts_share_programs_and_equal_the_exact_layout(monkeypatch):
    """Data sets of one size class with other values and fewer rows, and 2..8 components, run
    the compiled fit and row program of the first; the fit equals the one on the exact layout
    with its components as asked (same draws)."""
    rng = np.random.default_rng(7)
    X1 = holes(rng, n=150)
    X2 = X1[rng.permutation(150)[:143]] * 1.5 + 0.3  # the same class (160 rows), new values
    kw = dict(covariance_type="full", n_init=2, key=jax.random.key(0), max_iter=20)
    rr1 = ms.row_results(ms.fit(X1, 3, **kw).params, X1)
    fits, rows = ms._fit_compiled._cache_size(), ms._rows_compiled._cache_size()
    r2 = ms.fit(X2, 3, **kw)
    rr2 = ms.row_results(r2.params, X2)
    r5 = ms.fit(X2, 5, **kw)
    assert (ms._fit_compiled._cache_size(), ms._rows_compiled._cache_size()) == (fits, rows)
    assert rr1.imputed.shape == X1.shape and rr2.imputed.shape == X2.shape
    assert r2.params.means.shape == (3, D) and r5.restarts.params.means.shape == (2, 5, D)
    np.testing.assert_allclose(np.sum(r5.params.weights), 1.0, rtol=1e-12)
    # the exact layout and 3 components: another program
    monkeypatch.setattr(ms, "CLASS_MAX_ROWS", 0)
    monkeypatch.setattr(ms, "_component_class", lambda *a: None)
    r3 = ms.fit(X2, 3, **kw)
    assert int(r3.n_iter) == int(r2.n_iter)
    np.testing.assert_allclose(r3.log_likelihood, r2.log_likelihood, rtol=1e-12)
    np.testing.assert_allclose(r3.params.means, r2.params.means, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(r3.params.covariance.covariances,
                               r2.params.covariance.covariances, rtol=1e-9, atol=1e-9)
    rr3 = ms.row_results(r2.params, X2)
    np.testing.assert_allclose(rr3.weighted_log_prob, rr2.weighted_log_prob, rtol=1e-12)
    np.testing.assert_allclose(rr3.imputed, rr2.imputed, rtol=1e-12, atol=1e-12)


def test_errors_name_the_problem():
    X = np.ones((5, 3))
    X[2] = np.nan
    with pytest.raises(ValueError, match="no observed value"):
        ms.fit(X, 1)
    X = np.ones((5, 3))
    X[:, 1] = np.nan
    with pytest.raises(ValueError, match="never observed"):
        ms.fit(X, 1)
    # observed only in rows of weight 0: float32 fits gave NaN means, float64 arbitrary ones
    X = np.ones((5, 3), np.float32)
    X[2:, 1] = np.nan
    w = np.array([0.0, 0.0, 1.0, 1.0, 1.0])
    for fn in (ms.fit, ms.fit_grid):
        with pytest.raises(ValueError, match="observed only in rows of sample_weight 0: 1"):
            fn(X, 1, sample_weight=w)
    X = np.ones((5, 3))
    X[0, 0] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        ms.fit(X, 1)


def test_row_results_check_the_model():
    """impute and the rows' scores check the model as the functional API does: a float64 model
    with x64 off was evaluated in float32 silently, mis-shaped parameters failed in a matmul."""
    params = random_params(np.random.default_rng(5), "full", K, D)
    X = holes(np.random.default_rng(6))
    with jax.enable_x64(False):
        for fn in (emjax.impute, ms.score_samples, ms.predict):
            with pytest.raises(ValueError, match="float64 but JAX's x64 mode is off"):
                fn(params, X)
    with pytest.raises(ValueError, match=r"params.weights has shape \(1,\)"):
        emjax.impute(params._replace(weights=params.weights[:1]), X)
    with pytest.raises(ValueError, match="params must be emjax.GMMParams; got tuple"):
        emjax.impute((params.weights, params.means), X)


def test_conditional_samples_have_the_conditional_moments():
    """Draws for one row with a fixed component: mean and covariance of the missing block."""
    rng = np.random.default_rng(5)
    params = random_params(rng, "full", 1, 3)
    x = np.array([[0.7, np.nan, np.nan]])
    X = np.repeat(x, 4000, axis=0)
    draws = np.asarray(ms.impute(params, X, key=jax.random.key(1)))[:, 1:]
    _, xhat, cc = ref_e_step(params, x)
    np.testing.assert_allclose(draws.mean(0), xhat[0, 0, 1:], atol=0.06)
    np.testing.assert_allclose(np.cov(draws.T), cc[0, 0, 1:, 1:], atol=0.06)
    np.testing.assert_array_equal(draws.shape, (4000, 2))


@pytest.mark.parametrize("fn, n_slots", [(ms._factor_unrolled, 5), (ms._factor_lapack, 8)])
def test_block_factorisations_match_numpy(fn, n_slots):
    """Unrolled (small blocks) and LAPACK (large blocks) factorisations: log|A|, A^-1 b, A^-1."""
    rng = np.random.default_rng(6)
    batch = (2, 5)
    a = rng.normal(size=batch + (n_slots, n_slots))
    A = a @ np.swapaxes(a, -1, -2) + n_slots * np.eye(n_slots)
    b = rng.normal(size=batch + (n_slots,))
    At = jnp.asarray(np.moveaxis(A, (-2, -1), (0, 1)))
    bt = jnp.asarray(np.moveaxis(b, -1, 0))
    f = jax.jit(fn, static_argnums=(2, 3))(At, bt, 1e-14, True)
    np.testing.assert_allclose(f.logdet, np.linalg.slogdet(A)[1], rtol=1e-12)
    y = np.linalg.solve(A, b[..., None])[..., 0]
    np.testing.assert_allclose(np.moveaxis(np.asarray(f.y), 0, -1), y, rtol=1e-10)
    np.testing.assert_allclose(np.sum(np.asarray(f.z) ** 2, 0), np.sum(b * y, -1),
                               rtol=1e-10)
    V = np.moveaxis(np.asarray(f.V), (0, 1), (-2, -1))
    np.testing.assert_allclose(V, np.linalg.inv(A), rtol=1e-10, atol=1e-12)
    Li = np.moveaxis(np.asarray(f.Li), (0, 1), (-2, -1))
    np.testing.assert_allclose(np.swapaxes(Li, -1, -2) @ Li, np.linalg.inv(A), atol=1e-12)


def test_row_results_of_tied_model_with_many_missing_entries_match_reference():
    """Tied covariances, rows missing more than UNROLL_MAX_SLOTS entries (LAPACK blocks, one per
    row for all components): score_samples, predict_proba and impute failed in an einsum."""
    rng = np.random.default_rng(6)
    d = ms.UNROLL_MAX_SLOTS + 2
    params = random_params(rng, "tied", K, d)
    X = rng.normal(size=(6, d))
    X[:3, 1:] = np.nan  # d - 1 missing entries
    wlp, xhat, _ = ref_e_step(params, X)
    gamma = np.exp(wlp - np.logaddexp.reduce(wlp, axis=1, keepdims=True))
    np.testing.assert_allclose(ms.score_samples(params, X), np.logaddexp.reduce(wlp, axis=1),
                               rtol=1e-10)
    np.testing.assert_allclose(ms.predict_proba(params, X), gamma, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(emjax.impute(params, X), np.einsum("nk,nkd->nd", gamma, xhat),
                               rtol=1e-10, atol=1e-10)


def test_sweep_matches_numpy():
    """The fit's sweep of the blocks: log|A|, A^-1 b, b^T A^-1 b and -A^-1."""
    rng = np.random.default_rng(7)
    J, batch = 5, (3, 2)
    a = rng.normal(size=batch + (J, J))
    A = a @ np.swapaxes(a, -1, -2) + J * np.eye(J)
    b = rng.normal(size=batch + (J,))
    At = jnp.asarray(np.moveaxis(A, (-2, -1), (0, 1)))
    bt = jnp.asarray(np.moveaxis(b, -1, 0))
    logdet, y, quad, neg_inv = jax.jit(ms._sweep)(At, bt, jnp.full((2,), 1e-14))
    np.testing.assert_allclose(logdet, np.linalg.slogdet(A)[1], rtol=1e-12)
    y_ref = np.linalg.solve(A, b[..., None])[..., 0]
    np.testing.assert_allclose(np.moveaxis(np.asarray(y), 0, -1), y_ref, rtol=1e-10)
    np.testing.assert_allclose(quad, np.sum(b * y_ref, -1), rtol=1e-10)
    np.testing.assert_allclose(np.moveaxis(np.asarray(neg_inv), (0, 1), (-2, -1)),
                               -np.linalg.inv(A), rtol=1e-10, atol=1e-12)


def test_api_opt_in_error_message_and_estimator():
    """NaN errors name the option; without NaN missing='marginalize' is today's fit bit for
    bit; the estimator scores, predicts and imputes rows with NaN."""
    rng = np.random.default_rng(8)
    X = np.concatenate([rng.normal(size=(40, 3)), rng.normal(size=(40, 3)) + 4.0])
    Xn = X.copy()
    Xn[rng.uniform(size=X.shape) < 0.2] = np.nan
    Xn[np.isnan(Xn).all(1), 0] = 0.0
    for call in (lambda: emjax.fit(Xn, 2), lambda: emjax.GaussianMixture(2).fit(Xn)):
        with pytest.raises(ValueError, match="missing='marginalize'"):
            call()
    a = emjax.fit(X, 2, covariance_type="diag", missing="marginalize")
    b = emjax.fit(X, 2, covariance_type="diag")
    chex.assert_trees_all_equal(a.params, b.params)
    with pytest.raises(ValueError, match="missing must be one of"):
        emjax.fit(Xn, 2, missing="drop")
    gm = emjax.GaussianMixture(2, covariance_type="diag", missing="marginalize",
                               random_state=0).fit(Xn)
    params = gm.params_
    np.testing.assert_allclose(gm.score_samples(Xn), ms.score_samples(params, Xn), rtol=1e-12)
    np.testing.assert_array_equal(gm.predict(Xn), np.asarray(ms.predict(params, Xn)))
    np.testing.assert_allclose(gm.predict_proba(Xn).sum(1), 1.0, rtol=1e-12)
    filled = gm.impute(Xn)
    obs = ~np.isnan(Xn)
    np.testing.assert_array_equal(filled[obs], Xn[obs])
    assert np.isfinite(filled).all() and np.isfinite(gm.bic(Xn))
    # diagonal covariances: a missing entry's conditional mean is the posterior-weighted mean
    gamma = gm.predict_proba(Xn)
    np.testing.assert_allclose(filled[~obs], (gamma @ gm.means_)[~obs], rtol=1e-10)
    assert np.isfinite(gm.impute(Xn, sample=True)).all()
    # fitted without the option: NaN in new rows names it, and setting it scores them
    gm.set_params(missing="error")
    with pytest.raises(ValueError, match="set missing='marginalize' .*no refit needed"):
        gm.predict(Xn)
    np.testing.assert_array_equal(gm.set_params(missing="marginalize").predict(Xn),
                                  np.asarray(ms.predict(params, Xn)))


def test_cli_and_selection_with_missing_entries(tmp_path, capsys):
    """`emjax fit data.csv --missing marginalize` chooses K by BIC on the observed-data
    log-likelihood; without the flag the error names it."""
    from emjax import cli

    rng = np.random.default_rng(9)
    X = np.concatenate([rng.normal(size=(50, 2)), rng.normal(size=(50, 2)) + 6.0])
    X[rng.uniform(size=X.shape) < 0.15] = np.nan
    X[np.isnan(X).all(1), 0] = 0.0
    path = tmp_path / "holes.csv"
    path.write_text("a,b\n" + "\n".join(",".join("" if np.isnan(v) else f"{v:.6f}" for v in r)
                                        for r in X) + "\n")
    assert cli.main(["fit", str(path), "-k", "2", "-c", "diag", "--no-plots",
                     "--no-progress"]) == 1
    assert "--missing marginalize" in capsys.readouterr().err
    out = tmp_path / "out"
    assert cli.main(["fit", str(path), "-k", "1-2", "-c", "diag", "-n", "1", "--missing",
                     "marginalize", "--no-plots", "--no-progress", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "K=2 by BIC" in text and (out / "model.npz").exists()
    pred = tmp_path / "pred.csv"
    assert cli.main(["predict", str(out / "model.npz"), str(path), "-o", str(pred)]) == 0
    labels = np.loadtxt(pred, delimiter=",", skiprows=1)[:, 0]
    assert len(labels) == 100 and len(set(labels[:50]) & set(labels[50:])) == 0
    # an explicit --missing error wins over the model's marginalisation
    assert cli.main(["predict", str(out / "model.npz"), str(path), "-o",
                     str(tmp_path / "p2.csv"), "--missing", "error"]) == 1
    assert "missing values" in capsys.readouterr().err and not (tmp_path / "p2.csv").exists()
    with jax.enable_x64(True):  # the CLI's max_iter (200): the grid is the CLI run's program
        grid = emjax.fit_grid(X, [1, 2], covariance_type="diag", missing="marginalize",
                              max_iter=200)
        one = emjax.fit(X, 2, covariance_type="diag", missing="marginalize", max_iter=200)
    np.testing.assert_allclose(grid.log_likelihood[1, 0], one.log_likelihood, rtol=1e-12)
    ll = float(np.sum(ms.score_samples(one.params, X)))
    p = gmm.n_parameters("diag", 2, 2)
    np.testing.assert_allclose(grid.bic[1, 0], -2 * ll + p * np.log(100), rtol=1e-10)
    # the functional API's NaN error names its NaN-aware twins
    with pytest.raises(ValueError, match=r"NaN.*use emjax.missing.score_samples"):
        emjax.score_samples(one.params, X)
    # tied: the grid pads the smaller fits' components (it raised KeyError 'tied')
    with jax.enable_x64(True):
        grid = emjax.fit_grid(X, [1, 2], covariance_type="tied", missing="marginalize",
                              max_iter=20)
        one = emjax.fit(X, 2, covariance_type="tied", missing="marginalize", max_iter=20)
    assert grid.params.covariance.covariances.shape == (2, 1, 2, 2)
    np.testing.assert_allclose(grid.log_likelihood[1, 0], one.log_likelihood, rtol=1e-12)
    np.testing.assert_array_equal(grid.params.weights[0, 0], [1.0, 0.0])


def test_max_iter_zero_initialises_only():
    """max_iter=0 with missing entries: the initial parameters, as for complete data (it was
    refused: 'max_iter must be an integer >= 1')."""
    rng = np.random.default_rng(8)  # test_api_opt_in_error_message_and_estimator's data
    X = np.concatenate([rng.normal(size=(40, 3)), rng.normal(size=(40, 3)) + 4.0])
    Xn = X.copy()
    Xn[rng.uniform(size=X.shape) < 0.2] = np.nan
    Xn[np.isnan(Xn).all(1), 0] = 0.0
    means0 = X[[0, 40]]
    with warnings.catch_warnings():
        warnings.simplefilter("error", emjax.ConvergenceWarning)
        gm = emjax.GaussianMixture(2, covariance_type="diag", missing="marginalize",
                                   max_iter=0, means_init=means0).fit(Xn)
    assert gm.n_iter_ == 0 and not gm.converged_ and len(gm.lower_bounds_) == 0
    np.testing.assert_allclose(gm.means_, means0, rtol=1e-12)
    np.testing.assert_allclose(gm.lower_bound_, gm.score(Xn), rtol=1e-12)
    # pandas' nullable dtypes hold pd.NA, which float() refuses: read as NaN (scikit-learn does)
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame(Xn, columns=["a", "b", "c"]).astype("Float64")
    assert df.isna().to_numpy().sum() == np.isnan(Xn).sum() > 0
    np.testing.assert_allclose(gm.score(df), gm.score(Xn), rtol=1e-12)
    kw = dict(covariance_type="diag", missing="marginalize", max_iter=0, means_init=means0,
              random_state=0)
    gm_df = emjax.GaussianMixture(2, **kw).fit(df)
    gm_np = emjax.GaussianMixture(2, **kw).fit(Xn)
    np.testing.assert_allclose(gm_df.lower_bound_, gm_np.lower_bound_, rtol=1e-12)
    assert list(gm_df.feature_names_in_) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="missing='marginalize'"):
        emjax.fit(df, 2)
