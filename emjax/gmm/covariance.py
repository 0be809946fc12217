"""Covariance representations of a Gaussian mixture: full, tied, diagonal and spherical.

Each representation is a NamedTuple whose *type* is the covariance type, so ``jax.jit`` specialises
once per type and no string flows through traced code. Every function here is pure and unjitted.
"""

from __future__ import annotations

from typing import NamedTuple, Union

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from emjax._linalg import diagonal, unrolled_cholesky, unrolled_lower_inverse
from emjax.gmm import plan as plan_lib

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


def relative_jitter(dtype, n_features: int) -> float:
    """The diagonal jitter, relative to the mean variance, with which a covariance that is not
    positive definite in ``dtype`` is factorised: ``max(1e-6, 10 n_features eps)``, above the
    rounding error of a Cholesky factorisation (about ``n_features eps`` relative): 1e-6 in
    float64, 1.2e-5 at 10 features and 7.6e-5 at 64 in float32."""
    return max(1e-6, 10.0 * n_features * float(jnp.finfo(dtype).eps))


def _precision_cholesky_of_matrix(cov: Array, blocked_inverse: bool | None = None,
                                  lapack: bool = True,
                                  unrolled: bool = False) -> tuple[Array, Array]:
    """Upper-triangular ``U`` with ``inv(cov) = U U^T`` for a batch of SPD matrices, and the
    jitter ``(..., 1, 1)`` that was added to the diagonal (0 where none was).

    A matrix whose Cholesky factorisation fails in finite precision (not positive definite in
    the working precision: e.g. a float32 covariance of fewer samples than features, from
    moments about a distant centre) is retried once with a jitter of
    :func:`relative_jitter` ``* mean(diag)`` (plus ``sqrt(tiny)``); this keeps every factor
    finite inside compiled code, where nothing can raise. A matrix further from definite than
    that keeps a non-finite factor (the EM driver then reports a non-finite step).

    ``blocked_inverse``: invert the factor by :func:`lower_triangular_inverse` (batched matrix
    products) rather than a triangular solve; default the backend's tuning
    (:func:`emjax.gmm.plan.blocked_inverse_default`). ``lapack=False``: factorise and invert
    by :func:`loop_cholesky` instead (``blocked_inverse`` is then not used). ``unrolled``:
    by :func:`unrolled_cholesky` and :func:`unrolled_lower_inverse` (few features; neither
    ``lapack`` nor ``blocked_inverse`` is then used).
    """
    d = cov.shape[-1]
    eye = jnp.eye(d, dtype=cov.dtype)
    scale = jnp.mean(diagonal(cov), axis=-1)[..., None, None]
    rel = relative_jitter(cov.dtype, d)
    retry = rel * jnp.abs(scale) + jnp.finfo(cov.dtype).tiny ** 0.5
    if unrolled:
        chol = unrolled_cholesky(cov)
        bad = ~jnp.all(jnp.isfinite(chol), axis=(-1, -2), keepdims=True)
        jitter = jnp.where(bad, retry, 0.0)
        chol = jnp.where(bad, unrolled_cholesky(cov + jitter * eye), chol)
        return jnp.swapaxes(unrolled_lower_inverse(chol), -1, -2), jitter
    if not lapack:
        # Both factorisations in one loop over a stacked batch: one small loop in the program.
        chol, inv = loop_cholesky(jnp.stack([cov, cov + retry * eye]))
        bad = ~jnp.all(jnp.isfinite(chol[0]), axis=(-1, -2), keepdims=True)
        return jnp.swapaxes(jnp.where(bad, inv[1], inv[0]), -1, -2), jnp.where(bad, retry, 0.0)
    if blocked_inverse is None:
        blocked_inverse = plan_lib.blocked_inverse_default(d)
    chol = jnp.linalg.cholesky(cov)
    bad = ~jnp.all(jnp.isfinite(chol), axis=(-1, -2), keepdims=True)
    # The retry depends on the first factorisation (through ``bad``), so the two never run at
    # the same time (see emjax._linalg).
    jitter = jnp.where(bad, retry, 0.0)
    chol = jnp.where(bad, jnp.linalg.cholesky(cov + jitter * eye), chol)
    if blocked_inverse:
        return jnp.swapaxes(lower_triangular_inverse(chol), -1, -2), jitter
    eye_b = jnp.broadcast_to(eye, cov.shape)
    return jnp.swapaxes(solve_triangular(chol, eye_b, lower=True), -1, -2), jitter


def loop_cholesky(a: Array) -> tuple[Array, Array]:
    """Lower Cholesky factors ``L`` of a batch ``(..., d, d)`` of SPD matrices and their inverses,
    one column of ``L`` and one row of ``inv(L)`` per step of a ``lax.fori_loop`` (batched
    matrix-vector products): no LAPACK call. Column ``j`` is ``v / sqrt(v_j)`` below the
    diagonal, ``v = a[:, j] - L L[j, :]^T``; row ``j`` of the inverse is
    ``(e_j - L[j, :j] inv(L)[:j]) / L_jj``. A matrix that is not positive definite gets a
    non-finite factor, as from :func:`jax.numpy.linalg.cholesky`.
    """
    d = a.shape[-1]
    idx = jnp.arange(d)

    def step(j, carry):
        L, inv = carry
        lj = jax.lax.dynamic_index_in_dim(L, j, axis=-2, keepdims=False)  # L[j, :j], zeros after
        aj = jax.lax.dynamic_index_in_dim(a, j, axis=-2, keepdims=False)  # a symmetric
        v = aj - jnp.einsum("...ik,...k->...i", L, lj)
        root = jnp.sqrt(jax.lax.dynamic_index_in_dim(v, j, axis=-1, keepdims=True))
        L = jax.lax.dynamic_update_index_in_dim(L, jnp.where(idx >= j, v / root, 0.0)[..., None],
                                                j, axis=-1)
        row = ((idx == j).astype(a.dtype) - jnp.einsum("...k,...kc->...c", lj, inv)) / root
        return L, jax.lax.dynamic_update_index_in_dim(inv, row[..., None, :], j, axis=-2)

    zeros = jnp.zeros_like(a)
    return jax.lax.fori_loop(0, d, step, (zeros, zeros))

def lower_triangular_inverse(L: Array) -> Array:
    """``inv(L)`` of a batch of lower-triangular matrices ``(..., d, d)`` by 2 x 2 block
    inversion, ``inv([[A, 0], [B, C]]) = [[inv(A), 0], [-inv(C) B inv(A), inv(C)]]``, one
    level at a time: all diagonal blocks of one size are inverted by the same batched matrix
    products, ``log2 d`` levels, no LAPACK call (``L`` is padded with an identity block to a
    power-of-2 size). Level by level rather than a recursion that inverts each block by its own
    products: the EM driver compiles faster with the same run time (docs/performance.md)."""
    d = L.shape[-1]
    batch = L.shape[:-2]
    p = 1 << max(0, (d - 1).bit_length())
    if p != d:
        pad = jnp.pad(L, [(0, 0)] * len(batch) + [(0, p - d), (0, p - d)])
        L = pad + jnp.diag(jnp.arange(p) >= d).astype(L.dtype)
    hi = jax.lax.Precision.HIGHEST
    inv = (1.0 / diagonal(L))[..., None, None]  # p blocks of 1 x 1
    s = 1
    while s < p:
        nb = p // (2 * s)
        # the nb diagonal blocks of size 2s, (..., nb, 2s, 2s), and their lower-left quarters:
        # blocks (i, i) of the (nb, nb) grid of blocks, a strided slice
        grid = jnp.moveaxis(L.reshape(batch + (nb, 2 * s, nb, 2 * s)), -2, -3)
        blocks = grid.reshape(batch + (nb * nb, 2 * s, 2 * s))[..., :: nb + 1, :, :]
        b = blocks[..., s:, :s]
        ai, ci = inv[..., 0::2, :, :], inv[..., 1::2, :, :]
        bi = -jnp.matmul(ci, jnp.matmul(b, ai, precision=hi), precision=hi)
        top = jnp.concatenate([ai, jnp.zeros_like(ai)], -1)
        inv = jnp.concatenate([top, jnp.concatenate([bi, ci], -1)], -2)
        s *= 2
    return inv[..., 0, :d, :d]


def from_covariances_checked(covariance_type: str, covariances: Array, *,
                             blocked_inverse: bool | None = None, lapack: bool = True,
                             unrolled: bool = False) -> tuple[Covariance, Array]:
    """:func:`from_covariances`, and whether any matrix had to be regularised (a bool scalar).

    A full or tied matrix that is not positive definite in the working precision is factorised
    with a jitter on its diagonal (see :func:`_precision_cholesky_of_matrix`); the returned
    ``covariances`` then hold that regularised matrix, the inverse of ``U U^T`` to rounding,
    rather than an indefinite matrix beside a finite factor. Diagonal and spherical
    variances are used as given (a non-positive variance gives a non-finite factor, which the
    EM driver reports as a non-finite step). ``blocked_inverse``, ``lapack``, ``unrolled``: as in
    :func:`_precision_cholesky_of_matrix`.
    """
    covariances = jnp.asarray(covariances)
    cls = COVARIANCE_CLASSES[covariance_type]
    if covariance_type in ("full", "tied"):
        covariances = _symmetrise(covariances)
        pc, jitter = _precision_cholesky_of_matrix(covariances, blocked_inverse, lapack,
                                                   unrolled)
        eye = jnp.eye(covariances.shape[-1], dtype=covariances.dtype)
        return cls(covariances + jitter * eye, pc), jnp.any(jitter > 0)
    return cls(covariances, jax.lax.rsqrt(covariances)), jnp.array(False)


def from_covariances(covariance_type: str, covariances: Array) -> Covariance:
    """Build a covariance pytree (with its precision Cholesky factors) from covariances."""
    return from_covariances_checked(covariance_type, covariances)[0]


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
        return jnp.sum(jnp.log(diagonal(pc)), axis=-1)
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

