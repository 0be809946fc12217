"""Covariance representations of a Gaussian mixture: full, tied, diagonal and spherical.

Each representation is a NamedTuple whose *type* is the covariance type, so ``jax.jit`` specialises
once per type and no string flows through traced code. Every function here is pure and unjitted.
"""

from __future__ import annotations

from typing import NamedTuple, Union

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

Array = jax.Array


class FullCovariance(NamedTuple):
    """One covariance matrix per component.

    Attributes:
      covariances: ``(n_components, n_features, n_features)``.
      precisions_cholesky: ``(n_components, n_features, n_features)``, upper triangular ``U_k``
        with ``inv(covariances[k]) = U_k @ U_k.T`` (scikit-learn's ``precisions_cholesky_``).
    """

    covariances: Array
    precisions_cholesky: Array


class TiedCovariance(NamedTuple):
    """One covariance matrix shared by all components: ``(n_features, n_features)`` each."""

    covariances: Array
    precisions_cholesky: Array


class DiagCovariance(NamedTuple):
    """A diagonal covariance per component: variances ``(n_components, n_features)``;
    ``precisions_cholesky = 1 / sqrt(covariances)``."""

    covariances: Array
    precisions_cholesky: Array


class SphericalCovariance(NamedTuple):
    """A single variance per component: ``(n_components,)``;
    ``precisions_cholesky = 1 / sqrt(covariances)``."""

    covariances: Array
    precisions_cholesky: Array


Covariance = Union[FullCovariance, TiedCovariance, DiagCovariance, SphericalCovariance]

COVARIANCE_CLASSES = {
    "full": FullCovariance,
    "tied": TiedCovariance,
    "diag": DiagCovariance,
    "spherical": SphericalCovariance,
}
COVARIANCE_TYPES = tuple(COVARIANCE_CLASSES)
_NAMES = {cls: name for name, cls in COVARIANCE_CLASSES.items()}


def covariance_type_of(cov: Covariance) -> str:
    """The scikit-learn name (``"full"``, ``"tied"``, ``"diag"``, ``"spherical"``) of ``cov``."""
    return _NAMES[type(cov)]


def covariance_shape(covariance_type: str, n_components: int, n_features: int) -> tuple:
    """scikit-learn's shape of ``covariances_`` for a covariance type."""
    return {
        "full": (n_components, n_features, n_features),
        "tied": (n_features, n_features),
        "diag": (n_components, n_features),
        "spherical": (n_components,),
    }[covariance_type]


def _symmetrise(a: Array) -> Array:
    return 0.5 * (a + jnp.swapaxes(a, -1, -2))


def _precision_cholesky_of_matrix(cov: Array) -> Array:
    """Upper-triangular ``U`` with ``inv(cov) = U U^T`` for a batch of SPD matrices.

    A matrix whose Cholesky factorisation fails in finite precision (e.g. float32 at extreme
    scales) is retried once with a jitter of ``1e-6 * mean(diag)`` (plus ``tiny``); this keeps
    every factor finite inside compiled code, where nothing can raise.
    """
    d = cov.shape[-1]
    eye = jnp.eye(d, dtype=cov.dtype)
    chol = jnp.linalg.cholesky(cov)
    bad = ~jnp.all(jnp.isfinite(chol), axis=(-1, -2), keepdims=True)
    scale = jnp.mean(jnp.diagonal(cov, axis1=-2, axis2=-1), axis=-1)[..., None, None]
    # The retry depends on the first factorisation (through ``bad``), so the two never run at
    # the same time (see emjax._linalg).
    jitter = jnp.where(bad, 1e-6 * jnp.abs(scale) + jnp.finfo(cov.dtype).tiny ** 0.5, 0.0)
    chol = jnp.where(bad, jnp.linalg.cholesky(cov + jitter * eye), chol)
    eye_b = jnp.broadcast_to(eye, cov.shape)
    return jnp.swapaxes(solve_triangular(chol, eye_b, lower=True), -1, -2)


def from_covariances(covariance_type: str, covariances: Array) -> Covariance:
    """Build a covariance pytree (with its precision Cholesky factors) from covariances."""
    covariances = jnp.asarray(covariances)
    cls = COVARIANCE_CLASSES[covariance_type]
    if covariance_type in ("full", "tied"):
        covariances = _symmetrise(covariances)
        return cls(covariances, _precision_cholesky_of_matrix(covariances))
    return cls(covariances, jax.lax.rsqrt(covariances))


def from_precisions_cholesky(covariance_type: str, precisions_cholesky: Array) -> Covariance:
    """Build a covariance pytree from scikit-learn-style precision Cholesky factors."""
    pc = jnp.asarray(precisions_cholesky)
    cls = COVARIANCE_CLASSES[covariance_type]
    if covariance_type in ("full", "tied"):
        # cov = inv(U U^T) = inv(U)^T inv(U)
        eye = jnp.broadcast_to(jnp.eye(pc.shape[-1], dtype=pc.dtype), pc.shape)
        u_inv = solve_triangular(pc, eye, lower=False)
        return cls(jnp.swapaxes(u_inv, -1, -2) @ u_inv, pc)
    return cls(1.0 / (pc * pc), pc)


def log_det_precision_cholesky(cov: Covariance, n_features: int) -> Array:
    """``log|U_k|``, i.e. ``-0.5 log|Sigma_k|``: shape ``(n_components,)`` or ``()`` for tied."""
    pc = cov.precisions_cholesky
    if isinstance(cov, (FullCovariance, TiedCovariance)):
        return jnp.sum(jnp.log(jnp.diagonal(pc, axis1=-2, axis2=-1)), axis=-1)
    if isinstance(cov, DiagCovariance):
        return jnp.sum(jnp.log(pc), axis=-1)
    return n_features * jnp.log(pc)


def mahalanobis_squared(cov: Covariance, X: Array, means: Array) -> Array:
    """Squared Mahalanobis distances ``(n_samples, n_components)``, each through one GEMM.

    Full: whitened data ``X U_k - mu_k U_k`` for all components in one product. Tied, diagonal and
    spherical: the expansion ``|x|^2 - 2 x mu^T + |mu|^2`` in the whitened (or precision-weighted)
    metric. Callers centre ``X`` and ``means`` near the data so the expansion keeps its digits.
    """
    pc = cov.precisions_cholesky
    if isinstance(cov, FullCovariance):
        y = jnp.einsum("nd,kde->nke", X, pc) - jnp.einsum("kd,kde->ke", means, pc)[None]
        return jnp.sum(y * y, axis=-1)
    if isinstance(cov, TiedCovariance):
        y = X @ pc
        m = means @ pc
        d2 = jnp.sum(y * y, 1)[:, None] - 2.0 * y @ m.T + jnp.sum(m * m, 1)[None, :]
        return jnp.maximum(d2, 0.0)
    if isinstance(cov, DiagCovariance):
        prec = pc * pc
        d2 = (X * X) @ prec.T - 2.0 * X @ (means * prec).T + jnp.sum(means * means * prec, 1)[None]
        return jnp.maximum(d2, 0.0)
    prec = pc * pc
    d2 = jnp.sum(X * X, 1)[:, None] - 2.0 * X @ means.T + jnp.sum(means * means, 1)[None, :]
    return jnp.maximum(d2, 0.0) * prec[None, :]


def n_covariance_parameters(covariance_type: str, n_components: int, n_features: int) -> int:
    """Free parameters of the covariances (scikit-learn's count)."""
    d, k = n_features, n_components
    return {
        "full": k * d * (d + 1) // 2,
        "tied": d * (d + 1) // 2,
        "diag": k * d,
        "spherical": k,
    }[covariance_type]


def as_full(cov: Covariance, n_components: int, n_features: int) -> Array:
    """Dense ``(n_components, n_features, n_features)`` covariances of any representation."""
    c = cov.covariances
    if isinstance(cov, FullCovariance):
        return c
    if isinstance(cov, TiedCovariance):
        return jnp.broadcast_to(c, (n_components,) + c.shape)
    if isinstance(cov, DiagCovariance):
        return jax.vmap(jnp.diag)(c)
    return c[:, None, None] * jnp.eye(n_features, dtype=c.dtype)


def mean_covariance(cov: Covariance) -> Covariance:
    """Every component's covariance replaced by the average over components (tied: unchanged)."""
    if isinstance(cov, TiedCovariance):
        return cov
    c = cov.covariances
    avg = jnp.broadcast_to(jnp.mean(c, axis=0, keepdims=True), c.shape)
    return from_covariances(covariance_type_of(cov), avg)
