"""The fused, chunked fast path (``gmm.e_step_stats`` and the driver's fast model) against the
dense reference steps and a float64 NumPy formula: all covariance types, both dtypes, chunk
sizes that do and do not divide the number of samples."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import COV_TYPES, DTYPES

from emjax import em, gmm
from emjax.gmm import fitting, kernels

N, D, K = 200, 3, 3
CHUNKS = (50, 64, None)  # divides N, does not divide N, default (one chunk here)


def _tol(dtype):
    return (2e-4, 2e-4) if np.dtype(dtype) == np.float32 else (1e-9, 1e-9)


def _problem(dtype, cov_type, offset=0.0, seed=0):
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.normal(size=(N // 2, D)),
                        rng.normal(size=(N - N // 2, D)) * 0.5 + 3.0]) + offset
    resp = rng.dirichlet(np.ones(K), size=N)
    w = rng.uniform(0.5, 2.0, size=N)
    Xj, rj, wj = (jnp.asarray(a.astype(dtype)) for a in (X, resp, w))
    params = gmm.m_step(rj, Xj, covariance_type=cov_type)
    return X, Xj, wj, params


def _numpy_log_prob(params, X):
    """Dense float64 ``log pi_k + log N(x | mu_k, Sigma_k)`` via explicit full covariances."""
    from emjax.gmm import covariance as cov_lib

    k, d = params.means.shape
    covs = np.asarray(cov_lib.as_full(params.covariance, k, d), np.float64)
    means = np.asarray(params.means, np.float64)
    out = np.empty((X.shape[0], k))
    for j in range(k):
        diff = X - means[j]
        sol = np.linalg.solve(covs[j], diff.T).T
        _, logdet = np.linalg.slogdet(covs[j])
        out[:, j] = (np.log(float(params.weights[j])) - 0.5 * np.sum(diff * sol, 1)
                     - 0.5 * logdet - 0.5 * d * np.log(2 * np.pi))
    return out


@functools.partial(jax.jit, static_argnames="cov_type")
def _both_paths(params, X, w, cov_type):
    """Everything compared below, in one compiled program (one compile per test case)."""
    log_resp, ll_ref = gmm.e_step_full(params, X)
    gamma = jnp.exp(log_resp)
    ref_params = gmm.m_step(gamma, X, covariance_type=cov_type, sample_weight=w)
    fast = []
    for chunk in CHUNKS:
        stats, ll = gmm.e_step_stats(params, X, w, chunk_size=chunk)
        dense = gmm.suff_stats(gamma, X, stats.ref, covariance_type=cov_type, sample_weight=w)
        chunked = gmm.suff_stats(gamma, X, stats.ref, covariance_type=cov_type, sample_weight=w,
                                 chunk_size=chunk)
        new = gmm.params_from_stats(stats, covariance_type=cov_type)
        scored = gmm.score_samples_chunked(params, X, chunk_size=chunk)
        fast.append((stats, ll, dense, new, scored, chunked))
    # The driver's form: X^T handed in once (read by the diagonal and spherical pass).
    given_t = gmm.e_step_stats(params, X, w, chunk_size=CHUNKS[0], X_t=X.T)
    if cov_type in ("diag", "spherical", "full"):
        # emjax.fit's form: the features [q, x - c, 1] about the data's mean, built once.
        c = jnp.mean(X, 0)
        xf = gmm.feature_rows(X, c, cov_type)
        for chunk, entry in zip(CHUNKS, list(fast)):
            stats, ll = gmm.e_step_stats(params, X, w, chunk_size=chunk, center=c, X_f=xf)
            dense = gmm.suff_stats(gamma, X, stats.ref, covariance_type=cov_type, sample_weight=w)
            chunked = gmm.suff_stats(gamma, X, stats.ref, covariance_type=cov_type,
                                     sample_weight=w, chunk_size=chunk)
            new = gmm.params_from_stats(stats, covariance_type=cov_type)
            fast.append((stats, ll, dense, new, entry[4], chunked))
            # with their transpose too: the moments as X_ft @ g
            stats_t, ll_t = gmm.e_step_stats(params, X, w, chunk_size=chunk, center=c, X_f=xf,
                                             X_ft=xf.T)
            fast.append((stats_t, ll_t, dense, gmm.params_from_stats(
                stats_t, covariance_type=cov_type), entry[4], chunked))
            # as row blocks (the driver's form, FEATURE_BLOCKS_MAX_BYTES), with and without
            # their transposes; blocks of `chunk` rows (the last smaller when it does not
            # divide N), read block by block
            blocks = gmm.feature_blocks(X, c, cov_type, chunk or N)
            for xft in (tuple(b.T for b in blocks), None):
                stats_b, ll_b = gmm.e_step_stats(params, X, w, center=c, X_f=blocks, X_ft=xft)
                fast.append((stats_b, ll_b, dense, gmm.params_from_stats(
                    stats_b, covariance_type=cov_type), entry[4], chunked))
    return ll_ref, ref_params, fast, given_t


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_e_step_stats_equals_dense_path(cov_type, dtype):
    X, Xj, wj, params = _problem(dtype, cov_type, offset=20.0)
    rtol, atol = _tol(dtype)
    ll_ref, ref_params, fast, given_t = _both_paths(params, Xj, wj, cov_type)
    chex.assert_trees_all_equal(given_t, fast[0][:2])
    # independent check of the reference log-likelihood itself
    lp = _numpy_log_prob(params, X.astype(dtype).astype(np.float64))
    np.testing.assert_allclose(ll_ref, np.logaddexp.reduce(lp, axis=1), rtol=10 * rtol)
    for stats, ll, dense, new, scored, chunked in fast:
        # suff_stats itself, chunked or not, is the same sum
        for a, b in zip(chunked, dense):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol * N)
        assert ll.shape == (N,) and ll.dtype == dtype
        np.testing.assert_allclose(ll, ll_ref, rtol=rtol, atol=atol)
        np.testing.assert_allclose(scored, ll_ref, rtol=rtol, atol=atol)
        # the statistics are the dense suff_stats about the same reference point
        np.testing.assert_allclose(stats.nk, dense.nk, rtol=rtol)
        np.testing.assert_allclose(stats.sx, dense.sx, rtol=rtol, atol=atol * N)
        if cov_type == "tied":  # pooled: only the sum over components is defined
            np.testing.assert_allclose(stats.sxx.sum(0), dense.sxx.sum(0), rtol=rtol)
        elif cov_type == "spherical":  # only the sum over features is defined
            np.testing.assert_allclose(stats.sxx.sum(1), dense.sxx.sum(1), rtol=rtol,
                                       atol=atol * N)
        else:
            np.testing.assert_allclose(stats.sxx, dense.sxx, rtol=rtol, atol=atol * N)
        assert new.means.dtype == dtype
        for a, b in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(ref_params)):
            np.testing.assert_allclose(a, b, rtol=10 * rtol, atol=10 * atol)


def test_feature_block_size():
    """Blocks of at most FEATURE_BLOCK_ROWS rows (and FEATURE_CHUNK_BYTES), split evenly, that
    feature_blocks lays out to cover every row once, in order."""
    rows = kernels.FEATURE_BLOCK_ROWS
    assert kernels.feature_block_size(10_000, 33, 16, 8) == 5_000  # FEATURE_MIN_BLOCKS
    assert kernels.feature_block_size(2_000, 33, 16, 8) == 2_000
    assert kernels.feature_block_size(100_000, 129, 16, 8) == 25_000
    for n, cols, k in ((100_000, 33, 16), (3 * rows + 1, 9, 2), (200_000, 153, 64)):
        size = kernels.feature_block_size(n, cols, k, 8)
        assert size <= rows and size * max(cols, k) * 8 <= kernels.FEATURE_CHUNK_BYTES
        per_chunk = kernels.FEATURE_CHUNK_BYTES // (8 * max(cols, k))
        assert -(-n // size) == -(-n // min(rows, per_chunk))
    X = jnp.arange(14.0).reshape(7, 2)
    blocks = gmm.feature_blocks(X, jnp.zeros(2), "diag", 3)
    assert [b.shape for b in blocks] == [(3, 5), (3, 5), (1, 5)]
    np.testing.assert_array_equal(jnp.concatenate(blocks),
                                  gmm.feature_rows(X, jnp.zeros(2), "diag"))


def test_feature_chunk_size():
    """One block up to FEATURE_ONE_CHUNK_BYTES of features, else even chunks of about
    FEATURE_CHUNK_BYTES that cover every row (no remainder)."""
    one = kernels.FEATURE_ONE_CHUNK_BYTES
    assert kernels.feature_chunk_size(100_000, 65, 16, 8) == 100_000  # 52 MB
    assert kernels.feature_chunk_size(one // 8 // 33, 33, 16, 8) == one // 8 // 33
    for n, cols, k, size in [(100_000, 129, 16, 8), (10**6, 33, 16, 4), (10**6, 17, 64, 8),
                             (123_457, 129, 16, 8)]:
        chunk = kernels.feature_chunk_size(n, cols, k, size)
        n_chunks = -(-n // chunk)
        assert n_chunks > 1 and n_chunks * chunk - n < n_chunks
        assert chunk * max(cols, k) * size <= 1.01 * kernels.FEATURE_CHUNK_BYTES
    # e_step_stats' default: the rule above with features, one whitened block within
    # WHITENED_ONE_CHUNK_BYTES (N = 1e5, D = 16, K = 2: 54 MB), else default_chunk_size
    assert gmm.pass_chunk_size(100_000, 16, 16, "diag", np.float64, True) == 100_000
    assert gmm.pass_chunk_size(100_000, 16, 2, "full", np.float64) == 100_000
    assert gmm.pass_chunk_size(100_000, 32, 4, "full", np.float64) == gmm.default_chunk_size(
        32, "full", 8, 4)
    assert gmm.pass_chunk_size(100_000, 16, 16, "diag", np.float64) == gmm.default_chunk_size(
        16, "diag", 8, 16)


@pytest.mark.parametrize("cov_type", ("full", "spherical"))
def test_fast_driver_equals_dense_driver(cov_type):
    """Five EM iterations through the driver: fast model == dense model (float64)."""
    _, Xj, wj, params = _problem(np.float64, cov_type, seed=2)

    @functools.partial(jax.jit, static_argnames="fast")
    def run(p0, X, w, fast):
        c = jnp.mean(X, 0)
        # as emjax.fit, the features built once and read by every pass (X_f)
        inputs = fitting.pass_inputs(X, c, cov_type, K) if fast else {}
        e, m, r = fitting.make_model(cov_type, 1e-6, fast=fast, chunk_size=64, center=c,
                                     **inputs)
        return em.run(e, m, p0, (X, w), tol=0.0, max_iter=5, repair=r)

    # as emjax.fit: float64 features within FEATURE_BLOCKS_MAX_BYTES come as row blocks with
    # their transposes (float32 only with many components)
    cols = gmm.feature_rows(Xj, Xj[0], cov_type).shape[1]
    assert kernels.moments_transposed(N, cols, np.float64)
    assert not kernels.moments_transposed(N, D, np.float32, K)
    assert kernels.moments_transposed(N, D, np.float32, 64)
    assert kernels.moments_transposed(10**5, 33, np.float64)
    assert not kernels.moments_transposed(10**6, 33, np.float64)
    inputs = fitting.pass_inputs(Xj, Xj[0], cov_type, K)
    assert isinstance(inputs["X_f"], tuple) and len(inputs["X_f"]) == len(inputs["X_ft"])
    a, b = run(params, Xj, wj, True), run(params, Xj, wj, False)
    assert int(a.n_iter) == int(b.n_iter) == 5
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-8, atol=1e-10)
    # A component far from all data empties at once: both re-seed it, identically.
    far = params._replace(means=params.means.at[0].set(1e3))
    a, b = run(far, Xj, wj, True), run(far, Xj, wj, False)
    assert int(a.status) & em.STATUS_RESEEDED and int(b.status) & em.STATUS_RESEEDED
    assert np.all(np.abs(np.asarray(a.params.means)) < 10)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("cov_type", ("full", "diag"))
def test_float32_offset_data_keeps_digits(cov_type):
    """Data far from the origin (offset 1e3, unit scale): the float32 fast path's log-likelihood
    agrees with the float64 dense one to float32 accuracy (the chunks are centred)."""
    X, Xj, wj, params = _problem(np.float32, cov_type, offset=1e3, seed=3)
    p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
    ref = jax.jit(gmm.score_samples)(p64, jnp.asarray(X.astype(np.float32), jnp.float64))
    got = jax.jit(functools.partial(gmm.score_samples_chunked, chunk_size=64))(params, Xj)
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_steps_match_numpy(dtype):
    """``e_step`` / ``m_step`` (the public dense steps) still equal the NumPy formulas."""
    X, Xj, wj, params = _problem(dtype, "full", seed=4)
    rtol, _ = _tol(dtype)
    Xd = X.astype(dtype).astype(np.float64)
    lp = _numpy_log_prob(params, Xd)
    ll = np.logaddexp.reduce(lp, axis=1)
    gamma, mean_ll = gmm.e_step(params, Xj)
    np.testing.assert_allclose(gamma, np.exp(lp - ll[:, None]), rtol=10 * rtol, atol=1e-6)
    np.testing.assert_allclose(mean_ll, ll.mean(), rtol=rtol)
    g = np.asarray(gamma, np.float64) * np.asarray(wj, np.float64)[:, None]
    new = gmm.m_step(gamma, Xj, covariance_type="full", sample_weight=wj, reg_covar=1e-6)
    nk = g.sum(0) + 10 * np.finfo(dtype).eps
    means = g.T @ Xd / nk[:, None]
    np.testing.assert_allclose(new.means, means, rtol=rtol, atol=1e-5)
    for j in range(K):
        diff = Xd - means[j]
        cov = (g[:, j, None] * diff).T @ diff / nk[j] + 1e-6 * np.eye(D)
        np.testing.assert_allclose(new.covariance.covariances[j], cov, rtol=10 * rtol,
                                   atol=1e-5)


@pytest.mark.parametrize(("dtype", "d"), [(np.float32, 3), (np.float32, 49), (np.float64, 3)])
def test_packed_outer_products(dtype, d):
    """Both ways of forming the packed outer products (selection GEMMs for float32 with
    D <= 48, a gather otherwise) give exactly ``x_i x_j``, ``i <= j``, in triu order."""
    x = np.random.default_rng(5).normal(size=(7, d)).astype(dtype)
    iu, ju = np.triu_indices(d)
    got = kernels._packed_outer(jnp.asarray(x))
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, x[:, iu] * x[:, ju])


@pytest.mark.parametrize("dtype", DTYPES)
def test_whitened_full_path(monkeypatch, dtype):
    """Full covariances past ``SELECT_GEMM_MAX_FEATURES`` in float32, and with few components
    (``4 K <= D``) in both dtypes, take the whitened form (``x @ [U_1 ... U_K]`` and one GEMM
    for the weighted scatters): same statistics and log-likelihood as the dense reference. The
    thresholds are lowered so D = K = 3 takes it."""
    assert kernels._mode("full", 49, jnp.float32) == "whitened"
    assert kernels._mode("full", 48, jnp.float32) == "full"
    assert kernels._mode("full", 64, jnp.float64) == "full"
    for dt in (jnp.float32, jnp.float64):
        assert kernels._mode("full", 16, dt, 4) == "whitened"  # few components
        assert kernels._mode("full", 16, dt, 5) == "full"
    monkeypatch.setattr(kernels, "SELECT_GEMM_MAX_FEATURES", 2)
    monkeypatch.setattr(kernels, "FEW_COMPONENTS_RATIO", 1)
    # chunks of 50 and 64 rows form the scatter as [g_k x]^T x, the one block as x^T [g_k x]
    monkeypatch.setattr(kernels, "WHITENED_SCATTER_T_MAX_ROWS", 64)
    assert kernels._mode("full", D, dtype, K) == "whitened"
    X, Xj, wj, params = _problem(dtype, "full", offset=20.0, seed=6)
    rtol, atol = _tol(dtype)

    @jax.jit  # traced here, after the monkeypatch (a fresh cache)
    def run(params, X, w):
        log_resp, ll_ref = gmm.e_step_full(params, X)
        out = []
        for chunk in (50, 64, None):  # None: one block (WHITENED_ONE_CHUNK_BYTES)
            stats, ll = gmm.e_step_stats(params, X, w, chunk_size=chunk)
            dense = gmm.suff_stats(jnp.exp(log_resp), X, stats.ref, covariance_type="full",
                                   sample_weight=w)
            out.append((stats, ll, dense))
        return ll_ref, out

    ll_ref, out = run(params, Xj, wj)
    for stats, ll, dense in out:
        assert ll.dtype == dtype and stats.sxx.shape == (K, D, D)
        np.testing.assert_allclose(ll, ll_ref, rtol=rtol, atol=atol)
        np.testing.assert_allclose(stats.nk, dense.nk, rtol=rtol)
        np.testing.assert_allclose(stats.sx, dense.sx, rtol=rtol, atol=atol * N)
        np.testing.assert_allclose(stats.sxx, dense.sxx, rtol=rtol, atol=atol * N)
        np.testing.assert_array_equal(stats.sxx, np.swapaxes(stats.sxx, 1, 2))


@pytest.mark.parametrize("cov_type", ("diag", "spherical"))
def test_row_major_diagonal_pass(monkeypatch, cov_type):
    """Diagonal and spherical run on the transposed data by default; the row-major pass (the
    ``TRANSPOSED_DIAGONAL = False`` alternative) gives the same statistics and likelihoods."""
    _, Xj, wj, params = _problem(np.float64, cov_type, offset=5.0, seed=7)
    fused = jax.jit(functools.partial(gmm.e_step_stats, chunk_size=64))
    stats_t, ll_t = fused(params, Xj, wj)
    monkeypatch.setattr(kernels, "TRANSPOSED_DIAGONAL", False)
    stats_r, ll_r = jax.jit(functools.partial(gmm.e_step_stats, chunk_size=64))(params, Xj, wj)
    np.testing.assert_allclose(ll_r, ll_t, rtol=1e-12, atol=1e-12)
    chex.assert_trees_all_close(gmm.params_from_stats(stats_r, covariance_type=cov_type),
                                gmm.params_from_stats(stats_t, covariance_type=cov_type),
                                rtol=1e-11, atol=1e-12)
    if cov_type == "spherical":  # the transposed pass computes only the sum over features
        stats_r = stats_r._replace(sxx=stats_r.sxx.sum(1))
        stats_t = stats_t._replace(sxx=stats_t.sxx.sum(1))
    for a, b in zip(stats_r, stats_t):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-10)


@pytest.mark.parametrize("cov_type", ("full", "diag", "spherical"))
def test_fast_path_fit_equals_sklearn(cov_type):
    """emjax.fit on the fast path (float64: the features built once, gmm.feature_rows; full
    covariances in their packed form) takes the same EM steps as scikit-learn from the same
    start (5 iterations, tol 0)."""
    import warnings

    from sklearn.mixture import GaussianMixture

    import emjax

    rng = np.random.default_rng(3)
    k, d, n = 16, 16, 4200
    X = rng.normal(size=(k, d))[rng.integers(0, k, n)] * 3 + rng.normal(size=(n, d)) + 50.0
    assert n * d * k >= fitting.FAST_PATH_MIN_SIZE
    assert kernels.feature_pass(cov_type, np.float64, n, d, k)
    w0 = np.full(k, 1.0 / k)
    m0 = X[rng.choice(n, k, replace=False)]
    c0 = {"full": np.broadcast_to(np.eye(d), (k, d, d)), "diag": np.ones((k, d)),
          "spherical": np.ones(k)}[cov_type]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: tol = 0 never converges
        sk = GaussianMixture(k, covariance_type=cov_type, weights_init=w0, means_init=m0,
                             precisions_init=np.linalg.inv(c0) if cov_type == "full" else 1 / c0,
                             max_iter=5, tol=0.0, reg_covar=1e-6)
        sk.fit(X)
    with jax.enable_x64(True):
        p0 = emjax.make_params(w0, m0, c0, cov_type)
        res = emjax.fit(X, k, covariance_type=cov_type, params_init=p0, max_iter=5, tol=0.0)
        assert int(res.n_iter) == 5
        np.testing.assert_allclose(res.params.weights, sk.weights_, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(res.params.means, sk.means_, rtol=1e-8)
        np.testing.assert_allclose(res.params.covariance.covariances, sk.covariances_,
                                   rtol=1e-7)
        # at the returned parameters (scikit-learn's score: its own formula)
        np.testing.assert_allclose(res.log_likelihood, sk.score(X), rtol=1e-10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_packed_pass_both_orientations(monkeypatch, dtype):
    """The packed full pass on row chunks gives the same statistics and log-likelihoods whether
    it builds the products transposed (``PACKED_TRANSPOSED``, the default) or as rows."""
    X, Xj, wj, params = _problem(dtype, "full", offset=20.0, seed=8)
    rtol, atol = _tol(dtype)
    out = {}
    for flag in (True, False):
        monkeypatch.setattr(kernels, "PACKED_TRANSPOSED", flag)
        run = jax.jit(lambda p, x, w: (gmm.e_step_stats(p, x, w, chunk_size=64),
                                       gmm.score_samples_chunked(p, x, chunk_size=64)))
        out[flag] = run(params, Xj, wj)
    for a, b in zip(jax.tree_util.tree_leaves(out[True]), jax.tree_util.tree_leaves(out[False])):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol * N)
    log_resp, ll_ref = gmm.e_step_full(params, Xj)
    np.testing.assert_allclose(out[True][0][1], ll_ref, rtol=rtol, atol=atol)
