"""Every closed form of the seeds checked against ``jax.grad`` (float64, eager, small arrays).

Seeds: 001 (GMM EM by matrix derivatives, the ELBO/KL decomposition, pi with multiplier N),
003 (the EM tutorial: Q, its derivatives, the ``2A - diag(A)`` symmetric forms, Lemmas 5.1-5.8),
004 (the single-Gaussian MLE and its matrix identities). References are dense NumPy formulas;
the objects under test are ``jax.grad`` of :mod:`emjax.gmm.objective` and the library's E/M-steps.

"Symmetric form" convention (seed 003): a symmetric ``A`` is a function of its free entries
``a_ij, i >= j`` (``a_ji`` is the same variable); ``df/da_ij`` is reported at ``(i, j)`` and
``(j, i)``. If ``G`` is the unconstrained gradient, that matrix is ``G + G^T - diag(G)``.
"""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from emjax import gmm
from emjax.gmm import objective as obj
from tests.gmm._random import random_params, spd

COV_TYPES = ("full", "tied", "diag", "spherical")
N, D, K = 24, 3, 3
TOL = dict(rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- fixtures/helpers


def random_problem(seed, cov_type, weighted=True):
    """Data, responsibilities, sample weights and a random mixture (all float64)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, D)) * 2.0
    gamma = np.asarray(jax.nn.softmax(jnp.asarray(rng.normal(size=(N, K)) * 2.0), axis=1))
    w = rng.uniform(0.5, 2.0, size=N) if weighted else None
    return jnp.asarray(X), jnp.asarray(gamma), (None if w is None else jnp.asarray(w)), \
        random_params(rng, cov_type, K, D)


def dense_cov(params):
    return np.asarray(obj.dense_covariances(params))


def scatter(X, gamma, w, means):
    """``N_k`` and ``S_k = sum_n w_n gamma_nk (x_n - mu_k)(x_n - mu_k)^T`` (NumPy)."""
    X, g = np.asarray(X), np.asarray(gamma)
    if w is not None:
        g = g * np.asarray(w)[:, None]
    diff = X[None] - np.asarray(means)[:, None]  # (K, N, D)
    return g.sum(0), np.einsum("nk,kni,knj->kij", g, diff, diff)


def unconstrained_sigma_grad(nk, S, cov):
    """Seed 001/004: dQ/dSigma_k = -1/2 N_k Sigma^{-T} + 1/2 Sigma^{-T} S_k Sigma^{-T}."""
    inv_t = np.swapaxes(np.linalg.inv(cov), -1, -2)
    return -0.5 * nk[:, None, None] * inv_t + 0.5 * inv_t @ S @ inv_t


def tril_free(a):
    i, j = np.tril_indices(a.shape[-1])
    return a[..., i, j]


def sym_from_free(v, d):
    i, j = np.tril_indices(d)
    m = jnp.zeros(v.shape[:-1] + (d, d), v.dtype).at[..., i, j].set(v)
    return m + jnp.swapaxes(m, -1, -2) - m * jnp.eye(d, dtype=v.dtype)


def with_cov(params, cov_type, covs):
    cls = type(params.covariance)
    return params._replace(covariance=cls(covs, params.covariance.precisions_cholesky))


# ----------------------------------------------------------------------------------- Q itself


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_q_is_expectation_of_complete_log_likelihood_over_all_assignments(cov_type):
    """Seed 003: Q = sum_Z q(Z) log p(X, Z | theta), enumerated over all K^n assignments."""
    X, gamma, _, params = random_problem(0, cov_type)
    n = 4
    X, gamma = np.asarray(X[:n]), np.asarray(gamma[:n])
    covs, means, weights = dense_cov(params), np.asarray(params.means), np.asarray(params.weights)
    logp = np.array([[np.log(weights[k]) + multivariate_normal(means[k], covs[k]).logpdf(X[i])
                      for k in range(K)] for i in range(n)])
    brute = 0.0
    for z in itertools.product(range(K), repeat=n):
        q_z = np.prod([gamma[i, z[i]] for i in range(n)])
        brute += q_z * sum(logp[i, z[i]] for i in range(n))
    got = obj.complete_data_log_likelihood(params, jnp.asarray(gamma), jnp.asarray(X))
    np.testing.assert_allclose(float(got), brute, rtol=1e-12)


# ------------------------------------------------------------------ derivatives of Q (closed forms)


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_dq_dmu_matches_closed_form(cov_type):
    """dQ/dmu_k = Sigma_k^{-1} sum_n w_n gamma_nk (x_n - mu_k)."""
    X, gamma, w, params = random_problem(1, cov_type)
    g = jax.grad(lambda m: obj.complete_data_log_likelihood(params._replace(means=m), gamma, X,
                                                            w))(params.means)
    gw = np.asarray(gamma) * np.asarray(w)[:, None]
    resid = np.einsum("nk,knd->kd", gw, np.asarray(X)[None] - np.asarray(params.means)[:, None])
    expected = np.einsum("kij,kj->ki", np.linalg.inv(dense_cov(params)), resid)
    chex.assert_trees_all_close(g, expected, **TOL)


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_dq_dcovariance_matches_closed_form(cov_type):
    """dQ/d(covariance parameters), each type in its own parametrisation.

    full: a *general* (here deliberately non-symmetric) Sigma_k, so Sigma^{-T} != Sigma^{-1};
    tied: the sum over k of the full form; diag: -N_k/(2 s) + s_kd/(2 s^2);
    spherical: -D N_k/(2 s) + sum_n gamma |x - mu|^2/(2 s^2).
    """
    X, gamma, w, params = random_problem(2, cov_type)
    c = np.asarray(params.covariance.covariances)
    if cov_type == "full":
        skew = np.random.default_rng(3).normal(size=c.shape) * 0.1
        c = c + skew - np.swapaxes(skew, -1, -2)
        params = with_cov(params, cov_type, jnp.asarray(c))
    g = jax.grad(lambda cv: obj.complete_data_log_likelihood(with_cov(params, cov_type, cv),
                                                             gamma, X, w))(jnp.asarray(c))
    nk, S = scatter(X, gamma, w, params.means)
    if cov_type == "full":
        expected = unconstrained_sigma_grad(nk, S, c)
    elif cov_type == "tied":
        expected = unconstrained_sigma_grad(nk, S, np.broadcast_to(c, S.shape)).sum(0)
    elif cov_type == "diag":
        s = np.diagonal(S, axis1=1, axis2=2)
        expected = -0.5 * nk[:, None] / c + 0.5 * s / c**2
    else:
        tr = np.trace(S, axis1=1, axis2=2)
        expected = -0.5 * D * nk / c + 0.5 * tr / c**2
    chex.assert_trees_all_close(g, expected, **TOL)


@pytest.mark.parametrize("cov_type", ["full", "tied"])
def test_dq_dsigma_symmetric_form_is_2g_minus_diag(cov_type):
    """Over the free entries of a symmetric Sigma, dQ/dSigma = 2G - diag(G) (G symmetric)."""
    X, gamma, w, params = random_problem(4, cov_type)
    c = np.asarray(params.covariance.covariances)

    def q_of_free(v):
        return obj.complete_data_log_likelihood(with_cov(params, cov_type, sym_from_free(v, D)),
                                                gamma, X, w)

    g_free = np.asarray(jax.grad(q_of_free)(jnp.asarray(tril_free(c))))
    nk, S = scatter(X, gamma, w, params.means)
    G = unconstrained_sigma_grad(nk, S, np.broadcast_to(c, S.shape))
    G = G if cov_type == "full" else G.sum(0)
    i, j = np.tril_indices(D)
    two_g_minus_diag = 2 * G - G * np.eye(D)
    chex.assert_trees_all_close(g_free, two_g_minus_diag[..., i, j], **TOL)


@pytest.mark.parametrize("cov_type", ["full", "tied"])
def test_dq_dprecision_symmetric_form_seed_003(cov_type):
    """Seed 003, section 4: over the free entries of the symmetric precision Sigma^{-1},
    dQ/dSigma^{-1} = 1/2 (2M - diag(M)) with M = sum_n gamma_n (Sigma - N_n) = N_k Sigma - S_k."""
    X, gamma, w, params = random_problem(5, cov_type)
    c = np.asarray(params.covariance.covariances)
    prec = np.linalg.inv(c)

    def q_of_free_precision(v):
        cov = jnp.linalg.inv(sym_from_free(v, D))
        return obj.complete_data_log_likelihood(with_cov(params, cov_type, cov), gamma, X, w)

    g_free = np.asarray(jax.grad(q_of_free_precision)(jnp.asarray(tril_free(prec))))
    nk, S = scatter(X, gamma, w, params.means)
    M = nk[:, None, None] * np.broadcast_to(c, S.shape) - S
    M = M if cov_type == "full" else M.sum(0)
    i, j = np.tril_indices(D)
    expected = 0.5 * (2 * M - M * np.eye(D))
    chex.assert_trees_all_close(g_free, expected[..., i, j], **TOL)


@pytest.mark.parametrize("weighted", [False, True])
def test_dq_dpi_has_lagrange_multiplier_n(weighted):
    """dQ/dpi_k = N_k / pi_k; at pi = N_k / N it is lambda * 1 with lambda = N = sum_n w_n, so
    the Lagrangian Q - lambda (sum pi - 1) is stationary there (seeds 001, 003)."""
    X, gamma, w, params = random_problem(6, "diag", weighted=weighted)
    q = lambda pi: obj.complete_data_log_likelihood(params._replace(weights=pi), gamma, X, w)
    nk, _ = scatter(X, gamma, w, params.means)
    n_total = float(N if w is None else np.sum(np.asarray(w)))
    chex.assert_trees_all_close(jax.grad(q)(params.weights), nk / np.asarray(params.weights),
                                **TOL)
    pi_hat = jnp.asarray(nk / n_total)
    chex.assert_trees_all_close(jax.grad(q)(pi_hat), np.full(K, n_total), **TOL)
    lagrangian = lambda pi, lam: q(pi) - lam * (jnp.sum(pi) - 1.0)
    g_pi, g_lam = jax.grad(lagrangian, argnums=(0, 1))(pi_hat, jnp.asarray(n_total))
    chex.assert_trees_all_close(g_pi, np.zeros(K), atol=1e-9)
    chex.assert_trees_all_close(g_lam, 0.0, atol=1e-12)


# ------------------------------------------------------------- the library's M-step maximises Q


@pytest.mark.parametrize("reg_covar", [0.0, 1e-2])
@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_m_step_is_stationary_point_of_lagrangian(cov_type, reg_covar):
    """At gmm.m_step's output the gradient of the Lagrangian of Q is zero: in the means, in the
    covariance parameters (with reg_covar, of the regularised Q it exactly maximises) and in
    the weights with multiplier N."""
    X, gamma, w, _ = random_problem(7, cov_type)
    new = gmm.m_step(gamma, X, covariance_type=cov_type, reg_covar=reg_covar, sample_weight=w)
    n_total = jnp.sum(w)

    def lagrangian(p):
        q = obj.complete_data_log_likelihood(p, gamma, X, w, reg_covar=reg_covar)
        return q - n_total * (jnp.sum(p.weights) - 1.0)

    g = jax.grad(lagrangian)(new)
    scale = float(n_total)
    chex.assert_trees_all_close(g.weights, np.zeros(K), atol=1e-9 * scale)
    chex.assert_trees_all_close(g.means, np.zeros((K, D)), atol=1e-9 * scale)
    chex.assert_trees_all_close(g.covariance.covariances,
                                np.zeros_like(new.covariance.covariances), atol=1e-9 * scale)
    np.testing.assert_allclose(float(jnp.sum(new.weights)), 1.0, rtol=1e-14)


def _perturb(rng, params, cov_type, size):
    """A random *feasible* perturbation: weights on the simplex, SPD/positive covariances."""
    logits = np.log(np.asarray(params.weights)) + rng.normal(size=K) * size
    weights = np.exp(logits) / np.exp(logits).sum()
    means = np.asarray(params.means) + rng.normal(size=(K, D)) * size
    c = np.asarray(params.covariance.covariances)
    if cov_type in ("full", "tied"):
        m = np.eye(D) + rng.normal(size=c.shape) * size
        c = m @ c @ np.swapaxes(m, -1, -2)
    else:
        c = c * np.exp(rng.normal(size=c.shape) * size)
    return gmm.make_params(weights, means, c, cov_type)


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_m_step_q_not_exceeded_at_perturbed_feasible_parameters(cov_type):
    """Q(m_step) >= Q(theta) for random feasible theta near it, at three perturbation sizes."""
    X, gamma, w, _ = random_problem(8, cov_type)
    new = gmm.m_step(gamma, X, covariance_type=cov_type, reg_covar=0.0, sample_weight=w)
    q_best = float(obj.complete_data_log_likelihood(new, gamma, X, w))
    rng = np.random.default_rng(9)
    qs = [float(obj.complete_data_log_likelihood(_perturb(rng, new, cov_type, s), gamma, X, w))
          for s in (1e-3, 1e-2, 1e-1) for _ in range(4)]
    assert max(qs) < q_best, (q_best, max(qs))


# --------------------------------------------------------------------- EM identities (seed 001)


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_fisher_identity(cov_type):
    """grad log p(X | theta) at theta_old == grad Q(theta; gamma(theta_old)) at theta_old, with
    gamma from the library's E-step, for weights (free), means and covariance parameters."""
    X, _, w, params = random_problem(10, cov_type)
    gamma, _ = gmm.e_step(params, X)
    g_obs = jax.grad(obj.observed_log_likelihood)(params, X, w)
    g_q = jax.grad(obj.complete_data_log_likelihood)(params, gamma, X, w)
    chex.assert_trees_all_close(
        (g_obs.weights, g_obs.means, g_obs.covariance.covariances),
        (g_q.weights, g_q.means, g_q.covariance.covariances), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_elbo_equals_log_likelihood_and_kl_is_zero_after_e_step(cov_type):
    """With q = the E-step's gamma: L(q, theta) = log p(X | theta) and KL(q || p) = 0."""
    X, _, w, params = random_problem(11, cov_type)
    gamma, mean_ll = gmm.e_step(params, X, w)
    ll = obj.observed_log_likelihood(params, X, w)
    np.testing.assert_allclose(float(mean_ll) * float(jnp.sum(w)), float(ll), rtol=1e-12)
    np.testing.assert_allclose(float(obj.elbo(params, gamma, X, w)), float(ll), rtol=1e-12)
    np.testing.assert_allclose(float(obj.kl_divergence(gamma, params, X, w)), 0.0, atol=1e-10)


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_elbo_below_log_likelihood_and_kl_positive_for_other_q(cov_type):
    """For any other q: L(q, theta) < log p(X | theta), KL > 0 and log p = L + KL exactly."""
    X, _, w, params = random_problem(12, cov_type)
    ll = float(obj.observed_log_likelihood(params, X, w))
    post = obj.posterior(params, X)
    rng = np.random.default_rng(13)
    for temp in (0.1, 1.0, 10.0):
        q = jax.nn.softmax(jnp.log(post) + temp * jnp.asarray(rng.normal(size=(N, K))), axis=1)
        lower, kl = float(obj.elbo(params, q, X, w)), float(obj.kl_divergence(q, params, X, w))
        assert lower < ll and kl > 0, (temp, lower, ll, kl)
        np.testing.assert_allclose(lower + kl, ll, rtol=1e-12)


def test_em_step_increases_q_and_log_likelihood():
    """The bound's consequence: Q(theta_new) >= Q(theta_old) implies log p rises by at least
    as much (the KL term at theta_new is non-negative)."""
    X, _, w, params = random_problem(14, "full")
    gamma, _ = gmm.e_step(params, X)
    new = gmm.m_step(gamma, X, covariance_type="full", reg_covar=0.0, sample_weight=w)
    dq = obj.complete_data_log_likelihood(new, gamma, X, w) - \
        obj.complete_data_log_likelihood(params, gamma, X, w)
    dll = obj.observed_log_likelihood(new, X, w) - obj.observed_log_likelihood(params, X, w)
    assert float(dq) > 0 and float(dll) >= float(dq) - 1e-9, (dq, dll)


# --------------------------------------------------------------- single Gaussian MLE (seed 004)


def _gauss_ll(mu, sigma, X):
    return jnp.sum(obj.gaussian_log_density(X, mu, sigma))


def test_single_gaussian_gradients_match_closed_form():
    """dL/dSigma = -N/2 Sigma^{-T} + 1/2 (Sigma^{-1} S Sigma^{-1})^T at a random (non-optimal,
    non-symmetric) point, and dL/dmu = 1/2 (Sigma^{-1} + Sigma^{-T}) sum_n (x_n - mu) there
    (Lemma 5.2), which is seed 004's Sigma^{-1} sum_n (x_n - mu) at the symmetric part."""
    rng = np.random.default_rng(15)
    X = jnp.asarray(rng.normal(size=(N, D)))
    mu = rng.normal(size=D)
    skew = rng.normal(size=(D, D)) * 0.1
    sigma = spd(rng, D) + skew - skew.T
    g_mu, g_sigma = jax.grad(_gauss_ll, argnums=(0, 1))(jnp.asarray(mu), jnp.asarray(sigma), X)
    diff = np.asarray(X) - mu
    S = diff.T @ diff
    inv = np.linalg.inv(sigma)
    chex.assert_trees_all_close(g_mu, 0.5 * (inv + inv.T) @ diff.sum(0), **TOL)
    sym = 0.5 * (sigma + sigma.T)
    g_mu_sym = jax.grad(_gauss_ll)(jnp.asarray(mu), jnp.asarray(sym), X)
    chex.assert_trees_all_close(g_mu_sym, np.linalg.inv(sym) @ diff.sum(0), **TOL)
    chex.assert_trees_all_close(g_sigma, -0.5 * N * inv.T + 0.5 * (inv @ S @ inv).T, **TOL)


def test_single_gaussian_mle_is_where_gradient_vanishes():
    """mu = mean(x), Sigma = S / N (biased) zero the gradient; the library's M-step with K = 1
    and gamma = 1 returns exactly them."""
    rng = np.random.default_rng(16)
    X = jnp.asarray(rng.normal(size=(N, D)) @ rng.normal(size=(D, D)) + 3.0)
    Xn = np.asarray(X)
    mu_hat = Xn.mean(0)
    sigma_hat = (Xn - mu_hat).T @ (Xn - mu_hat) / N
    g_mu, g_sigma = jax.grad(_gauss_ll, argnums=(0, 1))(jnp.asarray(mu_hat),
                                                       jnp.asarray(sigma_hat), X)
    chex.assert_trees_all_close(g_mu, np.zeros(D), atol=1e-9)
    chex.assert_trees_all_close(g_sigma, np.zeros((D, D)), atol=1e-9)
    one = gmm.m_step(jnp.ones((N, 1)), X, covariance_type="full", reg_covar=0.0)
    chex.assert_trees_all_close((one.means[0], one.covariance.covariances[0]),
                                (mu_hat, sigma_hat), rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------ matrix identities (seeds 003, 004)


def _matrices(seed):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(D, D)) + 2.0 * np.eye(D)  # general, det > 0 for these seeds
    B = rng.normal(size=(D, D))
    x = rng.normal(size=D)
    S = spd(rng, D)
    assert np.linalg.det(A) > 0
    return A, B, x, S


def test_quadratic_form_identities():
    """Lemmas 5.1-5.3: x^T A x = sum a_ij x_i x_j = tr(A x x^T); d x^T A x / dx = (A + A^T) x,
    and 2 A x for symmetric A."""
    A, _, x, S = _matrices(17)
    quad = lambda v, M: v @ M @ v
    np.testing.assert_allclose(float(quad(x, A)), np.einsum("ij,i,j->", A, x, x), rtol=1e-13)
    np.testing.assert_allclose(float(quad(x, A)), np.trace(A @ np.outer(x, x)), rtol=1e-13)
    chex.assert_trees_all_close(jax.grad(quad)(jnp.asarray(x), jnp.asarray(A)), (A + A.T) @ x,
                                **TOL)
    chex.assert_trees_all_close(jax.grad(quad)(jnp.asarray(x), jnp.asarray(S)), 2 * S @ x, **TOL)


def test_log_det_identities():
    """d log|A| / dA = A^{-T} (general A); over a symmetric A's free entries it is
    2 A^{-1} - diag(A^{-1}) (Corollary 5.7); d det A / da_ij is the cofactor C_ij (Lemma 5.4)."""
    A, _, _, S = _matrices(18)
    logdet = lambda M: jnp.linalg.slogdet(M)[1]
    chex.assert_trees_all_close(jax.grad(logdet)(jnp.asarray(A)), np.linalg.inv(A).T, **TOL)
    g_free = jax.grad(lambda v: logdet(sym_from_free(v, D)))(jnp.asarray(tril_free(S)))
    inv = np.linalg.inv(S)
    chex.assert_trees_all_close(g_free, tril_free(2 * inv - inv * np.eye(D)), **TOL)
    cof = np.array([[(-1) ** (i + j) * np.linalg.det(np.delete(np.delete(A, i, 0), j, 1))
                     for j in range(D)] for i in range(D)])
    chex.assert_trees_all_close(jax.grad(jnp.linalg.det)(jnp.asarray(A)), cof, **TOL)


def test_trace_product_identities():
    """d tr(AB) / dA = B^T (general A); over a symmetric A's free entries it is
    B + B^T - diag(B) (Lemma 5.8)."""
    A, B, _, S = _matrices(19)
    tr = lambda M: jnp.trace(M @ jnp.asarray(B))
    chex.assert_trees_all_close(jax.grad(tr)(jnp.asarray(A)), B.T, **TOL)
    g_free = jax.grad(lambda v: tr(sym_from_free(v, D)))(jnp.asarray(tril_free(S)))
    chex.assert_trees_all_close(g_free, tril_free(B + B.T - B * np.eye(D)), **TOL)


def test_inverse_differential():
    """d(A^{-1}) = -A^{-1} dA A^{-1} (seeds 001, 004), as a forward-mode derivative."""
    A, B, _, _ = _matrices(20)
    _, tangent = jax.jvp(jnp.linalg.inv, (jnp.asarray(A),), (jnp.asarray(B),))
    inv = np.linalg.inv(A)
    chex.assert_trees_all_close(tangent, -inv @ B @ inv, **TOL)


def test_concrete_arguments_are_checked_against_the_mixture():
    """On concrete values a mis-shaped argument is a ValueError quoting the shapes, not a number
    from broadcasting (X of one feature against a 3-feature mixture broadcast silently)."""
    X, gamma, w, params = random_problem(15, "full")
    with pytest.raises(ValueError, match=r"X has 1 features \(shape \(24, 1\)\)"):
        obj.observed_log_likelihood(params, X[:, :1])
    with pytest.raises(ValueError, match=r"\(24, 3\) for X of shape \(24, 3\); got \(5, 3\)"):
        obj.complete_data_log_likelihood(params, gamma[:5], X)
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(24,\)"):
        obj.kl_divergence(gamma, params, X, w[:5])
    with pytest.raises(ValueError, match="covariance_type must be one of"):
        gmm.n_parameters("ful", 2, 3)
