"""Fitting mixtures of component families: monotone EM and recovery of planted mixtures (mixed
columns, Gaussian and Student-t, a custom family through optax), an EM fixed point, sample
weights as repeated rows, and the estimator with its save/load round trip. The fits share a
handful of compiled programs (a module-scoped fixture).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import emjax
from emjax import families as F
from emjax.families import io as fio

PLANT = dict(
    g=np.array([[-2.0], [3.0]]), b=np.array([[0.1, 0.8], [0.9, 0.3]]),
    c=np.array([[1.0], [6.0]]), k=np.array([[[0.7, 0.2, 0.1]], [[0.1, 0.2, 0.7]]]),
    e=np.array([[0.5], [3.0]]), a=np.array([[2.0], [8.0]]),
)


def _mixed_family():
    return F.Product({"g": F.Gaussian("diag"), "b": F.Bernoulli(n_features=2),
                      "c": F.Poisson(), "k": F.Categorical(3), "e": F.Exponential(),
                      "a": F.Gamma()})


def _mixed_data(n, seed=0, missing=0.05):
    rng = np.random.default_rng(seed)
    z = (rng.random(n) < 0.4).astype(int)
    cols = [
        rng.normal(PLANT["g"][z, 0], 1.0),
        rng.random(n) < PLANT["b"][z, 0],
        rng.random(n) < PLANT["b"][z, 1],
        rng.poisson(PLANT["c"][z, 0]),
        np.array([rng.choice(3, p=PLANT["k"][zi, 0]) for zi in z]),
        rng.exponential(1 / PLANT["e"][z, 0]),
        rng.gamma(PLANT["a"][z, 0], 1.0),
    ]
    X = np.column_stack(cols).astype(float)
    X[rng.random(X.shape) < missing] = np.nan
    X[np.isnan(X).all(1), 0] = 0.0
    return X, z


@pytest.fixture(scope="module")
def mixed_fit():
    X, z = _mixed_data(600)
    return X, z, F.fit(X, _mixed_family(), 2, n_init=3, tol=1e-9, max_iter=300,
                       key=jax.random.key(1))


def _monotone(history):
    h = np.asarray(history)
    for row in h.reshape(-1, h.shape[-1]):
        row = row[np.isfinite(row)]
        assert np.all(np.diff(row) >= -1e-10 * np.abs(row[1:])), np.diff(row).min()


def test_mixed_fit_monotone_and_recovers_plant(mixed_fit):
    X, z, res = mixed_fit
    assert int(res.status) == 0 and bool(res.converged)
    _monotone(res.restarts.history)
    th = res.params.components
    order = np.argsort(np.asarray(th["g"].means[:, 0]))  # component 0 has the low mean
    np.testing.assert_allclose(np.asarray(res.params.weights)[order], [0.6, 0.4], atol=0.06)
    np.testing.assert_allclose(np.asarray(th["g"].means)[order], PLANT["g"], atol=0.25)
    np.testing.assert_allclose(np.asarray(th["b"].probs)[order], PLANT["b"], atol=0.08)
    np.testing.assert_allclose(np.asarray(th["c"].rates)[order], PLANT["c"], rtol=0.15)
    np.testing.assert_allclose(np.asarray(th["k"].probs)[order], PLANT["k"], atol=0.08)
    np.testing.assert_allclose(np.asarray(th["e"].rates)[order], PLANT["e"], rtol=0.2)
    np.testing.assert_allclose(np.asarray(th["a"].shapes)[order], PLANT["a"], rtol=0.25)
    labels = F.predict(res.family, res.params, X)
    acc = np.mean(np.asarray(labels) == order.argsort()[z])
    assert acc > 0.95


def test_mixed_fit_is_an_em_fixed_point(mixed_fit):
    """One more E- and M-step (eager, unjitted) leaves the fitted parameters in place."""
    X, _, res = mixed_fit
    e_step, m_step = F.make_model(res.family)

    @jax.jit
    def step(params, X):
        data = (res.family.encode(X), None)
        estats, ll = e_step(params, data)
        return ll, m_step(estats, data).params

    ll, again = step(res.params, jnp.asarray(X))
    np.testing.assert_allclose(ll, res.log_likelihood, rtol=1e-12)
    for a, b in zip(jax.tree_util.tree_leaves(again), jax.tree_util.tree_leaves(res.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_sample_weight_equals_repeated_rows_float32(mixed_fit):
    """Integer weights = repeated rows (same start, one program for both), in float32."""
    X, _ = _mixed_data(60, seed=4, missing=0.0)
    X = X.astype(np.float32)
    m, h = 40, 20
    w_a = np.r_[np.full(h, 2.0), np.ones(m - h), np.zeros(h)].astype(np.float32)
    Xb = np.concatenate([X[:m], X[:h]])
    fam = _mixed_family()
    p0 = mixed_fit[2].params  # any start: the same for both
    ra = F.fit(X, fam, 2, sample_weight=w_a, params_init=p0, tol=0.0, max_iter=30)
    rb = F.fit(Xb, fam, 2, sample_weight=np.ones(m + h, np.float32), params_init=p0,
               tol=0.0, max_iter=30)
    assert ra.log_likelihood.dtype == jnp.float32
    np.testing.assert_allclose(ra.log_likelihood, rb.log_likelihood, rtol=2e-5)
    for a, b in zip(jax.tree_util.tree_leaves(ra.params), jax.tree_util.tree_leaves(rb.params)):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4)
    # a start of another shape or structure is named before anything compiles
    leaves, tree = jax.tree_util.tree_flatten(p0)
    leaves[-1] = np.concatenate([leaves[-1]] * 2, -1)
    with pytest.raises(ValueError, match=r"params_init\.components.* has shape .* per "
                                         r"restart; expected"):
        F.fit(X, fam, 2, params_init=jax.tree_util.tree_unflatten(tree, leaves))
    with pytest.raises(ValueError, match="params_init is not a Product mixture's parameters"):
        F.fit(X, fam, 2, params_init=p0._replace(components={}))


def test_gaussian_and_student_t_recover_plant():
    rng = np.random.default_rng(5)
    n = 400
    z = (rng.random(n) < 0.5).astype(int)
    means = np.array([[0.0, 0.0], [6.0, 3.0]])
    g = means[z] + rng.normal(size=(n, 2)) @ np.array([[1.0, 0.5], [0.0, 0.7]])
    t = means[z] + rng.standard_t(4.0, size=(n, 2))
    fam = F.Product({"g": F.Gaussian("full", n_features=2),
                     "t": F.StudentT("full", n_features=2)})
    res = F.fit(np.column_stack([g, t]), fam, 2, n_init=2, tol=1e-9, max_iter=300)
    _monotone(res.restarts.history)
    th = res.params.components
    order = np.argsort(np.asarray(th["g"].means[:, 0]))
    np.testing.assert_allclose(np.asarray(th["g"].means)[order], means, atol=0.2)
    np.testing.assert_allclose(np.asarray(th["t"].means)[order], means, atol=0.3)
    cov = np.array([[1.0, 0.5], [0.0, 0.7]])
    np.testing.assert_allclose(np.asarray(th["g"].covariance.covariances)[order[0]],
                               cov.T @ cov, atol=0.25)
    assert np.all((np.asarray(th["t"].dof) > 2) & (np.asarray(th["t"].dof) < 12))


def test_custom_family_reaches_the_closed_form():
    """A Poisson written only as log_prob(theta, x) with a log transform: the optax M-step
    climbs monotonically to a fixed point of the closed-form Poisson EM."""
    rng = np.random.default_rng(6)
    z = rng.random(200) < 0.5
    X = rng.poisson(np.where(z[:, None], 2.0, 9.0), (200, 2)).astype(float)

    def log_prob(theta, x):
        return jnp.sum(jax.scipy.stats.poisson.logpmf(x, theta))

    def init(key, X):
        return X[jax.random.randint(key, (), 0, X.shape[0])] + 0.5

    fam = F.Custom(log_prob, init, transform=jnp.exp, inverse=jnp.log)
    res = F.fit(X, fam, 2, tol=1e-10, max_iter=200)
    _monotone(res.restarts.history)
    assert res.family.n_parameters(2) == 4
    pois = F.Poisson().bind(X)
    e_step, m_step = F.make_model(pois)
    params = F.MixtureParams(res.params.weights, F.PoissonParams(res.params.components))

    @jax.jit
    def step(params, X):
        data = (pois.encode(X), None)
        return m_step(e_step(params, data)[0], data).params

    closed = step(params, jnp.asarray(X))
    np.testing.assert_allclose(closed.components.rates, res.params.components, rtol=1e-4)


def test_estimator_matches_functional_fit_and_round_trips(mixed_fit, tmp_path):
    X, _, res = mixed_fit
    traces = F.fitting._fit_compiled._cache_size()
    m = emjax.MixtureModel(_mixed_family(), 2, n_init=3, tol=1e-9, max_iter=300,
                           random_state=1).fit(X)  # the fixture's program and key
    assert F.fitting._fit_compiled._cache_size() == traces  # equal families share the compiled fit
    np.testing.assert_allclose(m.lower_bound_, float(res.log_likelihood), rtol=1e-12)
    ll = m.score_samples(X)
    assert np.all(np.isfinite(ll)) and ll.shape == (X.shape[0],)
    np.testing.assert_allclose(m.score(X), m.lower_bound_, rtol=1e-10)
    proba = m.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(m.predict(X), proba.argmax(1))
    # g: 2 means + 2 variances; b: 2 x 2; c: 2; k: 2 x (3 - 1); e: 2; a: 2 x 2; weights: 1
    p = 4 + 4 + 2 + 4 + 2 + 4 + 1
    assert m.n_parameters() == p
    np.testing.assert_allclose(m.bic(X), -2 * ll.sum() + p * np.log(X.shape[0]), rtol=1e-10)
    np.testing.assert_allclose(m.aic(X), -2 * ll.sum() + 2 * p, rtol=1e-10)
    Xs, labels = m.sample(500, random_state=0)
    assert Xs.shape == (500, X.shape[1]) and set(np.unique(labels)) <= {0, 1}
    assert np.all(np.isin(Xs[:, 1:3], [0, 1])) and np.all(Xs[:, 6] > 0)
    path = m.save(tmp_path / "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]  # no temp file left
    m2 = emjax.MixtureModel.load(path)
    assert m2.family_ == m.family_
    np.testing.assert_array_equal(m2.score_samples(X), ll)
    assert (m2.converged_, m2.n_iter_) == (m.converged_, m.n_iter_)
    np.testing.assert_array_equal(m2.history_, m.history_)
    with pytest.raises(ValueError, match=r"not an emjax families model file \(it is not an "
                                         r"\.npz archive"):
        (tmp_path / "junk.npz").write_bytes(b"junk")
        fio.load(tmp_path / "junk.npz")


def test_estimator_inside_scikit_learn():
    """MixtureModel is a scikit-learn estimator: clone, a Pipeline and GridSearchCV over
    n_components (scored by the held-out mean log-likelihood, NaN let through as the family
    marginalises it) run and choose what the folds' own fits score best."""
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV, KFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    X, _ = _mixed_data(240, seed=4)
    fam = F.Product({"g": F.Gaussian("diag"), "c": F.Poisson()})
    X = X[:, [0, 3]]
    X = X[~np.isnan(X).all(1)]
    m = emjax.MixtureModel(fam, 1, n_init=2, random_state=0)
    c = clone(m)
    assert c.get_params() == m.get_params() and not hasattr(c, "params_")
    folds = KFold(2, shuffle=True, random_state=0)
    pipe = make_pipeline(FunctionTransformer(), m)
    search = GridSearchCV(pipe, {"mixturemodel__n_components": [1, 2]}, cv=folds).fit(X)
    mean = {}
    for k in (1, 2):
        scores = [emjax.MixtureModel(fam, k, n_init=2, random_state=0).fit(X[tr]).score(X[te])
                  for tr, te in folds.split(X)]
        mean[k] = np.mean(scores)
    assert search.best_params_["mixturemodel__n_components"] == max(mean, key=mean.get)
    np.testing.assert_allclose(search.cv_results_["mean_test_score"], [mean[1], mean[2]],
                               rtol=1e-10)


def test_row_counts_of_one_size_class_share_one_program_and_equal_the_fit_as_given(mixed_fit):
    """Rows are padded to a size class with zero-weight copies of the first row and ``max_iter``
    is an argument: 590 rows and 260 iterations after the fixture's 600 and 300 compile
    nothing, and the result equals the program run on the 590 rows as given."""
    X, _, _ = mixed_fit
    assert emjax._sizes.size_class(590) == emjax._sizes.size_class(600)
    before = F.fitting._fit_compiled._cache_size()
    kw = dict(n_init=3, tol=1e-9, max_iter=260)
    got = F.fit(X[:590], _mixed_family(), 2, key=jax.random.key(1), **kw)
    assert F.fitting._fit_compiled._cache_size() == before
    assert got.history.shape == (260,) and got.restarts.history.shape == (3, 260)
    fam = _mixed_family().bind(X)
    ref = F.fitting._fit_compiled[()](
        X[:590], jax.random.key(1), None, np.float64(1e-9), None, np.int32(260), family=fam,
        n_components=2, history_size=512, n_init=3)
    np.testing.assert_allclose(got.log_likelihood, ref.log_likelihood, rtol=1e-12)
    np.testing.assert_array_equal(got.restarts.n_iter, ref.restarts.n_iter)
    for a, b in zip(jax.tree_util.tree_leaves(got.params), jax.tree_util.tree_leaves(ref.params)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_scores_of_one_size_class_share_one_program(mixed_fit):
    """score_samples, predict_proba and predict on 590 and 600 rows (one size class, missing
    entries included) run one compiled program, with the values of the rows as given."""
    X, _, res = mixed_fit
    F.score_samples(res.family, res.params, X)
    before = F.fitting._score_compiled._cache_size()
    ll = F.score_samples(res.family, res.params, X[:590])
    proba = F.predict_proba(res.family, res.params, X[:590])
    labels = F.predict(res.family, res.params, X[:590])
    assert F.fitting._score_compiled._cache_size() == before
    lr_ref, ll_ref = F.fitting._score_compiled(res.params, X[:590], family=res.family)
    np.testing.assert_allclose(ll, ll_ref, rtol=1e-12)
    np.testing.assert_allclose(proba, np.exp(lr_ref), rtol=1e-12, atol=1e-300)
    np.testing.assert_array_equal(labels, np.argmax(lr_ref, axis=1))


def test_sample_under_jit_and_vmap_and_from_an_int_seed(mixed_fit):
    """F.sample inside jit and vmap draws what it draws outside (it failed cutting the draws of
    n_samples' class on the host: TracerArrayConversionError), and takes an int seed outside a
    trace, as emjax.sample does (it failed inside jax.random: 'invalid PRNG key data')."""
    _, _, res = mixed_fit
    key = jax.random.key(2)
    X, labels = F.sample(key, res.family, res.params, 10)
    Xt, lt = jax.jit(lambda k: F.sample(k, res.family, res.params, 10))(key)
    assert Xt.shape == X.shape == (10, 7)
    np.testing.assert_allclose(Xt, X, rtol=1e-12)
    np.testing.assert_array_equal(lt, labels)
    Xv, _ = jax.vmap(lambda k: F.sample(k, res.family, res.params, 10))(
        jnp.stack([key, jax.random.key(3)]))
    np.testing.assert_allclose(Xv[0], X, rtol=1e-12)
    Xs, ls = F.sample(2, res.family, res.params, 10)
    np.testing.assert_array_equal(Xs, X)
    np.testing.assert_array_equal(ls, labels)


@pytest.mark.parametrize("column, value, message", [
    (1, 0.5, "Bernoulli columns must hold 0, 1 or NaN"),
    (3, -2.0, "Poisson columns must hold non-negative integers"),
    (4, 3.0, r"codes up to \[3\] exceed n_categories \(3,\)"),
    (5, -1.0, "Exponential"),
])
def test_scores_reject_values_outside_the_fitted_support(mixed_fit, column, value, message):
    """A value the fitted family cannot hold (an unknown category, a negative count) is an
    error naming it, not a finite log-density of nonsense."""
    X, _, res = mixed_fit
    bad = X[:5].copy()
    bad[2, column] = value
    for fn in (F.score_samples, F.predict_proba, F.predict):
        with pytest.raises(ValueError, match=message):
            fn(res.family, res.params, bad)
