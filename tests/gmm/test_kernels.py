"""The fused, chunked pass (``gmm.e_step_stats`` and the driver's fused model) against the
dense reference steps and a float64 NumPy formula: all covariance types, both dtypes, every
pass plan variant (forced by passing a plan), chunk sizes that do and do not divide N."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import emjax
from emjax import em, gmm
from emjax.gmm import PassPlan, fitting, kernels, make_plan
from emjax.gmm import plan as plan_lib
from tests.conftest import COV_TYPES, DTYPES

N, D, K = 200, 3, 3


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


def _variants(cov_type, dtype):
    """Plans that force every layout, form and orientation of the pass on this small problem:
    the CPU and plain (GPU/TPU) defaults, then each variant, in chunks that divide N (50), do
    not (64) and one chunk (N)."""
    base = make_plan(cov_type, dtype, N, D, K, backend="cpu").replace(fused=True)
    plans = [base, make_plan(cov_type, dtype, N, D, K, backend="gpu")]
    forms = {"full": ("packed", "whitened")}.get(cov_type, (cov_type,))
    for form in forms:
        for layout in plan_lib._LAYOUTS_OF[form]:
            products = {"rows": ("transposed", "select_gemm", "gather"),
                        "features": ("select_gemm", "gather")}.get(layout, ("gather",))
            products = products if form == "packed" else ("gather",)
            scatters = plan_lib.WHITENED_SCATTERS if form == "whitened" else ("gx_x",)
            combos = [(p, s) for p in products for s in scatters]
            combos = (combos * 3)[:max(3, len(combos))]
            for i, (prod, scat) in enumerate(combos):
                plans.append(base.replace(
                    form=form, layout=layout, chunk_size=(50, 64, N)[i % 3],
                    packed_products=prod, whitened_scatter=scat,
                    materialise_transposes=bool(i % 2)))
    return plans


@functools.partial(jax.jit, static_argnames=("cov_type", "plans"))
def _all_plans(params, X, w, cov_type, plans):
    """Everything compared below, in one compiled program (one compile per test case)."""
    log_resp, ll_ref = gmm.e_step_full(params, X)
    gamma = jnp.exp(log_resp)
    ref_params = gmm.m_step(gamma, X, covariance_type=cov_type, sample_weight=w)
    c = jnp.mean(X, 0)
    out = []
    for i, plan in enumerate(plans):
        # The driver's form (a fixed centre, the inputs built once) for every other plan.
        center = c if i % 2 else None
        inputs = gmm.prepare(plan, X, c) if i % 2 else None
        stats, ll = gmm.e_step_stats(params, X, w, plan=plan, center=center, inputs=inputs)
        dense = gmm.suff_stats(gamma, X, stats.ref, covariance_type=cov_type, sample_weight=w)
        chunked = gmm.suff_stats(gamma, X, stats.ref, covariance_type=cov_type, sample_weight=w,
                                 chunk_size=plan.chunk_size)
        new = gmm.params_from_stats(stats, covariance_type=cov_type)
        scored = gmm.score_samples_chunked(params, X, plan=plan)
        out.append((stats, ll, dense, new, scored, chunked))
    return ll_ref, ref_params, out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_e_step_stats_equals_dense_path(cov_type, dtype):
    """Every plan variant's fused pass gives the dense reference's log-likelihoods, statistics
    and M-step."""
    X, Xj, wj, params = _problem(dtype, cov_type, offset=20.0)
    rtol, atol = _tol(dtype)
    plans = tuple(_variants(cov_type, dtype))
    ll_ref, ref_params, fast = _all_plans(params, Xj, wj, cov_type, plans)
    # independent check of the reference log-likelihood itself
    lp = _numpy_log_prob(params, X.astype(dtype).astype(np.float64))
    np.testing.assert_allclose(ll_ref, np.logaddexp.reduce(lp, axis=1), rtol=10 * rtol)
    for plan, (stats, ll, dense, new, scored, chunked) in zip(plans, fast):
        # suff_stats itself, chunked or not, is the same sum
        for a, b in zip(chunked, dense):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol * N)
        assert ll.shape == (N,) and ll.dtype == dtype
        np.testing.assert_allclose(ll, ll_ref, rtol=rtol, atol=atol, err_msg=str(plan))
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
            np.testing.assert_allclose(stats.sxx, dense.sxx, rtol=rtol, atol=atol * N,
                                       err_msg=str(plan))
        if plan.form == "whitened":
            np.testing.assert_array_equal(stats.sxx, np.swapaxes(stats.sxx, 1, 2))
        assert new.means.dtype == dtype
        for a, b in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(ref_params)):
            np.testing.assert_allclose(a, b, rtol=10 * rtol, atol=10 * atol)


def test_feature_blocks_cover_rows():
    """feature_blocks lays out the feature rows to cover every row once, in order."""
    X = jnp.arange(14.0).reshape(7, 2)
    blocks = gmm.feature_blocks(X, jnp.zeros(2), "diag", 3)
    assert [b.shape for b in blocks] == [(3, 5), (3, 5), (1, 5)]
    np.testing.assert_array_equal(jnp.concatenate(blocks),
                                  gmm.feature_rows(X, jnp.zeros(2), "diag"))


@pytest.mark.parametrize("backend", ("cpu", "gpu", "tpu", "unknown"))
def test_make_plan(backend):
    """make_plan is pure and hashable, its plans are valid for their covariance type, the
    chunks of its feature layouts stay within their byte budget and no chunk is a sliver; any
    non-CPU backend gets the plain row-chunk pass."""
    for ct in COV_TYPES:
        for dt in DTYPES:
            sizes = ((200, 3, 3), (10_000, 16, 16), (100_000, 64, 4), (10**6, 16, 16))
            for n, d, k in sizes:
                plan = make_plan(ct, dt, n, d, k, backend=backend)
                assert plan == make_plan(ct, dt, n, d, k, backend=backend)
                assert hash(plan) == hash(make_plan(ct, dt, n, d, k, backend=backend))
                assert plan.covariance_type == ct and plan.backend == backend
                # small problems take the dense reference steps, the larger ones the fused
                # pass (from a size per covariance type, or from a number of rows)
                t = plan_lib.tuning(backend)
                assert plan.fused == (n * d * k >= t.fused_min_size[ct]
                                      or n > t.dense_max_samples)
                assert plan.fused == ((n, d, k) != sizes[0]) or backend == "cpu"
                n_chunks = -(-n // plan.chunk_size)
                if plan.layout in ("features", "feature_blocks") or backend != "cpu":
                    assert n_chunks * plan.chunk_size - n < n_chunks  # split evenly
                if backend != "cpu":
                    assert plan.layout == "rows" and not plan.materialise_transposes
                    assert plan.form == ("whitened" if ct == "full" else ct)
                    assert plan.chunk_size <= n
    with pytest.raises(ValueError, match="layout"):
        make_plan("tied", np.float32, 10, 2, 2).replace(layout="features")
    with pytest.raises(ValueError, match="form"):
        PassPlan("diag", form="packed")
    with pytest.raises(ValueError, match="chunk_size"):
        PassPlan("diag", chunk_size=0)
    text = emjax.explain_plan(100_000, 16, 16, covariance_type="full", backend=backend)
    assert "fused chunked pass" in text and "100000" in text
    for n, d in ((100_000, 16), (1000, 15), (150, 4)):  # fused, dense, unrolled: one M-step line
        text = emjax.explain_plan(n, d, 3, covariance_type="full", backend=backend)
        assert sum(row.lstrip().startswith("M-step") for row in text.splitlines()) == 1, text
    # a small tied fit runs the full fit's program, pooled; a large one its own
    assert "as 'full' covariances pooled" in emjax.explain_plan(
        1000, 15, 3, covariance_type="tied", backend=backend)
    assert "pooled by" not in emjax.explain_plan(100_000, 16, 16, covariance_type="tied",
                                              backend=backend)
    # planned for the shape emjax.fit runs: rows and components padded to their classes
    # (here 2048 x 64 x 8 = 2^20: tied alone would take the fused pass; it runs pooled in the
    # dense full program, which is not fused at that size)
    text = emjax.explain_plan(1797, 64, 2, covariance_type="tied", dtype="float64",
                              backend=backend)
    assert "2048 rows (251 of weight 0) and 8 components (6 of weight 0)" in text
    assert emjax.make_plan("tied", "float64", 2048, 64, 8, backend=backend).fused
    if backend == "cpu":
        assert "dense reference steps" in text and "pooled by" in text
    else:  # unmeasured backends fuse the full program there too: each type its own
        assert "fused chunked pass" in text and "pooled by" not in text
    # a pooled fit is described by the program it runs (the full one), at the tiny level
    text = emjax.explain_plan(150, 4, 3, covariance_type="diag", backend=backend)
    if backend == "cpu":
        assert text.startswith("PassPlan for covariance_type='full'")
        assert "covariance_type='diag': emjax.fit" in text and "tiny data" in text
        assert "optimisation level: 1" in text


@pytest.mark.parametrize("cov_type", ("full", "spherical"))
def test_fast_driver_equals_dense_driver(cov_type):
    """Five EM iterations through the driver: fused model == dense model (float64)."""
    _, Xj, wj, params = _problem(np.float64, cov_type, seed=2)
    # as emjax.fit's float64 plan: feature row blocks with their transposes, built once
    plan = make_plan(cov_type, np.float64, N, D, K, backend="cpu").replace(
        fused=True, chunk_size=64, layout="feature_blocks")

    @functools.partial(jax.jit, static_argnames="plan")
    def run(p0, X, w, plan):
        c = jnp.mean(X, 0)
        e, m, r = fitting.make_model(cov_type, 1e-6, plan=plan, center=c,
                                     inputs=gmm.prepare(plan, X, c) if plan.fused else None)
        return em.run(e, m, p0, (X, w), tol=0.0, max_iter=5, repair=r)

    # the dense reference steps, and the unrolled steps of small problems
    for other in (plan.replace(fused=False, unrolled=False),
                  plan.replace(fused=False, unrolled=True)):
        a, b = run(params, Xj, wj, plan), run(params, Xj, wj, other)
        assert int(a.n_iter) == int(b.n_iter) == 5
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
            np.testing.assert_allclose(x, y, rtol=1e-8, atol=1e-10)
        # A component far from all data empties at once: both re-seed it, identically.
        far = params._replace(means=params.means.at[0].set(1e3))
        a, b = run(far, Xj, wj, plan), run(far, Xj, wj, other)
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
    plan = make_plan(cov_type, np.float32, N, D, K).replace(chunk_size=64)
    got = jax.jit(functools.partial(gmm.score_samples_chunked, plan=plan))(params, Xj)
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
    """Both ways of forming the packed outer products (selection GEMMs, a gather) give exactly
    ``x_i x_j``, ``i <= j``, in triu order."""
    x = np.random.default_rng(5).normal(size=(7, d)).astype(dtype)
    iu, ju = np.triu_indices(d)
    for products in ("select_gemm", "gather"):
        got = kernels._packed_outer(jnp.asarray(x), products)
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, x[:, iu] * x[:, ju])


@pytest.mark.parametrize("cov_type", ("full", "diag", "spherical"))
def test_fast_path_fit_equals_sklearn(cov_type, fused_from_2_20, production_compile_options):
    """emjax.fit on the fast path (float64: the features built once, gmm.feature_rows; full
    covariances in their packed form) takes the same EM steps as scikit-learn from the same
    start (5 iterations, tol 0). Compiled with the fits' own XLA options, as a user gets them."""
    import warnings

    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(3)
    k, d, n = 16, 16, 4200
    X = rng.normal(size=(k, d))[rng.integers(0, k, n)] * 3 + rng.normal(size=(n, d)) + 50.0
    plan = make_plan(cov_type, np.float64, n, d, k, backend="cpu")
    assert plan.fused and plan.layout in ("features", "feature_blocks")
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
        res = emjax.fit(X, k, covariance_type=cov_type, params_init=p0, max_iter=5, tol=0.0,
                        plan=plan)
        assert int(res.n_iter) == 5
        np.testing.assert_allclose(res.params.weights, sk.weights_, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(res.params.means, sk.means_, rtol=1e-8)
        np.testing.assert_allclose(res.params.covariance.covariances, sk.covariances_,
                                   rtol=1e-7)
        # at the returned parameters (scikit-learn's score: its own formula)
        np.testing.assert_allclose(res.log_likelihood, sk.score(X), rtol=1e-10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_plain_plan_fit_equals_cpu_plan_fit(dtype, fused_from_2_20):
    """emjax.fit under the GPU/TPU default plan (row chunks, whitened full covariances), forced
    on CPU, gives the CPU plan's fit to rounding."""
    rng = np.random.default_rng(9)
    k, d, n = 16, 16, 4096
    X = (rng.normal(size=(k, d))[rng.integers(0, k, n)] * 3 + rng.normal(size=(n, d))
         + 10.0).astype(dtype)
    cpu = make_plan("full", dtype, n, d, k, backend="cpu")
    plain = make_plan("full", dtype, n, d, k, backend="gpu")
    assert cpu.fused and plain.fused and cpu.form != plain.form
    assert make_plan("full", dtype, n, d, k, backend="tpu").replace(backend="gpu") == plain
    a, b = (emjax.fit(X, k, key=jax.random.key(1), max_iter=5, tol=0.0, plan=p)
            for p in (cpu, plain))
    tol = 2e-3 if dtype == np.float32 else 1e-8
    np.testing.assert_allclose(a.log_likelihood, b.log_likelihood, rtol=tol / 10)
    for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
        np.testing.assert_allclose(x, y, rtol=tol, atol=tol)
