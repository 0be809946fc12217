"""Mixtures of component families: log-densities against scipy.stats, closed-form M-steps
against jax.grad of Q and of the log-partition, monotone EM and recovery of planted mixtures.

The per-family checks call the pure, unjitted steps on tiny arrays; the fits share a handful of
compiled programs (module-scoped fixtures).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import emjax
from emjax import em
from emjax import families as F
from emjax.families import io as fio

RNG = np.random.default_rng(0)


def _data(family, n=12, d=3):
    """Observed data in the family's support."""
    rng = np.random.default_rng(1)
    name = type(family).__name__
    if name == "Bernoulli":
        return (rng.random((n, d)) < 0.4).astype(float)
    if name == "Categorical":
        return rng.integers(0, 3, (n, d)).astype(float)
    if name == "Poisson":
        return rng.poisson(3.0, (n, d)).astype(float)
    if name in ("Exponential", "Gamma"):
        return rng.gamma(2.0, 1.5, (n, d))
    return rng.normal(size=(n, d)) * np.array([1.0, 2.0, 0.5])[:d] + 1.0


def _theta(family, X, k=2, seed=2):
    """Parameters of ``k`` components: one M-step from random responsibilities."""
    rw = jnp.asarray(np.random.default_rng(seed).dirichlet(np.ones(k), X.shape[0]))

    @jax.jit
    def step(X, rw):
        data = family.encode(X)
        return family.m_step(family.stats(None, data, rw), None, data)[0], data

    theta, data = step(jnp.asarray(X), rw)
    return theta, data, rw


FAMILIES = {
    "bernoulli": F.Bernoulli(),
    "categorical": F.Categorical(),
    "poisson": F.Poisson(),
    "exponential": F.Exponential(),
    "gamma": F.Gamma(),
    "gauss-full": F.Gaussian("full", reg_covar=0.0),
    "gauss-tied": F.Gaussian("tied", reg_covar=0.0),
    "gauss-diag": F.Gaussian("diag", reg_covar=0.0),
    "gauss-spherical": F.Gaussian("spherical", reg_covar=0.0),
    "student-full": F.StudentT("full", dof=None),
    "student-diag": F.StudentT("diag", dof=3.0),
}


def _scipy_logpdf(name, theta, X):
    """``(n, K)`` reference log-densities from scipy.stats."""
    k = jax.tree_util.tree_leaves(theta)[0].shape[0]
    cols = []
    for j in range(k):
        if name == "bernoulli":
            lp = stats.bernoulli.logpmf(X, theta.probs[j]).sum(1)
        elif name == "categorical":
            p = np.asarray(theta.probs[j])
            lp = np.log(p[np.arange(X.shape[1]), X.astype(int)]).sum(1)
        elif name == "poisson":
            lp = stats.poisson.logpmf(X, theta.rates[j]).sum(1)
        elif name == "exponential":
            lp = stats.expon.logpdf(X, scale=1 / np.asarray(theta.rates[j])).sum(1)
        elif name == "gamma":
            lp = stats.gamma.logpdf(X, np.asarray(theta.shapes[j]),
                                    scale=1 / np.asarray(theta.rates[j])).sum(1)
        else:
            cov = np.asarray(emjax.covariance.as_full(theta.covariance, k, X.shape[1]))[j]
            if name.startswith("gauss"):
                lp = stats.multivariate_normal.logpdf(X, np.asarray(theta.means[j]), cov)
            else:
                lp = stats.multivariate_t.logpdf(X, np.asarray(theta.means[j]), cov,
                                                 df=float(theta.dof[j]))
        cols.append(lp)
    return np.stack(cols, 1)


EXPFAM = ("bernoulli", "categorical", "poisson", "exponential", "gamma", "gauss-diag")


@functools.cache
def _checks(name):
    """Everything the per-family tests assert on, computed by ONE jitted program per family."""
    fam = FAMILIES[name]
    X = _data(fam, n=30)
    fam = fam.bind(X)
    closed = not name.startswith("student")
    rng = np.random.default_rng(3)

    @jax.jit
    def run(X, rw):
        data = fam.encode(X)
        out = {}
        st = fam.stats(None, data, rw)
        theta, out["flags"] = fam.m_step(st, None, data)
        out["theta"] = theta
        out["log_prob"] = fam.log_prob(theta, data)
        if closed:
            u = fam.to_unconstrained(theta)

            def q(u):
                return F.expected_log_likelihood(fam, fam.from_unconstrained(u), data, rw)

            out["grad"] = jax.grad(q)(u)
            out["q0"] = q(u)
            out["q_perturbed"] = jnp.stack([
                q(jax.tree_util.tree_map(lambda a: a + 1e-2 * rng.normal(size=a.shape), u))
                for _ in range(4)])  # feasible perturbations: every u is valid
        if name in EXPFAM:
            out["grad_a"] = jax.grad(fam.log_partition)(fam.natural(theta))
            out["mean"] = fam.mean_params(theta)
        return out

    rw = jnp.asarray(np.random.default_rng(2).dirichlet(np.ones(2), X.shape[0]))
    return fam, X, float(jnp.sum(rw)), jax.tree_util.tree_map(np.asarray, run(jnp.asarray(X), rw))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_log_prob_matches_scipy(name):
    _, X, _, out = _checks(name)
    np.testing.assert_allclose(out["log_prob"], _scipy_logpdf(name, out["theta"], X),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", [n for n in FAMILIES if not n.startswith("student")])
def test_m_step_is_argmax_of_q(name):
    _, _, total, out = _checks(name)
    assert int(out["flags"]) == 0
    for leaf in jax.tree_util.tree_leaves(out["grad"]):
        assert np.max(np.abs(leaf)) < 1e-8 * total, (name, leaf)
    assert np.all(out["q_perturbed"] < out["q0"])


@pytest.mark.parametrize("name", EXPFAM)
def test_mean_params_are_grad_of_log_partition(name):
    fam, _, _, out = _checks(name)
    got = out["grad_a"]
    if name == "categorical":  # padded categories carry no mass either way
        got = np.where(fam.valid(), got, 0.0)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(out["mean"])):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_student_t_dof_step_maximises_q_in_nu():
    """The ECM step for nu: d/dnu of the scale part of Q is zero at the solved nu."""
    fam = F.StudentT("diag").bind(_data(FAMILIES["gauss-diag"], n=40))
    X = _data(FAMILIES["gauss-diag"], n=40)
    theta, data, rw = _theta(fam, X)
    theta = theta._replace(dof=jnp.array([2.0, 7.0]))

    @jax.jit
    def step(theta, data, rw):
        st = fam.stats(theta, data, rw)
        return fam.m_step(st, theta, data)[0], st[1], st[2]

    new, n, c = step(theta, data, rw)

    def q_nu(nu):  # sum_n r (-lgamma(nu/2) + nu/2 log(nu/2) + nu/2 (E log tau - E tau))
        h = nu / 2
        return jnp.sum(n * (-jax.scipy.special.gammaln(h) + h * jnp.log(h) + h * c))

    np.testing.assert_allclose(jax.grad(q_nu)(new.dof), 0.0, atol=1e-7 * float(jnp.sum(n)))


def test_categorical_one_hot_equals_codes():
    X = np.array([[0, 2], [1, 0], [1, 1], [0, 0], [np.nan, 2]], float)
    oh = np.zeros((5, 5))
    for i, (a, b) in enumerate(X):
        if not np.isnan(a):
            oh[i, int(a)] = 1
        oh[i, 2 + int(b)] = 1
    oh[4, :2] = np.nan
    codes = F.Categorical().bind(X)
    hot = F.Categorical((2, 3), one_hot=True).bind(oh)
    theta, data, rw = _theta(codes, X)
    np.testing.assert_allclose(hot.log_prob(theta, hot.encode(jnp.asarray(oh))),
                               codes.log_prob(theta, data), rtol=1e-12)
    assert codes.n_parameters(2) == hot.n_parameters(2) == 2 * (1 + 2)


def test_missing_entries_are_marginalised():
    """A NaN entry drops exactly its own column's term from the row's log-density."""
    fam = F.Product({"g": F.Gaussian("diag", n_features=2), "b": F.Bernoulli(),
                     "c": F.Poisson()})
    X = np.column_stack([_data(FAMILIES["gauss-diag"], d=2), _data(F.Bernoulli(), d=1),
                         _data(F.Poisson(), d=1)])
    fam = fam.bind(X)
    theta, _, _ = _theta(fam, X)
    Xm = X.copy()
    Xm[0, 1] = Xm[1, 2] = Xm[2, 3] = np.nan
    log_prob = jax.jit(lambda theta, X: fam.log_prob(theta, fam.encode(X)))
    lp = np.asarray(log_prob(theta, jnp.asarray(Xm)))
    full = np.asarray(log_prob(theta, jnp.asarray(X)))
    g, b, c = theta["g"], theta["b"], theta["c"]
    terms = [
        stats.norm.logpdf(X[0, 1], g.means[:, 1], np.sqrt(g.covariance.covariances[:, 1])),
        stats.bernoulli.logpmf(X[1, 2], b.probs[:, 0]),
        stats.poisson.logpmf(X[2, 3], c.rates[:, 0]),
    ]
    for i, term in enumerate(terms):
        np.testing.assert_allclose(lp[i], full[i] - term, rtol=1e-10)
    np.testing.assert_allclose(lp[3:], full[3:], rtol=1e-13)


def test_validation_errors():
    with pytest.raises(ValueError, match="0, 1 or NaN"):
        F.fit(np.array([[0.0], [2.0]]), F.Bernoulli(), 1)
    with pytest.raises(ValueError, match="does not marginalise"):
        F.fit(np.array([[0.0, 1.0], [np.nan, 2.0]]), F.Gaussian("full"), 1)
    with pytest.raises(ValueError, match="take 3 columns"):
        F.fit(np.zeros((4, 2)), F.Product({"a": F.Poisson(n_features=2), "b": F.Poisson()}), 1)
    with pytest.raises(ValueError, match="group 'b'"):
        F.fit(np.array([[1.0, -1.0], [1.0, 2.0]]), F.Product({"a": F.Poisson(),
                                                               "b": F.Poisson()}), 1)


# ---- fits: a few compiled programs ----------------------------------------------------------

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


def test_floors_are_reported():
    fam = F.Bernoulli().bind(np.zeros((4, 1)))
    data = fam.encode(jnp.zeros((4, 1)))
    theta, flags = fam.m_step(fam.stats(None, data, jnp.ones((4, 1))), None, data)
    assert int(flags) == em.STATUS_FLOORED
    assert 0 < float(theta.probs[0, 0]) < 1e-9
    assert "floor" in em.describe_status(em.STATUS_FLOORED)


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
    with pytest.raises(ValueError, match="not an emjax families model"):
        (tmp_path / "junk.npz").write_bytes(b"junk")
        fio.load(tmp_path / "junk.npz")


def test_cli_fit_family(tmp_path, capsys):
    from emjax import cli

    rng = np.random.default_rng(7)
    z = rng.random(60) < 0.5
    lines = ["x,flag,region"] + [
        f"{rng.normal(4.0 * zi):.6f},{'' if i == 3 else int(rng.random() < 0.2 + 0.6 * zi)},"
        f"{rng.integers(0, 3)}" for i, zi in enumerate(z)]
    data = tmp_path / "t.csv"
    data.write_text("\n".join(lines) + "\n")
    before = data.read_bytes()
    args = ["fit", str(data), "-k", "2", "-n", "1", "--max-iter", "20", "--no-plots",
            "--no-progress", "--no-compile-cache", "-o", str(tmp_path / "out")]
    assert cli.main([*args, "--family", "auto"]) == 0
    out = capsys.readouterr().out
    assert "column types: x=gaussian, flag=bernoulli, region=categorical" in out
    assert "1 missing entries" in out and "chosen K=2" in out
    saved = fio.load(str(tmp_path / "out" / "model.npz"))
    assert list(saved.family.families) == ["x", "flag", "region"]
    assert saved.metadata["config"]["column_types"] == ["gaussian", "bernoulli", "categorical"]
    pred = tmp_path / "pred.csv"
    assert cli.main(["predict", str(tmp_path / "out" / "model.npz"), str(data), "-o",
                     str(pred)]) == 0
    rows = pred.read_text().splitlines()
    assert rows[0] == "label,p0,p1" and len(rows) == 61
    assert data.read_bytes() == before
    assert cli.main([*args, "--family", "gaussian,bernoulli"]) == 1
    assert "gives 2 column types" in capsys.readouterr().err
    assert cli.main([*args, "--family", "auto", "--force", "--seed", str(2**32)]) == 1
    assert "[0, 2**32)" in capsys.readouterr().err
    # predict never writes over an input, and a failed write leaves no temporary file behind
    assert cli.main(["predict", str(tmp_path / "out" / "model.npz"), str(data), "-o",
                     str(data)]) == 1
    assert "it is the input" in capsys.readouterr().err and data.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.npz"]
    (tmp_path / "dir.npz").mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        fio.save(tmp_path / "dir.npz", saved.family, saved.params)
    assert list((tmp_path / "dir.npz").iterdir()) == []
