"""Re-seeding empty components inside the EM loop.

A component whose responsibility mass falls below a threshold gets a worst-explained sample as
its mean, the healthy components' average covariance and a small weight (:func:`reseed`). Every
GMM fit (in-memory, fused or dense, generalised, model selection, missing data, distributed,
streaming) calls this module as its ``repair``; it depends only on the parameters and
covariance pytrees.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from emjax import _linalg, em
from emjax.gmm import GMMParams, steps
from emjax.gmm import covariance as cov_lib

Array = jax.Array

__all__ = ["dense_repair", "empty_components", "reseed", "reseed_empty", "worst_explained"]


def worst_explained(ll: Array, sample_weight: Array | None, k: int) -> Array:
    """Indices of the ``k`` samples of lowest log-likelihood (of positive weight): the
    re-seeding candidates. Ranked in float32: XLA:CPU's ``top_k`` is fast for float32 only
    (float64 falls back to a full sort)."""
    score = ll if sample_weight is None else jnp.where(sample_weight > 0, ll, jnp.inf)
    return jax.lax.top_k(-score.astype(jnp.float32), k)[1]


def empty_components(nk: Array, sample_weight: Array | None, empty_threshold: float) -> Array:
    """``(n_components,)`` bool: responsibility mass ``nk`` below ``empty_threshold`` times the
    mean positive sample weight (the components :func:`reseed_empty` re-seeds); rows of zero
    weight (padding) do not count."""
    if sample_weight is None:
        mean_w = 1.0
    else:
        mean_w = jnp.sum(sample_weight) / jnp.maximum(jnp.sum(sample_weight > 0), 1)
    return nk < empty_threshold * mean_w


def reseed_empty(params: GMMParams, log_resp: Array | None, ll: Array | None, X: Array,
                 sample_weight: Array | None, *, covariance_type: str,
                 empty_threshold: float = 1e-3, active: Array | None = None,
                 nk: Array | None = None, candidates: Array | None = None,
                 cond: bool = True, pool: Array | None = None):
    """Re-seed every (active) component whose responsibility mass is below the threshold.

    The responsibility mass is measured in units of the mean sample weight. A re-seeded
    component's mean moves to one of the worst-explained samples (a different one for each),
    its covariance to the average of the healthy components' (full: the heaviest healthy
    component's), its weight to ``1 / (2 n_active)`` before renormalising (see :func:`reseed`).

    Args:
      params: parameters after the M-step (``n_components`` possibly padded).
      log_resp: ``(n_samples, n_components)`` log-responsibilities of the E-step.
      ll: ``(n_samples,)`` per-sample log-likelihood of the E-step (None with ``candidates``).
      X: ``(n_samples, n_features)``.
      sample_weight: optional ``(n_samples,)``.
      covariance_type: static.
      empty_threshold: static.
      nk: optional ``(n_components,)`` responsibility mass ``sum_n w_n gamma_nk``; when given
        (e.g. from :class:`emjax.gmm.SuffStats`), ``log_resp`` is not used and may be None.
      active: optional ``(n_components,)`` bool mask of the components that exist (padding for
        model selection); inactive ones are never re-seeded nor averaged, and keep weight 0.
      candidates: optional ``(n_components,)`` row indices of ``X``, worst-explained first
        (:func:`worst_explained`), used instead of ranking ``ll``.
      cond: static; rank and gather the candidates under a ``lax.cond`` on an empty component
        (only when needed; a batched cond runs both branches), else at every call.
      pool: optional traced :data:`emjax.gmm.steps.POOL` code, as in :func:`reseed`.

    Returns:
      ``(params, flags)`` with ``flags = em.STATUS_RESEEDED`` if anything was re-seeded.
    """
    w = sample_weight
    if nk is None:
        nk = steps.responsibilities_mass(jnp.exp(log_resp), w)
    empty = empty_components(nk, w, empty_threshold)

    def fix(params):
        cand = worst_explained(ll, w, params.means.shape[0]) if candidates is None else candidates
        # The candidates are ranked already, worst first (no score: no second ranking).
        return reseed(params, empty, X[cand], None, covariance_type=covariance_type,
                      active=active, pool=pool)

    if not cond:
        return fix(params)
    # Ranked and gathered only when a component is empty (a batched cond runs both branches).
    live = empty if active is None else empty & active
    return jax.lax.cond(jnp.any(live), fix, lambda p: (p, jnp.int32(0)), params)


def reseed(params: GMMParams, empty: Array, X: Array, score: Array | None, *,
           covariance_type: str, active: Array | None = None, pool: Array | None = None):
    """Re-seed the ``empty`` (and ``active``) components of ``params``.

    Each one's mean moves to one of the rows of ``X`` with the lowest ``score`` (a different
    row for each; ``X`` may be any pool of at least ``n_components`` candidate rows, e.g. the
    worst-explained samples gathered from several devices or chunks), its covariance to the
    average of the healthy components' (full covariances: the heaviest healthy component's
    matrix and factor, so that nothing is factorised here), its weight to ``1 / (2 n_active)``
    before renormalising.

    Args:
      params: parameters after the M-step.
      empty: ``(n_components,)`` bool, the components to re-seed.
      X: ``(n_rows, n_features)`` candidate rows, ``n_rows >= n_components``.
      score: ``(n_rows,)`` how well each row is explained (log-likelihood; ``+inf`` excludes);
        None: the rows are ranked already, worst first.
      covariance_type: static.
      active: optional ``(n_components,)`` bool mask, as in :func:`reseed_empty`.
      pool: optional traced :data:`emjax.gmm.steps.POOL` code of a full fit run for diagonal
        or spherical covariances: the healthy components' average, as those types take it.

    Returns:
      ``(params, flags)`` with ``flags = em.STATUS_RESEEDED`` if anything was re-seeded.
    """
    k = params.means.shape[0]
    healthy = ~empty
    n_active = k
    if active is not None:
        empty = empty & active
        healthy = healthy & active
        n_active = jnp.sum(active)
    rank = jnp.clip(jnp.cumsum(empty) - 1, 0, k - 1)
    if score is not None:
        rank = worst_explained(score, None, k)[rank]  # the k worst-explained rows
    means = jnp.where(empty[:, None], X[rank], params.means)
    cov = params.covariance
    if isinstance(cov, cov_lib.FullCovariance):
        # The heaviest healthy component's matrix and its factor, copied: no factorisation here
        # (an average would need its own Cholesky, a third one in the compiled loop).
        heavy = jnp.argmax(jnp.where(healthy, params.weights, -jnp.inf))
        eb = empty[:, None, None]
        new_cov, new_pc = cov.covariances[heavy], cov.precisions_cholesky[heavy]
        if pool is not None:
            # Diagonal matrices (pooled diagonal or spherical fits): their average, as those
            # types re-seed, and its factor elementwise.
            avg = _healthy_average(cov.covariances, healthy)
            eye = jnp.eye(avg.shape[-1], dtype=avg.dtype)
            diagonal = pool >= steps.POOL["diag"]
            new_cov = jnp.where(diagonal, avg, new_cov)
            new_pc = jnp.where(diagonal, jax.lax.rsqrt(_linalg.diagonal(avg))[None, :] * eye,
                               new_pc)
        cov = cov_lib.FullCovariance(jnp.where(eb, new_cov[None], cov.covariances),
                                     jnp.where(eb, new_pc[None], cov.precisions_cholesky))
    elif not isinstance(cov, cov_lib.TiedCovariance):
        c = cov.covariances
        eb = empty.reshape((-1,) + (1,) * (c.ndim - 1))
        avg = _healthy_average(c, healthy)
        cov = cov_lib.from_covariances(covariance_type, jnp.where(eb, avg[None], c))
    weights = jnp.where(empty, 1.0 / (2 * n_active), params.weights)
    weights = weights / jnp.sum(weights)
    fixed = GMMParams(weights, means, cov)
    any_empty = jnp.any(empty)
    out = jax.tree_util.tree_map(lambda a, b: jnp.where(any_empty, a, b), fixed, params)
    return out, jnp.where(any_empty, em.STATUS_RESEEDED, 0).astype(jnp.int32)


def _healthy_average(c: Array, healthy: Array) -> Array:
    """The mean over the ``healthy`` components (bool, ``(K,)``) of ``c`` ``(K, ...)``."""
    hb = healthy.astype(c.dtype).reshape((-1,) + (1,) * (c.ndim - 1))
    return jnp.sum(hb * c, 0) / jnp.maximum(jnp.sum(hb), 1.0)


def dense_repair(covariance_type: str, empty_threshold: float = 1e-3):
    """``repair(params, estats, data)`` for dense E-step statistics ``estats[:2] = (log_resp,
    ll)`` over ``data = (X, w)``: :func:`reseed_empty` with the ranking under a ``lax.cond``."""

    def repair(params, estats, data):
        return reseed_empty(params, estats[0], estats[1], *data, covariance_type=covariance_type,
                            empty_threshold=empty_threshold)

    return repair
