r"""Exponential families with closed-form (moment-matching) M-steps.

Each family here is an exponential family
:math:`p(x|\theta) = h(x)\exp(\langle\eta(\theta), T(x)\rangle - A(\eta))`, so the M-step sets
the mean parameters :math:`\nabla A(\eta_l) = E_\theta[T(x)]` to the responsibility-weighted
averages of :math:`T(x_n)` (seed 003, section 3, with ``p_l`` in this form). Each class
exposes ``natural``, ``log_partition`` and ``mean_params`` so the tests can check the closed forms
against ``jax.grad``. Columns are independent given the component, so NaN entries are
marginalised by masking them out of every sum.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import digamma, gammaln, logsumexp, polygamma

from emjax.families.base import Family, effective_floor, floored, masked

Array = jax.Array

__all__ = [
    "Bernoulli",
    "BernoulliParams",
    "Categorical",
    "CategoricalParams",
    "Exponential",
    "ExponentialParams",
    "Gamma",
    "GammaParams",
    "Poisson",
    "PoissonParams",
]


def _observed(X: np.ndarray) -> np.ndarray:
    return X[~np.isnan(X)]


def _counts(rw: Array, Y: Array) -> Array:
    """``rw^T Y``: ``(K, n_features)`` weighted column sums, one GEMM."""
    return rw.T @ Y


def _where_observed(n: Array, value: Array, default) -> Array:
    return jnp.where(n > 0, value, default)


# ---------------------------------------------------------------------------------------------
class BernoulliParams(NamedTuple):
    """``probs``: ``(n_components, n_features)``, ``P(x = 1)`` per component and column."""

    probs: Array


@dataclasses.dataclass(frozen=True)
class Bernoulli(Family):
    r"""Independent binary columns (values 0/1, NaN missing).

    .. math:: \hat p_{ld} = \frac{\sum_n r_{nl} x_{nd}}{\sum_n r_{nl} m_{nd}}
       \quad\text{clipped to } [f, 1 - f]

    Attributes:
      floor: ``f``, keeps probabilities off 0 and 1 (at least ``10 eps`` of the dtype); a clip
        that moves a value sets ``em.STATUS_FLOORED``. The clip is the exact maximiser of the
        concave Q on ``[f, 1 - f]``, so EM stays monotone.
    """

    floor: float = 1e-10

    def check(self, X):
        v = _observed(X)
        if v.size and not np.all((v == 0) | (v == 1)):
            raise ValueError(f"Bernoulli columns must hold 0, 1 or NaN; got values "
                             f"{np.unique(v)[:6]} in X of shape {X.shape}")

    def log_prob(self, theta, data):
        X0, M = data
        p = theta.probs
        return X0 @ jnp.log(p).T + (M - X0) @ jnp.log1p(-p).T

    def stats(self, theta, data, rw):
        X0, M = data
        return _counts(rw, X0), _counts(rw, M)

    def m_step(self, stats, theta, data):
        s, n = stats
        f = effective_floor(self.floor, s.dtype)
        p = _where_observed(n, s / jnp.where(n > 0, n, 1), 0.5)
        p, flags = floored(p, f, 1 - f)
        return BernoulliParams(p), flags

    def n_parameters(self, n_components):
        return n_components * self.n_features

    def sample(self, key, theta, z):
        return jax.random.bernoulli(key, theta.probs[z]).astype(theta.probs.dtype)

    def to_unconstrained(self, theta):
        return BernoulliParams(jnp.log(theta.probs) - jnp.log1p(-theta.probs))

    def from_unconstrained(self, u):
        return BernoulliParams(jax.nn.sigmoid(u.probs))

    # exponential-family form: T(x) = x, eta = logit p, A = softplus(eta)
    def natural(self, theta):
        return self.to_unconstrained(theta).probs

    def log_partition(self, eta):
        return jnp.sum(jax.nn.softplus(eta))

    def mean_params(self, theta):
        return theta.probs


# ---------------------------------------------------------------------------------------------
class CategoricalParams(NamedTuple):
    """``probs``: ``(n_components, n_features, max_categories)``; entries past a column's
    number of categories are 0."""

    probs: Array


@dataclasses.dataclass(frozen=True)
class Categorical(Family):
    r"""Independent categorical columns: integer codes ``0 .. C_d - 1`` (NaN missing), or
    one-hot blocks (``one_hot=True``, all-zero or NaN block = missing).

    .. math:: \hat p_{ldc} = \frac{\sum_n r_{nl} [x_{nd} = c]}{\sum_n r_{nl} m_{nd}}

    then clipped below at ``floor`` and renormalised. Latent class analysis is a mixture of
    this family.

    Attributes:
      n_categories: ``C_d`` per column (a tuple), one count for every column (an int), or
        ``None`` to infer ``max code + 1`` per column (codes only).
      one_hot: the columns are one-hot blocks of sizes ``n_categories`` (which is then needed).
      floor: the probability floor (at least ``10 eps`` of the dtype; ``em.STATUS_FLOORED``).
    """

    n_categories: int | tuple | None = None
    one_hot: bool = False
    floor: float = 1e-10

    def width(self):
        if self.one_hot:
            return int(sum(self._cats(self.n_features or 1)))
        if isinstance(self.n_categories, tuple):
            return len(self.n_categories)
        return super().width()

    def _cats(self, d) -> tuple:
        c = self.n_categories
        return tuple(int(x) for x in c) if isinstance(c, (tuple, list)) else (int(c),) * d

    def bind(self, X):
        if self.one_hot:
            if self.n_categories is None:
                raise ValueError("Categorical(one_hot=True) needs n_categories (block sizes)")
            cats = self._cats(self.n_features or 1) if not isinstance(
                self.n_categories, int) else None
            if cats is None:
                if X.shape[1] % self.n_categories:
                    raise ValueError(f"X of shape {X.shape} is not a whole number of one-hot "
                                     f"blocks of {self.n_categories}")
                cats = (self.n_categories,) * (X.shape[1] // self.n_categories)
            if sum(cats) != X.shape[1]:
                raise ValueError(f"one-hot blocks {cats} need {sum(cats)} columns; X has "
                                 f"shape {X.shape}")
            v = _observed(X)
            if v.size and not np.all((v == 0) | (v == 1)):
                raise ValueError(f"one-hot columns must hold 0, 1 or NaN; X has shape {X.shape}")
            # two 1s would score two categories at once, a partly NaN block one of them
            start = 0
            for j, c in enumerate(cats):
                block = X[:, start:start + c]
                nan = np.isnan(block)
                bad = np.flatnonzero((nan.any(1) & ~nan.all(1)) | (np.nansum(block, 1) > 1))
                if bad.size:
                    raise ValueError(f"one-hot block {j} (columns {start}..{start + c - 1}) of "
                                     f"row {bad[0]} is {block[bad[0]]}: a block holds one 1, or "
                                     f"is all 0 or all NaN (missing)")
                start += c
            return dataclasses.replace(self, n_categories=cats, n_features=len(cats))
        v = _observed(X)
        if v.size and (np.any(v < 0) or np.any(v != np.round(v))):
            raise ValueError(f"Categorical codes must be integers >= 0 or NaN; X of shape "
                             f"{X.shape} has e.g. {v[(v < 0) | (v != np.round(v))][:3]}")
        d = X.shape[1]
        if self.n_categories is None:
            top = np.where(np.isnan(X), -1, X).max(axis=0)
            cats = tuple(int(max(t + 1, 1)) for t in top)
        else:
            cats = self._cats(d)
            if len(cats) != d:
                raise ValueError(f"n_categories has {len(cats)} entries; X has shape {X.shape}")
            top = np.where(np.isnan(X), -1, X).max(axis=0)
            if np.any(top >= np.asarray(cats)):
                raise ValueError(f"codes up to {top.astype(int).tolist()} exceed n_categories "
                                 f"{cats}")
        return dataclasses.replace(self, n_categories=cats, n_features=d)

    @property
    def max_categories(self) -> int:
        return max(self.n_categories)

    def valid(self, dtype=bool) -> np.ndarray:
        """``(n_features, max_categories)`` mask of the categories that exist."""
        c = np.asarray(self.n_categories)
        return (np.arange(self.max_categories)[None, :] < c[:, None]).astype(dtype)

    def encode(self, X):
        d, cmax = self.n_features, self.max_categories
        if self.one_hot:
            pos = np.concatenate([j * cmax + np.arange(c) for j, c in enumerate(self.n_categories)])
            Y = jnp.zeros((X.shape[0], d * cmax), X.dtype).at[:, pos].set(jnp.nan_to_num(X))
            return (Y,)
        Y = (X[:, :, None] == jnp.arange(cmax, dtype=X.dtype)).astype(X.dtype)
        return (Y.reshape(X.shape[0], d * cmax),)

    def _log_probs(self, probs):
        valid = self.valid()
        return jnp.where(valid, jnp.log(jnp.where(valid, probs, 1.0)), 0.0)

    def log_prob(self, theta, data):
        (Y,) = data
        k = theta.probs.shape[0]
        return Y @ self._log_probs(theta.probs).reshape(k, -1).T

    def stats(self, theta, data, rw):
        (Y,) = data
        return _counts(rw, Y).reshape(rw.shape[1], self.n_features, self.max_categories)

    def m_step(self, stats, theta, data):
        valid = jnp.asarray(self.valid(stats.dtype))
        f = effective_floor(self.floor, stats.dtype)
        tot = jnp.sum(stats, axis=-1, keepdims=True)
        uniform = valid / jnp.sum(valid, axis=-1, keepdims=True)
        p = jnp.where(tot > 0, stats / jnp.where(tot > 0, tot, 1), uniform)
        q, flags = floored(p, f)
        q = q * valid
        return CategoricalParams(q / jnp.sum(q, axis=-1, keepdims=True)), flags

    def features(self, data):
        return data[0]

    def n_parameters(self, n_components):
        return n_components * int(sum(c - 1 for c in self.n_categories))

    def sample(self, key, theta, z):
        logits = jnp.where(self.valid(), jnp.log(theta.probs[z] + 0.0), -jnp.inf)
        codes = jax.random.categorical(key, logits, axis=-1)
        if not self.one_hot:
            return codes.astype(theta.probs.dtype)
        return jnp.concatenate([jax.nn.one_hot(codes[:, j], c, dtype=theta.probs.dtype)
                                for j, c in enumerate(self.n_categories)], axis=1)

    def to_unconstrained(self, theta):
        return CategoricalParams(self._log_probs(theta.probs))

    def from_unconstrained(self, u):
        return CategoricalParams(jax.nn.softmax(jnp.where(self.valid(), u.probs, -jnp.inf), -1))

    # exponential-family form: T(x) = one-hot(x), eta = log p, A = logsumexp(eta) (= 0 at log p)
    def natural(self, theta):
        return self._log_probs(theta.probs)

    def log_partition(self, eta):
        return jnp.sum(logsumexp(jnp.where(self.valid(), eta, -jnp.inf), axis=-1))

    def mean_params(self, theta):
        return theta.probs


# ---------------------------------------------------------------------------------------------
class PoissonParams(NamedTuple):
    """``rates``: ``(n_components, n_features)``."""

    rates: Array


@dataclasses.dataclass(frozen=True)
class Poisson(Family):
    r"""Independent count columns (non-negative integers, NaN missing).

    .. math:: \hat\lambda_{ld} = \frac{\sum_n r_{nl} x_{nd}}{\sum_n r_{nl} m_{nd}}
       \ \text{floored at } f

    Attributes:
      floor: the rate floor (a component that saw only zeros keeps rate ``f``,
        ``em.STATUS_FLOORED``).
    """

    floor: float = 1e-10

    def check(self, X):
        v = _observed(X)
        if v.size and (np.any(v < 0) or np.any(v != np.round(v))):
            raise ValueError(f"Poisson columns must hold non-negative integers or NaN; X of "
                             f"shape {X.shape}")

    def encode(self, X):
        X0, M = masked(X)
        return X0, M, jnp.sum(gammaln(X0 + 1.0), axis=1)

    def features(self, data):
        return jnp.log1p(data[0])

    def log_prob(self, theta, data):
        X0, M, c = data
        lam = theta.rates
        return X0 @ jnp.log(lam).T - M @ lam.T - c[:, None]

    def stats(self, theta, data, rw):
        X0, M, _ = data
        return _counts(rw, X0), _counts(rw, M)

    def m_step(self, stats, theta, data):
        s, n = stats
        lam = _where_observed(n, s / jnp.where(n > 0, n, 1), 1.0)
        lam, flags = floored(lam, effective_floor(self.floor, s.dtype))
        return PoissonParams(lam), flags

    def n_parameters(self, n_components):
        return n_components * self.n_features

    def sample(self, key, theta, z):
        return jax.random.poisson(key, theta.rates[z]).astype(theta.rates.dtype)

    def to_unconstrained(self, theta):
        return PoissonParams(jnp.log(theta.rates))

    def from_unconstrained(self, u):
        return PoissonParams(jnp.exp(u.rates))

    # T(x) = x, eta = log lambda, A = exp(eta)
    def natural(self, theta):
        return jnp.log(theta.rates)

    def log_partition(self, eta):
        return jnp.sum(jnp.exp(eta))

    def mean_params(self, theta):
        return theta.rates


# ---------------------------------------------------------------------------------------------
class ExponentialParams(NamedTuple):
    """``rates``: ``(n_components, n_features)`` (mean ``1 / rate``)."""

    rates: Array


@dataclasses.dataclass(frozen=True)
class Exponential(Family):
    r"""Independent non-negative durations.

    .. math:: \hat\lambda_{ld} = \frac{\sum_n r_{nl} m_{nd}}{\sum_n r_{nl} x_{nd}}

    with the mean ``1 / lambda`` floored at ``floor`` (so the rate stays finite).
    """

    floor: float = 1e-10

    def check(self, X):
        v = _observed(X)
        if v.size and np.any(v < 0):
            raise ValueError(f"Exponential columns must be >= 0 or NaN; X of shape {X.shape}")

    def features(self, data):
        return jnp.log1p(data[0])

    def log_prob(self, theta, data):
        X0, M = data
        return M @ jnp.log(theta.rates).T - X0 @ theta.rates.T

    def stats(self, theta, data, rw):
        X0, M = data
        return _counts(rw, X0), _counts(rw, M)

    def m_step(self, stats, theta, data):
        s, n = stats
        mean = _where_observed(n, s / jnp.where(n > 0, n, 1), 1.0)
        mean, flags = floored(mean, effective_floor(self.floor, s.dtype))
        return ExponentialParams(1.0 / mean), flags

    def n_parameters(self, n_components):
        return n_components * self.n_features

    def sample(self, key, theta, z):
        return jax.random.exponential(key, z.shape + theta.rates.shape[1:],
                                      theta.rates.dtype) / theta.rates[z]

    def to_unconstrained(self, theta):
        return ExponentialParams(jnp.log(theta.rates))

    def from_unconstrained(self, u):
        return ExponentialParams(jnp.exp(u.rates))

    # T(x) = x, eta = -lambda, A = -log(-eta)
    def natural(self, theta):
        return -theta.rates

    def log_partition(self, eta):
        return -jnp.sum(jnp.log(-eta))

    def mean_params(self, theta):
        return 1.0 / theta.rates


# ---------------------------------------------------------------------------------------------
class GammaParams(NamedTuple):
    """``shapes`` and ``rates``: ``(n_components, n_features)`` each (mean ``shape / rate``)."""

    shapes: Array
    rates: Array


@dataclasses.dataclass(frozen=True)
class Gamma(Family):
    r"""Independent positive durations, shape ``a`` and rate ``b`` per component and column.

    With the weighted means :math:`m = \bar x` and :math:`\ell = \overline{\log x}`, Q is
    maximised by ``b = a / m`` and the root of :math:`\log a - \psi(a) = \log m - \ell`
    (``>= 0`` by Jensen): Minka's closed-form start
    :math:`a_0 = (3 - s + \sqrt{(s - 3)^2 + 24 s}) / (12 s)` and ``newton_steps`` of his
    generalised Newton update
    :math:`1/a \leftarrow 1/a + (\ell - \log m + \log a - \psi(a)) / (a^2 (1/a - \psi'(a)))`,
    which converges to rounding in about four steps.

    Attributes:
      floor: floor of ``s = log m - l`` (a column with one repeated value; the shape is then
        large but finite) and of the mean, ``em.STATUS_FLOORED``.
      newton_steps: static number of Newton steps on the shape.
    """

    floor: float = 1e-10
    newton_steps: int = 6

    def check(self, X):
        v = _observed(X)
        if v.size and np.any(v <= 0):
            raise ValueError(f"Gamma columns must be > 0 or NaN; X of shape {X.shape}")

    def encode(self, X):
        X0, M = masked(X)
        return X0, M, jnp.where(M > 0, jnp.log(jnp.where(M > 0, X0, 1.0)), 0.0)

    def features(self, data):
        return data[2]

    def log_prob(self, theta, data):
        X0, M, L = data
        a, b = theta.shapes, theta.rates
        return M @ (a * jnp.log(b) - gammaln(a)).T + L @ (a - 1.0).T - X0 @ b.T

    def stats(self, theta, data, rw):
        X0, M, L = data
        return _counts(rw, M), _counts(rw, X0), _counts(rw, L)

    def m_step(self, stats, theta, data):
        n, sx, sl = stats
        f = effective_floor(self.floor, sx.dtype)
        ok = n > 0
        nn = jnp.where(ok, n, 1)
        mean, f1 = floored(jnp.where(ok, sx / nn, 1.0), f)
        s, f2 = floored(jnp.log(mean) - jnp.where(ok, sl / nn, -1.0), f)
        a = (3.0 - s + jnp.sqrt(jnp.square(s - 3.0) + 24.0 * s)) / (12.0 * s)

        def newton(_, a):
            g = -s + jnp.log(a) - digamma(a)
            return 1.0 / (1.0 / a + g / (a * a * (1.0 / a - polygamma(1, a))))

        a = jax.lax.fori_loop(0, self.newton_steps, newton, a)  # rolled: digamma is large
        return GammaParams(a, a / mean), f1 | f2

    def n_parameters(self, n_components):
        return 2 * n_components * self.n_features

    def sample(self, key, theta, z):
        return jax.random.gamma(key, theta.shapes[z]) / theta.rates[z]

    def to_unconstrained(self, theta):
        return GammaParams(jnp.log(theta.shapes), jnp.log(theta.rates))

    def from_unconstrained(self, u):
        return GammaParams(jnp.exp(u.shapes), jnp.exp(u.rates))

    # T(x) = (x, log x), eta = (-b, a - 1), A = lgamma(a) - a log b
    def natural(self, theta):
        return (-theta.rates, theta.shapes - 1.0)

    def log_partition(self, eta):
        e1, e2 = eta
        return jnp.sum(gammaln(e2 + 1.0) - (e2 + 1.0) * jnp.log(-e1))

    def mean_params(self, theta):
        a, b = theta.shapes, theta.rates
        return (a / b, digamma(a) - jnp.log(b))

