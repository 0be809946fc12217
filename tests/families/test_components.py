"""Component families: log-densities against scipy.stats, closed-form M-steps against jax.grad
of Q and of the log-partition, the Student-t degrees-of-freedom step, NaN entries marginalised
by products of families, floors and validation.

The per-family checks call the pure steps on tiny arrays, one jitted program per family.
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


def test_one_hot_categorical_mixture_scores_and_round_trips(tmp_path):
    """A mixture of one-hot blocks alone is scored on its columns (5), not its blocks (2), and
    saved, loaded and scored as an estimator with n_features_in_ = 5."""
    from emjax.families import io as fio

    X = np.array([[0, 2], [1, 0], [1, 1], [0, 0], [0, 2]], float)
    oh = np.zeros((5, 5))
    oh[np.arange(5), X[:, 0].astype(int)] = 1
    oh[np.arange(5), 2 + X[:, 1].astype(int)] = 1
    codes = F.Categorical().bind(X)
    hot = F.Categorical((2, 3), one_hot=True).bind(oh)
    theta, _, _ = _theta(codes, X)
    params = F.MixtureParams(jnp.array([0.3, 0.7]), theta)
    want = F.score_samples(codes, params, X)
    np.testing.assert_allclose(F.score_samples(hot, params, oh), want, rtol=1e-12)
    m = emjax.MixtureModel.load(fio.save(tmp_path / "hot", hot, params))
    assert m.n_features_in_ == 5
    # the fitted model's parameters (1 weight + 2 x (1 + 2)), whatever set_params said since
    assert m.n_parameters() == m.set_params(n_components=3).n_parameters() == 7
    np.testing.assert_allclose(m.score_samples(oh), want, rtol=1e-12)
    # a block with two 1s, or partly NaN, is no category: an error naming it, in fit and scores
    for row, message in (([1, 0, 0, 1, 1], r"block 1 \(columns 2..4\) of row 1 is \[0. 1. 1."),
                         ([np.nan, 1, 0, 0, 1], r"block 0 \(columns 0..1\) of row 1 is \[nan")):
        bad = np.array([oh[0], row])
        with pytest.raises(ValueError, match=message):
            F.Categorical((2, 3), one_hot=True).bind(bad)
        with pytest.raises(ValueError, match="a block holds one 1"):
            m.score_samples(bad)


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


def test_floors_are_reported():
    fam = F.Bernoulli().bind(np.zeros((4, 1)))
    data = fam.encode(jnp.zeros((4, 1)))
    theta, flags = fam.m_step(fam.stats(None, data, jnp.ones((4, 1))), None, data)
    assert int(flags) == em.STATUS_FLOORED
    assert 0 < float(theta.probs[0, 0]) < 1e-9
    assert "floor" in em.describe_status(em.STATUS_FLOORED)
