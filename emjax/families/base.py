"""The component-family interface: what a family supplies so the generic EM driver can fit a
mixture of it (seed 003, section 3), and the mixture's E- and M-steps built from it.

A family is a frozen, hashable dataclass (static configuration, part of the jit cache key); its
parameters are a pytree whose leaves have the component axis first. The driver sees the family
only through :func:`make_model`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from emjax import em

Array = jax.Array


class MixtureParams(NamedTuple):
    """Parameters of a mixture of one component family (a pytree).

    Attributes:
      weights: ``(n_components,)`` mixing proportions ``alpha_l``, summing to one.
      components: the family's parameter pytree; every leaf has ``n_components`` first.
    """

    weights: Array
    components: Any


def effective_floor(floor: float, dtype) -> float:
    """The floor actually applied: ``floor``, but at least ``10 eps`` of ``dtype`` so ``1 - p``
    stays representable in float32."""
    return max(float(floor), 10.0 * float(jnp.finfo(dtype).eps))


def floored(value: Array, lo, hi=None) -> tuple[Array, Array]:
    """``clip(value, lo, hi)`` and the ``STATUS_FLOORED`` bit if any entry was moved."""
    out = jnp.maximum(value, lo) if hi is None else jnp.clip(value, lo, hi)
    hit = jnp.any(out != value)
    return out, jnp.where(hit, em.STATUS_FLOORED, 0).astype(jnp.int32)


def masked(X: Array) -> tuple[Array, Array]:
    """``(X with NaN -> 0, observed mask)`` in ``X``'s dtype: missing entries drop out of every
    sum, which marginalises them for families that are independent across columns."""
    m = ~jnp.isnan(X)
    return jnp.where(m, X, 0.0), m.astype(X.dtype)


@dataclasses.dataclass(frozen=True)
class Family:
    """Base class of a component family (subclass it; every method is pure and unjitted).

    A family supplies, for ``K`` components at once:

    * :meth:`encode` ``(X) -> data``: the data in the form the other methods use (one-hot codes,
      masks, logs), computed once per fit outside the EM loop;
    * :meth:`log_prob` ``(theta, data) -> (n_samples, K)``: ``log p_l(x_n | theta_l)``;
    * :meth:`stats` ``(theta, data, rw) -> S``: weighted sufficient statistics with
      ``rw = gamma * sample_weight`` ``(n_samples, K)`` (``theta`` is the current parameters,
      ``None`` at initialisation; families with latent variables, e.g. Student-t scales, use it);
    * :meth:`m_step` ``(S, theta, data) -> (theta, flags)``: the maximiser of
      ``Q_l = sum_n rw_nl log p_l(x_n | theta_l)`` and ``em.STATUS_*`` bits (floors);
    * :meth:`n_parameters` ``(K)``: free parameters of the ``K`` components (static);
    * :meth:`sample` ``(key, theta, z) -> (n, n_features)``: draws given component labels.

    :meth:`bind` resolves what depends on the data (number of columns, categories) at the
    public boundary and checks the data's support, so the bound family is fully static.

    Attributes:
      n_features: the number of columns this family models (``None`` until bound; inside a
        :class:`~emjax.families.Product`, ``None`` means one column).
    """

    n_features: int | None = dataclasses.field(default=None, kw_only=True)

    #: Whether NaN entries are allowed (marginalised by masking): per-column independent families.
    allows_missing = True

    # -- boundary ---------------------------------------------------------------------------
    def width(self) -> int:
        """Columns taken inside a :class:`~emjax.families.Product` (default one)."""
        return 1 if self.n_features is None else int(self.n_features)

    def check(self, X: np.ndarray) -> None:
        """Raise ``ValueError`` if ``X`` (observed entries) is outside the family's support."""

    def bind(self, X: np.ndarray) -> Family:
        """This family with the data-dependent static fields set (after :meth:`check`)."""
        self.check(X)
        if self.n_features is not None and self.n_features != X.shape[1]:
            raise ValueError(f"{type(self).__name__} was declared with n_features="
                             f"{self.n_features} but X has shape {X.shape}")
        return dataclasses.replace(self, n_features=X.shape[1])

    # -- the model --------------------------------------------------------------------------
    def encode(self, X: Array) -> Any:
        return masked(X)

    def features(self, data: Any) -> Array:
        """Numeric features ``(n_samples, f)`` used only to seed the initial partition."""
        return data[0]

    def log_prob(self, theta: Any, data: Any) -> Array:
        raise NotImplementedError

    def stats(self, theta: Any, data: Any, rw: Array) -> Any:
        raise NotImplementedError

    def m_step(self, stats: Any, theta: Any, data: Any) -> tuple[Any, Array]:
        raise NotImplementedError

    def init(self, key: Array, data: Any, rw: Array, n_components: int) -> Any:
        """Initial parameters from initial responsibilities ``rw`` (default: one M-step)."""
        del key, n_components
        return self.m_step(self.stats(None, data, rw), None, data)[0]

    def log_prior(self, theta: Any) -> Array:
        """Log-prior added to Q by the M-step (0: maximum likelihood under the floors)."""
        del theta
        return jnp.zeros(())

    def n_parameters(self, n_components: int) -> int:
        raise NotImplementedError

    def sample(self, key: Array, theta: Any, z: Array) -> Array:
        raise NotImplementedError(f"{type(self).__name__} has no sampler")

    # -- the constrained parametrisation (optax M-steps and the stationarity tests) -----------
    def to_unconstrained(self, theta: Any) -> Any:
        raise NotImplementedError

    def from_unconstrained(self, u: Any) -> Any:
        raise NotImplementedError


def expected_log_likelihood(family: Family, theta: Any, data: Any, rw: Array) -> Array:
    """The component part of Q (seed 003, eq. 1): ``sum_nl rw_nl log p_l(x_n | theta_l)``."""
    return jnp.sum(rw * family.log_prob(theta, data))


def weighted_log_prob(family: Family, params: MixtureParams, data: Any) -> Array:
    """``log alpha_l + log p_l(x_n | theta_l)``: ``(n_samples, n_components)``."""
    return family.log_prob(params.components, data) + jnp.log(params.weights)[None, :]


def _mean(values: Array, w: Array | None) -> Array:
    return jnp.mean(values) if w is None else jnp.sum(w * values) / jnp.sum(w)


def make_model(family: Family):
    """``(e_step, m_step)`` for :func:`emjax.em.run` over ``data = (encoded, sample_weight)``.

    The E-step returns ``(nk, S, theta)``: the weighted counts, the family's statistics and the
    parameters they were taken at (warm starts and latent-variable families need them), and
    the (weighted) mean log-likelihood. The M-step is ``alpha_l = N_l / N`` (seed 003) and the
    family's own, flagged through :class:`emjax.em.Flagged`.
    """

    def e_step(params: MixtureParams, data):
        X, w = data
        wlp = weighted_log_prob(family, params, X)
        # one exp per entry serves both the log-likelihood and the responsibilities
        top = jax.lax.stop_gradient(jnp.max(wlp, axis=1, keepdims=True))
        e = jnp.exp(wlp - top)
        total = jnp.sum(e, axis=1)
        ll = top[:, 0] + jnp.log(total)
        rw = e / total[:, None]
        if w is not None:
            rw = rw * w[:, None]
        stats = family.stats(params.components, X, rw)
        return (jnp.sum(rw, axis=0), stats, params.components), _mean(ll, w)

    def m_step(estats, data):
        nk, stats, theta = estats
        theta_new, flags = family.m_step(stats, theta, data[0])
        nk = nk + 10 * jnp.finfo(nk.dtype).eps
        return em.Flagged(MixtureParams(nk / jnp.sum(nk), theta_new), flags)

    return e_step, m_step


def _standardise(F: Array, w: Array | None) -> Array:
    ww = jnp.ones(F.shape[0], F.dtype) if w is None else w
    mu = (ww @ F) / jnp.sum(ww)
    var = (ww @ jnp.square(F - mu)) / jnp.sum(ww)
    return (F - mu) * jax.lax.rsqrt(var + jnp.finfo(F.dtype).tiny ** 0.5 + 1e-12)


def initial_responsibilities(key: Array, F: Array, w: Array | None, n_components: int,
                             hardness: float = 0.9) -> Array:
    """Responsibilities of a k-means++ partition of the standardised seeding features:
    ``hardness`` on the nearest seed, the rest spread evenly, so no component starts empty."""
    from emjax import kmeans

    Z = _standardise(F, w)
    centers, _ = kmeans.kmeans_plusplus(key, Z, n_components, w)
    labels = jnp.argmin(kmeans.squared_distances(Z, centers), axis=1)
    onehot = jax.nn.one_hot(labels, n_components, dtype=F.dtype)
    return hardness * onehot + (1.0 - hardness) / n_components


def init_params(family: Family, key: Array, data: Any, w: Array | None,
                n_components: int) -> MixtureParams:
    """Initial :class:`MixtureParams`: a k-means++ partition of :meth:`Family.features`, then
    the family's :meth:`Family.init` (by default one M-step) from its responsibilities."""
    k1, k2 = jax.random.split(key)
    resp = initial_responsibilities(k1, family.features(data), w, n_components)
    rw = resp if w is None else resp * w[:, None]
    theta = family.init(k2, data, rw, n_components)
    nk = jnp.sum(rw, axis=0)
    return MixtureParams(nk / jnp.sum(nk), theta)


def params_template(family: Family, n_components: int, dtype) -> MixtureParams:
    """The parameter pytree's structure and shapes for ``family`` (a bound one: its sizes known)
    and ``n_components``, as :func:`init_params` makes it (traced, never computed)."""
    x = jax.ShapeDtypeStruct((max(n_components, 2), family.width()), dtype)
    return jax.eval_shape(lambda X: init_params(family, jax.random.key(0), family.encode(X),
                                                None, n_components), x)


def n_parameters(family: Family, n_components: int) -> int:
    """Free parameters of the mixture: ``K - 1`` weights plus the family's."""
    return n_components - 1 + int(family.n_parameters(n_components))


LOG_2PI = math.log(2 * math.pi)
