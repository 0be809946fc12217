"""Dense reference objectives of a Gaussian mixture: Q, the observed log-likelihood, ELBO and KL.

Written from the seeds' formulas with ``slogdet`` and ``solve`` on dense covariance matrices,
independently of the fast paths in :mod:`emjax.gmm`, so tests and generalised EM can
differentiate them with ``jax.grad`` and trust the result.

Notation (seeds 001 and 003): ``gamma[n, k] = q(z_n = k)``, ``w_n`` optional sample weights,
``N_k = sum_n w_n gamma_nk`` and ``N = sum_n w_n``.

.. math::
   Q(\\theta; \\gamma) = \\sum_n w_n \\sum_k \\gamma_{nk}
       \\big[\\log\\pi_k + \\log N(x_n \\mid \\mu_k, \\Sigma_k)\\big]
       - \\tfrac{r}{2}\\sum_k N_k \\operatorname{tr}(\\Sigma_k^{-1})

The last term (``r = reg_covar``, zero by default) makes the regularised closed-form M-step
``Sigma_k = S_k / N_k + r I`` the *exact* maximiser of the objective: its gradient in
``Sigma_k`` is ``(r/2) N_k Sigma_k^{-2}``, which adds ``r N_k I`` to the scatter ``S_k``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp, xlogy

from emjax import _validation as v
from emjax._linalg import after
from emjax.gmm import GMMParams
from emjax.gmm import covariance as cov_lib

Array = jax.Array

__all__ = [
    "complete_data_log_likelihood",
    "dense_covariances",
    "elbo",
    "entropy",
    "gaussian_log_density",
    "kl_divergence",
    "log_joint",
    "observed_log_likelihood",
    "posterior",
]


def gaussian_log_density(X: Array, mean: Array, cov: Array) -> Array:
    """``log N(x_n | mean, cov)`` for one ``(D, D)`` matrix ``cov``, shape ``(n_samples,)``.

    ``cov`` is used as a *general* matrix (``slogdet`` and ``solve``, no symmetrisation), so
    ``jax.grad`` with respect to it is the unconstrained matrix derivative of the seeds
    (``d log|S| / dS = S^{-T}``, ``d a^T S^{-1} a / dS = -S^{-T} a a^T S^{-T}``).

    .. math:: \\log N = -\\tfrac12\\big(D\\log 2\\pi + \\log|\\Sigma|
              + (x-\\mu)^T\\Sigma^{-1}(x-\\mu)\\big)
    """
    d = X.shape[-1]
    diff = X - mean
    sol = jnp.linalg.solve(cov, diff.T).T
    _, logdet = jnp.linalg.slogdet(after(cov, sol))  # not beside the solve (emjax._linalg)
    return -0.5 * (d * math.log(2.0 * math.pi) + logdet + jnp.sum(diff * sol, axis=-1))


def dense_covariances(params: GMMParams) -> Array:
    """``(n_components, n_features, n_features)`` covariances read from
    ``params.covariance.covariances`` (the precision Cholesky factors are not used), so a
    gradient of a function of them lands on the covariance type's own parameters."""
    k, d = params.means.shape
    return cov_lib.as_full(params.covariance, k, d)


def log_joint(params: GMMParams, X: Array) -> Array:
    """``log pi_k + log N(x_n | mu_k, Sigma_k)``, shape ``(n_samples, n_components)``, dense."""
    X, _, _ = _checked(params, X)
    return _log_joint(params, X)


def _log_joint(params: GMMParams, X: Array) -> Array:
    """:func:`log_joint` of arguments already checked (by the public function that calls it)."""
    covs = dense_covariances(params)
    comp = jax.vmap(gaussian_log_density, in_axes=(None, 0, 0), out_axes=1)(X, params.means, covs)
    return comp + jnp.log(params.weights)[None, :]


def _checked(params: GMMParams, X, q=None, sample_weight=None):
    """``(X, q, sample_weight)`` checked against ``params`` and each other on concrete values
    (a ``ValueError`` quoting the shapes; broadcasting would otherwise give a wrong number);
    inside ``jit``/``grad`` (any tracer) returned as given."""
    if v.is_traced(params, X, q, sample_weight):
        return X, q, sample_weight
    X = v.check_model_data(params, X, nan_hint="")  # dense references: no missing entries
    n, k = X.shape[0], np.shape(params.means)[0]
    if q is not None and np.shape(q) != (n, k):
        raise ValueError(f"the responsibilities must have shape (n_samples, n_components) = "
                         f"{(n, k)} for X of shape {X.shape}; got {np.shape(q)}")
    if sample_weight is not None:
        sample_weight = v.check_sample_weight(sample_weight, n, X.dtype)
    return X, q, sample_weight


def _weights(X: Array, sample_weight: Array | None) -> Array:
    if sample_weight is None:
        return jnp.ones(X.shape[0], X.dtype)
    return sample_weight


def complete_data_log_likelihood(
    params: GMMParams,
    gamma: Array,
    X: Array,
    sample_weight: Array | None = None,
    *,
    reg_covar: float = 0.0,
) -> Array:
    """The expected complete-data log-likelihood ``Q(theta; gamma)`` (a scalar), dense.

    It is ``E_q[log p(X, Z | theta)]`` exactly (the ``2 pi`` constant included), so that
    :func:`elbo` is ``Q + H(q)``. Every argument is differentiable: ``weights`` are treated as
    free positive numbers (the simplex constraint is the caller's Lagrangian), the covariances
    as the covariance type's own free parameters (full: a general ``(K, D, D)`` matrix; tied:
    ``(D, D)``; diag: ``(K, D)`` variances; spherical: ``(K,)`` variances).

    Args:
      params: the mixture; only ``weights``, ``means`` and ``covariance.covariances`` are read.
      gamma: ``(n_samples, n_components)`` responsibilities ``q(z_n = k)``.
      X: ``(n_samples, n_features)``.
      sample_weight: optional ``(n_samples,)`` weights ``w_n``.
      reg_covar: ``r`` of the module docstring: subtracts ``r/2 sum_k N_k tr(Sigma_k^{-1})``,
        whose maximiser is the regularised closed form ``S_k / N_k + r I``.

    Returns:
      ``()`` the value of Q.
    """
    X, gamma, sample_weight = _checked(params, X, gamma, sample_weight)
    w = _weights(X, sample_weight)
    wg = gamma * w[:, None]
    q = jnp.sum(wg * _log_joint(params, X))
    if reg_covar:
        covs = dense_covariances(params)
        eye = jnp.broadcast_to(jnp.eye(covs.shape[-1], dtype=covs.dtype), covs.shape)
        tr_prec = jnp.trace(jnp.linalg.solve(covs, eye), axis1=-2, axis2=-1)
        q = q - 0.5 * reg_covar * jnp.sum(jnp.sum(wg, axis=0) * tr_prec)
    return q


def observed_log_likelihood(
    params: GMMParams, X: Array, sample_weight: Array | None = None
) -> Array:
    """``log p(X | theta) = sum_n w_n log sum_k pi_k N(x_n | mu_k, Sigma_k)`` (a scalar)."""
    X, _, sample_weight = _checked(params, X, None, sample_weight)
    return jnp.sum(_weights(X, sample_weight) * logsumexp(_log_joint(params, X), axis=1))


def posterior(params: GMMParams, X: Array) -> Array:
    """``p(z_n = k | x_n, theta)``, shape ``(n_samples, n_components)`` (the exact E-step)."""
    return jax.nn.softmax(log_joint(params, X), axis=1)


def entropy(q: Array, sample_weight: Array | None = None) -> Array:
    """``H(q) = -sum_n w_n sum_k q_nk log q_nk`` (a scalar; ``0 log 0 = 0``)."""
    w = jnp.ones(q.shape[0], q.dtype) if sample_weight is None else sample_weight
    return -jnp.sum(w[:, None] * xlogy(q, q))


def elbo(params: GMMParams, q: Array, X: Array, sample_weight: Array | None = None) -> Array:
    """The lower bound ``L(q, theta) = sum_Z q(Z) log(p(X, Z | theta) / q(Z)) = Q + H(q)``."""
    return complete_data_log_likelihood(params, q, X, sample_weight) + entropy(q, sample_weight)


def kl_divergence(
    q: Array, params: GMMParams, X: Array, sample_weight: Array | None = None
) -> Array:
    """``KL(q || p(Z | X, theta)) = sum_n w_n sum_k q_nk (log q_nk - log p(z_n=k | x_n))``."""
    X, q, sample_weight = _checked(params, X, q, sample_weight)
    w = _weights(X, sample_weight)
    lj = _log_joint(params, X)
    log_post = lj - logsumexp(lj, axis=1, keepdims=True)
    return jnp.sum(w[:, None] * (xlogy(q, q) - q * log_post))
