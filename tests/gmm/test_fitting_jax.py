"""Fits as JAX functions (under jit and vmap) and row padding to size classes: a padded fit, a
traced fit and a vmapped ragged batch each equal the plain fit of the same rows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import emjax
from emjax import _sizes, kmeans
from emjax.gmm import fitting
from emjax.gmm import plan as plan_lib


def _data(n, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    lab = np.arange(n) % 3
    X = rng.normal(size=(n, 2)) * (0.5 + 0.3 * lab)[:, None] + np.array([[0, 0], [4, 0], [0, 4]])[
        lab]
    return X.astype(dtype)


KW = dict(n_init=2, tol=1e-6, max_iter=40)


@pytest.mark.parametrize("dtype, init, n", [
    (np.float32, "kmeans", 101), (np.float64, "kmeans", 101), (np.float64, "random", 101),
    (np.float64, "random_from_data", 101),  # tiny: 128 rows, 16 features (14 of them padding)
    (np.float64, "kmeans", 601)])  # rows padded to the size class 608
def test_padded_fit_equals_the_unpadded_traced_fit(dtype, init, n):
    X = _data(n, dtype=dtype)
    assert _sizes.size_class(n) > n
    key = jax.random.key(3)
    kw = dict(KW, covariance_type="full", init_params=init)
    padded = emjax.fit(X, 3, key=key, **kw)
    # Under jit the fit runs on exactly the rows given (no padding).
    exact = jax.jit(lambda X, k: emjax.fit(X, 3, key=k, **kw))(jnp.asarray(X), key)
    assert int(padded.n_iter) == int(exact.n_iter)
    assert padded.params.means.dtype == dtype
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(padded.log_likelihood, exact.log_likelihood, **tol)
    for a, b in zip(jax.tree_util.tree_leaves(padded.params),
                    jax.tree_util.tree_leaves(exact.params)):
        np.testing.assert_allclose(a, b, **tol)


def test_tiny_data_sets_of_any_shape_share_one_program():
    """Tiny data (at most 512 rows and 16 features) run on 16 features, zero columns with
    identity covariance blocks, and a power of two of rows: iris-like and wine-like shapes
    share the programs, and each fit equals its unpadded (traced) fit."""
    rng = np.random.default_rng(5)
    shapes = [(150, 4), (178, 13), (200, 16)]
    data = [rng.normal(size=s) + 3.0 * (np.arange(s[0]) % 2)[:, None] for s in shapes]
    kw = dict(KW, key=1)
    emjax.fit(data[0], 3, covariance_type="tied", **kw)
    before = fitting.compiled_programs()
    for X, ct in zip(data, ("diag", "full", "spherical")):
        res = emjax.fit(X, 3, covariance_type=ct, **kw)
        assert fitting.compiled_programs() == before
        exact = jax.jit(lambda X, key, ct=ct: emjax.fit(X, 3, key=key, covariance_type=ct, **KW))(
            jnp.asarray(X), jax.random.key(1))
        assert int(res.n_iter) == int(exact.n_iter)
        np.testing.assert_allclose(res.log_likelihood, exact.log_likelihood, rtol=1e-12)
        np.testing.assert_allclose(res.restarts.history, exact.restarts.history, rtol=1e-12)
        for a, b in zip(jax.tree_util.tree_leaves(res.params),
                        jax.tree_util.tree_leaves(exact.params)):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_row_counts_of_one_size_class_share_one_program():
    before = fitting.compiled_programs()
    classes = {_sizes.size_class(n) for n in range(90, 97)}
    assert len(classes) == 1
    for n in range(90, 97):
        res = emjax.fit(_data(n, seed=n), 3, covariance_type="diag", **KW)
        assert np.isfinite(float(res.log_likelihood))
        if n == 90:  # the initialisation and EM, unless an earlier test compiled them
            first = fitting.compiled_programs()
            assert first - before <= 2
    assert fitting.compiled_programs() == first


def test_size_classes_cover_every_count_with_bounded_padding():
    for n in list(range(1, 3000)) + [10**5, 10**6 + 7]:
        c = _sizes.size_class(n)
        assert c >= n and c % 8 == 0
        assert c <= max(64, 1.2 * n + 8)
    assert len({_sizes.size_class(n) for n in range(65, 2**14)}) <= 4 * 8 + 1


def test_zero_weight_rows_are_never_drawn():
    n, pad = 30, 34
    X = jnp.asarray(_data(n + pad, seed=1))
    w = jnp.concatenate([jnp.ones(n), jnp.zeros(pad)])
    keys = jax.random.split(jax.random.key(0), 64)

    @jax.jit
    def draws(X, w):
        pp = jax.vmap(lambda k: kmeans.kmeans_plusplus(k, X, 5, w)[1])(keys)
        rows = jax.vmap(lambda k: kmeans.sample_rows(k, X.shape[0], 5, w))(keys)
        return pp, rows

    pp, rows = draws(X, w)
    assert int(jnp.max(pp)) < n and int(jnp.max(rows)) < n
    assert all(len(set(r)) == 5 for r in np.asarray(rows).tolist())
    # Padding appended to the data draws the same rows.
    pp0, rows0 = draws(X[:n], w[:n])
    np.testing.assert_array_equal(pp, pp0)
    np.testing.assert_array_equal(rows, rows0)


def test_vmapped_ragged_batch_equals_each_data_set_fitted_alone():
    sizes = [70, 96, 81]
    n_max = max(sizes)
    Xs = np.zeros((len(sizes), n_max, 2))
    W = np.zeros((len(sizes), n_max))
    for b, n in enumerate(sizes):
        Xs[b, :n] = _data(n, seed=10 + b)
        W[b, :n] = 1.0
    keys = jax.random.split(jax.random.key(0), len(sizes))
    batched = jax.jit(jax.vmap(lambda X, w, k: emjax.fit(X, 3, key=k, sample_weight=w, **KW)))(
        Xs, W, keys)
    assert batched.params.means.shape == (len(sizes), 3, 2)
    for b, n in enumerate(sizes):
        alone = emjax.fit(Xs[b, :n], 3, key=keys[b], **KW)
        assert int(alone.n_iter) == int(batched.n_iter[b])
        np.testing.assert_allclose(alone.log_likelihood, batched.log_likelihood[b], rtol=1e-12)
        np.testing.assert_allclose(alone.params.means, batched.params.means[b], rtol=1e-10,
                                   atol=1e-10)


def test_traced_fit_checks_shapes_and_options():
    f = jax.jit(lambda X: emjax.fit(X, 3, **KW).log_likelihood)
    with pytest.raises(ValueError, match="2-D"):
        f(jnp.zeros((10,)))
    with pytest.raises(ValueError, match="n_components"):
        f(jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match="sample_weight"):
        jax.jit(lambda X: emjax.fit(X, 2, sample_weight=jnp.ones(3), **KW))(jnp.zeros((5, 2)))
    with pytest.raises(ValueError, match="covariance_type"):
        jax.jit(lambda X: emjax.fit(X, 2, covariance_type="round"))(jnp.zeros((5, 2)))


def test_traced_max_iter_zero_initialises_only():
    """max_iter=0 under jit: the initial parameters, as outside it (it was refused there:
    'max_iter must be an integer >= 1')."""
    X = _data(101)
    key = jax.random.key(3)
    kw = dict(n_init=2, max_iter=0)
    plain = emjax.fit(X, 3, key=key, **kw)
    traced = jax.jit(lambda X, k: emjax.fit(X, 3, key=k, **kw))(jnp.asarray(X), key)
    assert int(traced.n_iter) == int(plain.n_iter) == 0 and traced.history.shape == (0,)
    np.testing.assert_allclose(traced.log_likelihood, plain.log_likelihood, rtol=1e-12)
    np.testing.assert_allclose(traced.params.means, plain.params.means, rtol=1e-12)


def test_traced_warm_start_continues_from_previous_log_likelihood():
    """A warm start under jit takes previous_log_likelihood (traced, from a traced fit too) and
    converges when the plain fit does; without params_init it is refused there as well."""
    X = _data(101)
    first = emjax.fit(X, 3, key=3, max_iter=3)
    prev = first.history[int(first.n_iter) - 1]
    kw = dict(tol=1e-3, max_iter=5)
    plain = emjax.fit(X, 3, params_init=first.params, previous_log_likelihood=float(prev), **kw)

    @jax.jit
    def chained(X):
        a = emjax.fit(X, 3, key=jax.random.key(3), max_iter=3)
        return emjax.fit(X, 3, params_init=a.params,
                         previous_log_likelihood=a.history[a.n_iter - 1], **kw)

    traced = chained(jnp.asarray(X))
    assert int(traced.n_iter) == int(plain.n_iter) == 1 and bool(traced.converged)
    np.testing.assert_allclose(traced.log_likelihood, plain.log_likelihood, rtol=1e-12)
    with pytest.raises(ValueError, match="previous_log_likelihood continues a fit"):
        jax.jit(lambda X: emjax.fit(X, 3, previous_log_likelihood=-1.0))(jnp.asarray(X))


def test_failure_mode_fit_under_jit_equals_the_plain_fit():
    from emjax import failure_mode as fm
    from emjax.failure_mode import data as fd

    data = fd.make_synthetic(3, setting="easy").to_data()
    kw = dict(n_init=1, max_iter=5)
    plain = fm.fit(data, 2, key=jax.random.key(0), **kw)
    traced = jax.jit(lambda d, k: fm.fit(d, 2, key=k, **kw))(data, jax.random.key(0))
    np.testing.assert_allclose(plain.log_likelihood, traced.log_likelihood, rtol=1e-12)
    np.testing.assert_allclose(plain.params.means, traced.params.means, rtol=1e-9, atol=1e-12)
    # the same pytree: histories max_iter long (the traced one was its size class's, 8)
    assert (jax.tree_util.tree_structure(plain) == jax.tree_util.tree_structure(traced))
    for a, b in zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(traced)):
        assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_allclose(plain.restarts.history, traced.restarts.history, rtol=1e-12)


def test_restart_counts_of_one_class_share_one_program():
    """n_init 9 and 10 run one program (10 restarts; the first 9 keys are those of a split into
    9); n_init = 9 equals the traced fit, which runs exactly 9 restarts."""
    assert [_sizes.restart_class(n) for n in (1, 5, 8, 9, 10, 11, 33)] == [1, 5, 8, 10, 10,
                                                                               12, 40]
    X = _data(90)
    kw = dict(KW, covariance_type="spherical", n_init=9)
    before = fitting.compiled_programs()
    nine = emjax.fit(X, 3, key=2, **kw)
    ten = emjax.fit(X, 3, key=2, **{**kw, "n_init": 10})
    assert fitting.compiled_programs() - before == 2  # the initialisation and EM
    exact = jax.jit(lambda X, k: emjax.fit(X, 3, key=k, **kw))(jnp.asarray(X), jax.random.key(2))
    assert nine.restarts.log_likelihood.shape == (9,)
    np.testing.assert_allclose(nine.restarts.log_likelihood, exact.restarts.log_likelihood,
                               rtol=1e-12)
    np.testing.assert_allclose(ten.restarts.log_likelihood[:9], nine.restarts.log_likelihood,
                               rtol=1e-12)
    assert int(nine.best_index) == int(exact.best_index)
    np.testing.assert_allclose(nine.params.means, exact.params.means, rtol=1e-9, atol=1e-12)


def test_only_small_data_is_padded():
    """Padding saves compilations for small fits; large data runs on its own rows (no extra
    rows, weights or copy in every iteration)."""
    assert _sizes.padded_rows(1000, 40) == _sizes.size_class(1000) > 1000
    assert _sizes.padded_rows(10_000, 512) == _sizes.size_class(10_000)  # wide, still small
    assert _sizes.padded_rows(100_000, 64) is None
    n = _sizes.PAD_MAX_ROWS
    assert _sizes.padded_rows(n, 8) is not None and _sizes.padded_rows(n + 1, 8) is None


@pytest.mark.parametrize("covariance_type", ["tied", "diag"])
def test_padded_components_fit_equals_the_unpadded_traced_fit(covariance_type):
    """K = 5 runs with 8 components, 3 of them padding (weight 0, never re-seeded, no
    responsibility): every restart equals the traced fit of exactly 5 components, with sample
    weights (re-seeding: the next test)."""
    X = _data(97, seed=4)
    w = np.random.default_rng(5).uniform(0.5, 2.0, 97)
    assert _sizes.component_class(5, _sizes.size_class(97), 2, 97) == 8
    kw = dict(KW, n_init=3, covariance_type=covariance_type, sample_weight=w)
    padded = emjax.fit(X, 5, key=7, **kw)
    exact = jax.jit(lambda X, k: emjax.fit(X, 5, key=k, **kw))(jnp.asarray(X),
                                                               jax.random.key(7))
    assert padded.params.means.shape == (5, 2) and padded.restarts.params.weights.shape == (3, 5)
    np.testing.assert_array_equal(padded.restarts.n_iter, exact.restarts.n_iter)
    np.testing.assert_allclose(padded.restarts.log_likelihood, exact.restarts.log_likelihood,
                               rtol=1e-12)
    for a, b in zip(jax.tree_util.tree_leaves(padded.restarts.params),
                    jax.tree_util.tree_leaves(exact.restarts.params)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.sum(padded.params.weights), 1.0, rtol=1e-12)


def test_component_counts_of_one_class_share_one_program():
    X = _data(83, seed=6)
    emjax.fit(X, 2, covariance_type="diag", **KW)  # the program of every K in 2..8 here
    before = fitting.compiled_programs()
    for k in (3, 5, 8):
        res = emjax.fit(X, k, covariance_type="diag", **KW)
        assert res.params.means.shape == (k, 2)
    assert fitting.compiled_programs() == before
    # Not padded: one component, large problems, fewer weighted rows than the class.
    assert _sizes.component_class(1, 128, 2, 128) is None
    assert _sizes.component_class(9, 128, 2, 128) is None
    assert _sizes.component_class(3, 2**15, 64, 2**15) is None
    assert _sizes.component_class(3, 64, 2, 7) is None


@pytest.mark.parametrize("covariance_type, active_loop", [("full", False), ("full", True),
                                                          ("diag", False)])
def test_padding_components_are_never_reseeded(covariance_type, active_loop):
    """A component far from the data empties at once and is re-seeded; with 5 padding
    components after it (inactive), the EM steps do exactly what they do on the 3 alone, and the
    padding keeps weight 0 (``active_loop``: the dense steps loop over the 3 active ones)."""
    from emjax import em
    from emjax.gmm import GMMParams, steps
    from emjax.gmm import covariance as cov_lib

    Xn = _data(64, seed=8)
    X, w = jnp.asarray(Xn), jnp.ones((64,))
    parts = [Xn[np.arange(64) % 3 == j] for j in range(3)]  # _data's clusters
    covs = np.stack([np.cov(x.T) if covariance_type == "full" else x.var(0) for x in parts])
    far = GMMParams(jnp.full((3,), 1 / 3), jnp.asarray([[1e3, 1e3]] + [x.mean(0) for x in
                                                                        parts[1:]]),
                    cov_lib.from_covariances(covariance_type, jnp.asarray(covs)))
    fill = steps.filler_params(covariance_type, 5, 2, X.dtype)
    p8 = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), far, fill)
    active = jnp.arange(8) < 3
    plan = plan_lib.make_plan(covariance_type, X.dtype, 64, 2, 8).replace(
        active_loop=active_loop)

    def run(params, active):
        n_active = None if active is None else jnp.sum(active)
        e, m, r = fitting.make_model(covariance_type, 1e-6, plan=plan, active=active,
                                     n_active=n_active)
        data = (X, w, X.T) if plan.unrolled else (X, w)
        return em.run(e, m, params, data, tol=0.0, max_iter=5, repair=r)

    a, b = run(p8, active), run(far, None)
    assert int(a.status) & em.STATUS_RESEEDED and int(b.status) & em.STATUS_RESEEDED
    np.testing.assert_array_equal(np.asarray(a.params.weights)[3:], 0.0)
    np.testing.assert_allclose(a.log_likelihood, b.log_likelihood, rtol=1e-12)
    np.testing.assert_allclose(a.params.means[:3], b.params.means, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(a.params.weights[:3], b.params.weights, rtol=1e-10)


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_active_loop_steps_equal_the_batched_steps(dtype, rtol):
    """The dense steps over the active components only (a loop with a traced count) give the
    batched steps' values for those, and nothing for the padding."""
    from emjax.gmm import steps

    rng = np.random.default_rng(11)
    k, d, n = 5, 12, 60
    A = rng.normal(size=(k, d, d))
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), steps.make_params(
        np.array([0.3, 0.3, 0.4, 0.0, 0.0]), rng.normal(size=(k, d)),
        A @ np.swapaxes(A, 1, 2) + d * np.eye(d), "full"))
    X = jnp.asarray(rng.normal(size=(n, d)), dtype)
    lr, ll = steps.e_step_full(params, X)
    lr3, ll3 = jax.jit(steps.e_step_full)(params, X, None, jnp.int32(3))
    assert lr3.dtype == dtype
    np.testing.assert_allclose(lr3[:, :3], lr[:, :3], rtol=rtol, atol=rtol)
    assert np.all(np.isneginf(np.asarray(lr3[:, 3:])))
    np.testing.assert_allclose(ll3, ll, rtol=rtol)
    g = jnp.exp(lr)
    full = steps.m_step_stats(g, X)
    loop = jax.jit(lambda g, X, m: steps.m_step_stats(g, X, n_active=m))(g, X, jnp.int32(3))
    np.testing.assert_allclose(loop.sxx[:3], full.sxx[:3], rtol=rtol, atol=rtol)
    np.testing.assert_array_equal(loop.sxx[3:], 0.0)
    np.testing.assert_allclose(loop.sx, full.sx, rtol=rtol, atol=rtol * 10)


@pytest.mark.parametrize("pooled, base, n_features", [
    # tiny data on 16 features; the traced fits run the unrolled (2) and dense (6) steps
    ("tied", "full", 2), ("tied", "full", 6),
    ("diag", "full", 2), ("spherical", "full", 6),  # few features: as full covariances
    # past the tiny data, from Tuning.pool_branches_min_features: the full program's branches
    ("diag", "full", 24), ("tied", "full", 24),
    ("spherical", "diag", 20)])  # (with the diagonal-as-full limit at 16)
def test_small_fits_share_the_programs_of_full_and_diag(pooled, base, n_features, monkeypatch):
    """A small tied fit runs the full fit's program, its M-step pooling the covariances;
    diagonal and spherical ones too with few features, else a spherical fit runs the diagonal
    fit's. It equals the fit by the type's own steps (the traced fit, which runs exactly the
    type asked for) and comes back in its own form."""
    if base == "diag":
        monkeypatch.setitem(plan_lib.TUNING, "cpu",
                            plan_lib.CPU._replace(diagonal_as_full_max_features=16))
    assert plan_lib.pooled_type(pooled, n_features) == base
    X = _data(101)
    X = np.hstack([X, np.random.default_rng(1).normal(size=(101, n_features - 2))])
    kw = dict(KW, key=3)
    emjax.fit(X, 3, covariance_type=base, **kw)
    before = fitting.compiled_programs()
    res = emjax.fit(X, 3, covariance_type=pooled, **kw)
    assert fitting.compiled_programs() == before  # no new program
    exact = jax.jit(lambda X, key: emjax.fit(X, 3, key=key, covariance_type=pooled, **KW))(
        jnp.asarray(X), jax.random.key(3))
    assert res.params.covariance_type == pooled == exact.params.covariance_type
    assert int(res.n_iter) == int(exact.n_iter)
    np.testing.assert_allclose(res.log_likelihood, exact.log_likelihood, rtol=1e-12)
    np.testing.assert_allclose(res.restarts.log_likelihood, exact.restarts.log_likelihood,
                               rtol=1e-12)
    for a, b in zip(jax.tree_util.tree_leaves(res.params),
                    jax.tree_util.tree_leaves(exact.params)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    shape = {"tied": (2, n_features, n_features), "diag": (2, 3, n_features),
             "spherical": (2, 3)}[pooled]
    assert res.restarts.params.covariance.covariances.shape == shape


@pytest.mark.parametrize("covariance_type", ["diag", "spherical"])
def test_pooled_full_reseed_equals_the_diagonal_types_own(covariance_type):
    """A full fit run for diagonal (spherical) covariances re-seeds an empty component as
    those types do: the healthy components' average, not the heaviest one's matrix."""
    from emjax.gmm import covariance as cov_lib
    from emjax.gmm import reseed as reseed_lib
    from emjax.gmm import steps

    rng = np.random.default_rng(0)
    var = rng.uniform(0.5, 2.0, (4, 3))
    if covariance_type == "spherical":
        var = np.repeat(var[:, :1], 3, axis=1)
    own_var = var if covariance_type == "diag" else var[:, 0]
    weights = np.array([0.5, 0.3, 0.2, 0.0])
    means = rng.normal(size=(4, 3))
    X, score = rng.normal(size=(6, 3)), rng.normal(size=6)
    empty = np.array([False, False, False, True])
    full = emjax.GMMParams(weights, means, cov_lib.from_covariances(
        "full", np.stack([np.diag(v) for v in var])))
    own = emjax.GMMParams(weights, means, cov_lib.from_covariances(covariance_type, own_var))
    a, fa = reseed_lib.reseed(full, empty, X, score, covariance_type="full",
                              pool=np.int32(steps.POOL[covariance_type]))
    b, fb = reseed_lib.reseed(own, empty, X, score, covariance_type=covariance_type)
    assert int(fa) == int(fb) != 0
    a = steps.from_pooled(jax.tree_util.tree_map(np.asarray, a), covariance_type)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-12)
