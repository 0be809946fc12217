r"""Gaussian and Student-t components on emjax's covariance machinery.

:class:`Gaussian` reuses the Gaussian mixture's pieces (``gmm.component_log_prob``,
``gmm.suff_stats``, ``gmm.params_from_stats_checked``: the four covariance types, the jitter
that keeps a covariance positive definite and its ``STATUS_REGULARISED`` flag); its ``"diag"``
type is written with masks instead, so NaN entries are marginalised. :class:`StudentT` is the
robust variant, fitted by EM with the latent precision scale ``u`` of each sample (McLachlan
and Peel, ch. 7), its degrees of freedom by an ECM step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import digamma, gammaln

from emjax import em
from emjax.families.base import LOG_2PI, Family, floored, masked
from emjax.gmm import covariance as cov_lib
from emjax.gmm import gem
from emjax.gmm import steps as gmm

Array = jax.Array

__all__ = ["Gaussian", "GaussianParams", "StudentT", "StudentTParams"]


class GaussianParams(NamedTuple):
    """``means`` ``(n_components, n_features)`` and a covariance pytree
    (:class:`emjax.FullCovariance`, ``TiedCovariance``, ``DiagCovariance`` or
    ``SphericalCovariance``)."""

    means: Array
    covariance: Any


def _as_gmm(means, covariance) -> gmm.GMMParams:
    k = means.shape[0]
    return gmm.GMMParams(jnp.full((k,), 1.0 / k, means.dtype), means, covariance)


def _sample_normal(key, means, covariance, z):
    k, d = means.shape
    chol = jnp.linalg.cholesky(cov_lib.as_full(covariance, k, d))
    eps = jax.random.normal(key, (z.shape[0], d), means.dtype)
    return means[z] + jnp.einsum("nij,nj->ni", chol[z], eps)


def _check_ctype(ctype, allowed):
    if ctype not in allowed:
        raise ValueError(f"covariance_type must be one of {allowed}; got {ctype!r}")


@dataclasses.dataclass(frozen=True)
class Gaussian(Family):
    r"""Gaussian components with one of the four covariance types.

    .. math:: \hat\mu_l = \frac{\sum_n r_{nl} x_n}{N_l},\quad
       \hat\Sigma_l = \frac{\sum_n r_{nl}(x_n - \hat\mu_l)(x_n - \hat\mu_l)^T}{N_l} + r I

    Attributes:
      covariance_type: ``"full"``, ``"tied"``, ``"diag"`` or ``"spherical"``. Only ``"diag"``
        (columns independent given the component) accepts NaN entries.
      reg_covar: ``r``, added to every variance (keeps them positive).
    """

    covariance_type: str = "full"
    reg_covar: float = 1e-6

    def __post_init__(self):
        _check_ctype(self.covariance_type, cov_lib.COVARIANCE_TYPES)

    @property
    def allows_missing(self):
        return self.covariance_type == "diag"

    @property
    def _masked(self):
        return self.covariance_type == "diag"

    def encode(self, X):
        if not self._masked:
            return (X,)
        X0, M = masked(X)
        # centred at the observed column means so float32 keeps its digits in the moments
        shift = jnp.sum(X0, 0) / jnp.maximum(jnp.sum(M, 0), 1.0)
        return (X0 - shift) * M, M, shift

    def features(self, data):
        return data[0]

    def log_prob(self, theta, data):
        if not self._masked:
            return gmm.component_log_prob(_as_gmm(theta.means, theta.covariance), data[0])
        Xc, M, shift = data
        mu = theta.means - shift
        pc = theta.covariance.precisions_cholesky
        prec = pc * pc
        maha = (Xc * Xc) @ prec.T - 2.0 * Xc @ (mu * prec).T + M @ (mu * mu * prec).T
        return -0.5 * maha + M @ jnp.log(pc).T - 0.5 * LOG_2PI * jnp.sum(M, 1)[:, None]

    def stats(self, theta, data, rw):
        if not self._masked:
            (X,) = data
            if theta is None:
                ref = (rw.T @ X) / (jnp.sum(rw, 0)[:, None] + jnp.finfo(X.dtype).tiny)
            else:
                ref = theta.means
            return gmm.suff_stats(rw, X, jax.lax.stop_gradient(ref),
                                  covariance_type=self.covariance_type)
        Xc, M, _ = data
        return rw.T @ M, rw.T @ Xc, rw.T @ (Xc * Xc)

    def m_step(self, stats, theta, data):
        if not self._masked:
            p, regularised = gmm.params_from_stats_checked(
                stats, covariance_type=self.covariance_type, reg_covar=self.reg_covar)
            flags = jnp.where(regularised, em.STATUS_REGULARISED, 0).astype(jnp.int32)
            return GaussianParams(p.means, p.covariance), flags
        n, s1, s2 = stats
        shift = data[2]
        ok = n > 0
        nn = jnp.where(ok, n, 1)
        mu = jnp.where(ok, s1 / nn, 0.0)
        var = jnp.where(ok, s2 / nn - mu * mu, 1.0)
        var, flags = floored(var + self.reg_covar, jnp.finfo(var.dtype).tiny ** 0.5)
        return GaussianParams(mu + shift, cov_lib.from_covariances("diag", var)), flags

    def n_parameters(self, n_components):
        d = self.n_features
        return n_components * d + cov_lib.n_covariance_parameters(
            self.covariance_type, n_components, d)

    def sample(self, key, theta, z):
        return _sample_normal(key, theta.means, theta.covariance, z)

    def to_unconstrained(self, theta):
        u = gem.to_unconstrained(_as_gmm(theta.means, theta.covariance))
        return GaussianParams(u.means, u.chol)

    def from_unconstrained(self, u):
        p = gem.from_unconstrained(gem.GMMUnconstrained(jnp.zeros(u.means.shape[:1]), u.means,
                                                        u.covariance), self.covariance_type)
        return GaussianParams(p.means, p.covariance)

    # diag only: T(x) = (x, x^2), eta = (mu / s2, -1 / (2 s2)),
    # A = -eta1^2 / (4 eta2) - log(-2 eta2) / 2
    def natural(self, theta):
        var = theta.covariance.covariances
        return (theta.means / var, -0.5 / var)

    def log_partition(self, eta):
        e1, e2 = eta
        return jnp.sum(-e1 * e1 / (4.0 * e2) - 0.5 * jnp.log(-2.0 * e2))

    def mean_params(self, theta):
        var = theta.covariance.covariances
        return (theta.means, theta.means ** 2 + var)


class StudentTParams(NamedTuple):
    """``means`` ``(K, D)``, a ``FullCovariance`` or ``DiagCovariance`` of the scale matrices,
    and ``dof`` ``(K,)`` the degrees of freedom."""

    means: Array
    covariance: Any
    dof: Array


@dataclasses.dataclass(frozen=True)
class StudentT(Family):
    r"""Multivariate Student-t components (robust clusters), fitted by EM over the latent
    scales: the E-step adds :math:`u_{nl} = (\nu_l + D) / (\nu_l + \delta_{nl})` (``delta`` the
    squared Mahalanobis distance), and

    .. math:: \hat\mu_l = \frac{\sum_n r_{nl}u_{nl}x_n}{\sum_n r_{nl}u_{nl}},\quad
       \hat\Sigma_l = \frac{\sum_n r_{nl}u_{nl}(x_n - \hat\mu_l)(x_n - \hat\mu_l)^T}
       {\sum_n r_{nl}} + rI.

    With ``dof=None`` each ``nu_l`` is then updated by the ECM step (a conditional maximisation
    of Q with the scales' expectations held): the root of
    :math:`-\psi(\nu/2) + \log(\nu/2) + 1 + \frac{1}{N_l}\sum_n r_{nl}(\log u_{nl} - u_{nl})
    + \psi(\frac{\nu^{old}+D}{2}) - \log\frac{\nu^{old}+D}{2} = 0`, found by bisection on
    ``log nu`` in ``[min_dof, max_dof]`` (a bound reached sets ``em.STATUS_FLOORED``).

    Attributes:
      covariance_type: ``"full"`` or ``"diag"``.
      dof: fixed degrees of freedom, or ``None`` to estimate them (starting at ``init_dof``).
      reg_covar: added to the scale matrices' diagonal.
    """

    covariance_type: str = "full"
    dof: float | None = None
    reg_covar: float = 1e-6
    init_dof: float = 10.0
    min_dof: float = 0.5
    max_dof: float = 1000.0

    allows_missing = False

    def __post_init__(self):
        _check_ctype(self.covariance_type, ("full", "diag"))

    def check(self, X):
        if np.isnan(X).any():
            raise ValueError(f"StudentT does not accept NaN; X of shape {X.shape} has some")

    def encode(self, X):
        return (X,)

    def features(self, data):
        return data[0]

    def _maha(self, theta, X):
        c = jax.lax.stop_gradient(jnp.mean(theta.means, 0))
        return cov_lib.mahalanobis_squared(theta.covariance, X - c, theta.means - c)

    def log_prob(self, theta, data):
        (X,) = data
        d = X.shape[1]
        nu = theta.dof
        logdet = cov_lib.log_det_precision_cholesky(theta.covariance, d)
        const = gammaln(0.5 * (nu + d)) - gammaln(0.5 * nu) - 0.5 * d * jnp.log(nu * math.pi)
        return const + logdet - 0.5 * (nu + d) * jnp.log1p(self._maha(theta, X) / nu)

    def stats(self, theta, data, rw):
        (X,) = data
        d = X.shape[1]
        n = jnp.sum(rw, 0)
        if theta is None:
            ref = (rw.T @ X) / (n[:, None] + jnp.finfo(X.dtype).tiny)
            return gmm.suff_stats(rw, X, ref, covariance_type=self.covariance_type), n, None
        u = (theta.dof + d) / (theta.dof + self._maha(theta, X))
        ss = gmm.suff_stats(rw * u, X, jax.lax.stop_gradient(theta.means),
                            covariance_type=self.covariance_type)
        half = 0.5 * (theta.dof + d)
        c = jnp.sum(rw * (jnp.log(u) - u), 0) / (n + jnp.finfo(X.dtype).tiny) \
            + digamma(half) - jnp.log(half)
        return ss, n, c

    def m_step(self, stats, theta, data):
        ss, n, c = stats
        dtype = ss.sx.dtype
        nu_k = ss.nk + 10 * jnp.finfo(dtype).eps
        n = n + 10 * jnp.finfo(dtype).eps
        delta = ss.sx / nu_k[:, None]
        means = ss.ref + delta
        if self.covariance_type == "full":
            eye = jnp.eye(delta.shape[1], dtype=dtype)
            scatter = ss.sxx - nu_k[:, None, None] * delta[:, :, None] * delta[:, None, :]
            covs = scatter / n[:, None, None] + self.reg_covar * eye
        else:
            covs = (ss.sxx - nu_k[:, None] * delta * delta) / n[:, None] + self.reg_covar
        cov, regularised = cov_lib.from_covariances_checked(self.covariance_type, covs)
        flags = jnp.where(regularised, em.STATUS_REGULARISED, 0).astype(jnp.int32)
        k = means.shape[0]
        if self.dof is not None:
            dof = jnp.full((k,), self.dof, dtype)
        elif c is None:
            dof = jnp.full((k,), self.init_dof, dtype)
        else:
            dof, f = self._solve_dof(c)
            flags = flags | f
        return StudentTParams(means, cov, dof), flags

    def _solve_dof(self, c):
        def f(log_nu):
            h = 0.5 * jnp.exp(log_nu)
            return -digamma(h) + jnp.log(h) + 1.0 + c

        def halve(_, bracket):
            lo, hi = bracket
            mid = 0.5 * (lo + hi)
            pos = f(mid) > 0
            return jnp.where(pos, mid, lo), jnp.where(pos, hi, mid)

        lo = jnp.full_like(c, math.log(self.min_dof))
        hi = jnp.full_like(c, math.log(self.max_dof))
        # f decreases in nu: bisection keeps the bracket of its root (60 halvings: to rounding);
        # a rolled loop, since digamma unrolled 60 times compiles for minutes
        lo, hi = jax.lax.fori_loop(0, 60, halve, (lo, hi))
        nu = jnp.exp(0.5 * (lo + hi))
        return floored(nu, self.min_dof * (1 + 1e-6), self.max_dof * (1 - 1e-6))

    def n_parameters(self, n_components):
        d = self.n_features
        extra = n_components if self.dof is None else 0
        return n_components * d + cov_lib.n_covariance_parameters(
            self.covariance_type, n_components, d) + extra

    def sample(self, key, theta, z):
        k1, k2 = jax.random.split(key)
        x = _sample_normal(k1, jnp.zeros_like(theta.means), theta.covariance, z)
        half = 0.5 * theta.dof[z]
        g = jax.random.gamma(k2, half) / half
        return theta.means[z] + x / jnp.sqrt(g)[:, None]

    def to_unconstrained(self, theta):
        u = gem.to_unconstrained(_as_gmm(theta.means, theta.covariance))
        return StudentTParams(u.means, u.chol, jnp.log(theta.dof))

    def from_unconstrained(self, u):
        p = gem.from_unconstrained(gem.GMMUnconstrained(jnp.zeros(u.means.shape[:1]), u.means,
                                                        u.covariance), self.covariance_type)
        return StudentTParams(p.means, p.covariance, jnp.exp(u.dof))
