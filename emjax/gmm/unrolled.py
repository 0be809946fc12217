"""Small problems with the feature loops unrolled: the E-step with the next M-step's statistics,
the k-means initialisation and the Cholesky factors as elementwise operations on
``(n_components, n_samples)`` arrays, one per feature (no GEMM, no LAPACK call).

Chosen by :func:`emjax.gmm.plan.make_plan` (``PassPlan.unrolled``) for few features and few
samples: there a fit is dominated by the per-operation cost of tiny GEMMs, reductions over a
minor axis of length ``K`` and LAPACK calls, the more so for a batch of fits under ``jax.vmap``
(each becomes a batched call over ``(batch, K, D, D)``); elementwise operations on
``(K, N)`` arrays vectorise along the samples instead. The data enter transposed,
``(n_features, n_samples)``, built once per fit. Program size grows with ``D^2`` (``D^3`` for
the factorisations) and ``K``, not with ``N``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from emjax import kmeans
from emjax.gmm import covariance as cov_lib
from emjax.gmm.steps import GMMParams, SuffStats

Array = jax.Array


# ------------------------------------------------------------------ statistics

def _weighted(g: Array, sample_weight: Array | None) -> Array:
    return g if sample_weight is None else g * sample_weight[None, :]


def _moments(g: Array, diffs: list, covariance_type: str, ref: Array) -> SuffStats:
    """:class:`SuffStats` about ``ref`` from the (weighted) responsibilities ``g`` ``(K, N)``
    and the differences ``diffs[d] = x_d - ref[:, d]`` (``(K, N)`` each)."""
    d = len(diffs)
    nk = jnp.sum(g, axis=1)
    gd = [g * diffs[i] for i in range(d)]
    sx = jnp.stack([jnp.sum(v, axis=1) for v in gd], -1)
    if covariance_type in ("full", "tied"):
        s = [[None] * d for _ in range(d)]
        for i in range(d):
            for j in range(i, d):
                s[i][j] = s[j][i] = jnp.sum(gd[i] * diffs[j], axis=1)
        sxx = jnp.stack([jnp.stack(row, -1) for row in s], -2)
    else:
        sxx = jnp.stack([jnp.sum(gd[i] * diffs[i], axis=1) for i in range(d)], -1)
    return SuffStats(nk, sx, sxx, ref)


def _diffs(xt: Array, ref: Array) -> list:
    """``x_d - ref[:, d]`` for every feature ``d``: ``(K, N)`` each."""
    return [xt[i][None, :] - ref[:, i][:, None] for i in range(xt.shape[0])]


def stats(g: Array, xt: Array, sample_weight: Array | None, *,
          covariance_type: str) -> SuffStats:
    """The M-step statistics of the responsibilities ``g`` ``(K, N)`` on ``xt`` ``(D, N)``:
    moments about the new means themselves (two passes), as :func:`emjax.gmm.m_step_stats`."""
    gw = _weighted(g, sample_weight)
    nk = jnp.sum(gw, axis=1) + 10 * jnp.finfo(xt.dtype).eps
    means = jnp.stack([jnp.sum(gw * xt[i][None, :], axis=1) for i in range(xt.shape[0])],
                      -1) / nk[:, None]
    return _moments(gw, _diffs(xt, means), covariance_type, means)


def _rows_max(a: Array) -> Array:
    """``max(a, axis=0)`` of a ``(K, N)`` array as ``K - 1`` elementwise maxima (a reduction
    over the short leading axis is the slower operation on XLA:CPU)."""
    m = a[0]
    for k in range(1, a.shape[0]):
        m = jnp.maximum(m, a[k])
    return m


def _rows_sum(a: Array) -> Array:
    """``sum(a, axis=0)`` of a ``(K, N)`` array as ``K - 1`` elementwise additions."""
    s = a[0]
    for k in range(1, a.shape[0]):
        s = s + a[k]
    return s


def _rows_argmin(a: Array) -> Array:
    """``argmin(a, axis=0)`` of a ``(K, N)`` array (the first on ties), elementwise."""
    best, idx = a[0], jnp.zeros(a.shape[1:], jnp.int32)
    for k in range(1, a.shape[0]):
        better = a[k] < best
        best = jnp.where(better, a[k], best)
        idx = jnp.where(better, k, idx)
    return idx


def _logsumexp_resp(lp: Array) -> tuple[Array, Array]:
    """``(logsumexp(lp, 0), softmax(lp, 0))`` of ``(K, N)`` log-joints with one ``exp``."""
    m = _rows_max(lp)
    m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
    e = jnp.exp(lp - m[None, :])
    s = _rows_sum(e)
    return m + jnp.log(s), e / s[None, :]


def _maha(cov, diffs: list) -> Array:
    """Squared Mahalanobis distances ``(K, N)`` from the differences to the means."""
    pc = cov.precisions_cholesky
    d = len(diffs)
    if isinstance(cov, (cov_lib.FullCovariance, cov_lib.TiedCovariance)):
        tied = isinstance(cov, cov_lib.TiedCovariance)
        out = 0.0
        for e in range(d):  # y_e = sum_{i <= e} (x - mu)_i U_ie: U is upper triangular
            u = [pc[i, e] if tied else pc[:, i, e][:, None] for i in range(e + 1)]
            y = sum(diffs[i] * u[i] for i in range(e + 1))
            out = out + y * y
        return out
    if isinstance(cov, cov_lib.DiagCovariance):
        prec = pc * pc
        return sum(diffs[i] * diffs[i] * prec[:, i][:, None] for i in range(d))
    return sum(diffs[i] * diffs[i] for i in range(d)) * (pc * pc)[:, None]


def e_step_stats(params: GMMParams, xt: Array, sample_weight: Array | None):
    """The E-step on ``xt`` ``(D, N)``: the next M-step's :class:`SuffStats` (moments about
    the current means) and the per-sample log-likelihood ``(N,)``, in one pass."""
    d = xt.shape[0]
    means = params.means
    diffs = _diffs(xt, means)
    log_det = cov_lib.log_det_precision_cholesky(params.covariance, d)
    const = -0.5 * d * math.log(2 * math.pi) + log_det + jnp.log(params.weights)
    lp = const[:, None] - 0.5 * _maha(params.covariance, diffs)
    ll, g = _logsumexp_resp(lp)
    return _moments(_weighted(g, sample_weight), diffs, params.covariance_type, means), ll


def lowest(score: Array, k: int) -> Array:
    """Indices of the ``k`` lowest entries of ``score`` ``(N,)``, lowest first (the first on
    ties), by ``k`` argmin passes: ``jax.lax.top_k(-score, k)[1]`` without a sort."""
    def body(j, carry):
        idx, s = carry
        i = jnp.argmin(s).astype(jnp.int32)
        return kmeans.set_row(idx, j, i), jnp.where(jnp.arange(s.shape[0]) == i, jnp.inf, s)

    return jax.lax.fori_loop(0, k, body, (jnp.zeros((k,), jnp.int32), score))[0]


def worst_explained(ll: Array, sample_weight: Array | None, k: int) -> Array:
    """:func:`emjax.gmm.reseed.worst_explained` by :func:`lowest` (``k`` passes over the
    samples rather than a ``top_k``, which costs more for a batch of small fits)."""
    return lowest(ll if sample_weight is None else jnp.where(sample_weight > 0, ll, jnp.inf), k)


# ------------------------------------------------------------------ initialisation

def _sq_dist(xt: Array, centers: Array) -> Array:
    """Squared distances ``(n_centers, N)`` of the samples to the centres (differences, not
    the GEMM expansion)."""
    return sum(v * v for v in _diffs(xt, centers))


def _kmeans_plusplus(key: Array, X: Array, xt: Array, k: int,
                     sample_weight: Array | None, n_active: Array | None = None) -> Array:
    """:func:`emjax.kmeans.kmeans_plusplus` (the same draws) in the ``(centres, N)`` layout."""
    n = xt.shape[1]
    w = sample_weight
    uniforms, trial_live, n_seeded = kmeans.local_trials(key, k, 2 + int(math.log(k)), n_active,
                                                         X.dtype)
    u0 = uniforms(0)
    if w is None:
        first = jnp.minimum((u0[0] * n).astype(jnp.int32), n - 1)
    else:
        first = kmeans._draw(u0[:1], w)[0]
    centers = kmeans.set_row(jnp.zeros((k, X.shape[1]), X.dtype), 0, X[first])
    closest = _sq_dist(xt, X[first][None])[0]

    def body(c, carry):
        centers, closest = carry
        pot = closest if w is None else w * closest
        fallback = jnp.ones_like(closest) if w is None else w
        cand = kmeans._draw(uniforms(c), jnp.where(jnp.sum(pot) > 0, pot, fallback))
        x_cand = X[cand]
        nc = jnp.minimum(closest[None, :], _sq_dist(xt, x_cand))  # (trials, N)
        best = jnp.argmin(trial_live(jnp.sum(nc if w is None else w[None, :] * nc, axis=1)))
        return kmeans.set_row(centers, c, x_cand[best]), nc[best]

    return jax.lax.fori_loop(1, n_seeded, body, (centers, closest))[0]


def _labels(xt: Array, centers: Array, active: Array | None = None) -> Array:
    d2 = _sq_dist(xt, centers)
    return _rows_argmin(d2 if active is None else jnp.where(active[:, None], d2, jnp.inf))


def _one_hot(labels: Array, k: int, dtype) -> Array:
    """``(K, N)`` hard assignments."""
    return (labels[None, :] == jnp.arange(k)[:, None]).astype(dtype)


def _lloyd(xt: Array, centers: Array, n_iter: int, sample_weight: Array | None,
           active: Array | None = None) -> Array:
    """:func:`emjax.kmeans.lloyd` in the ``(centres, N)`` layout."""
    k = centers.shape[0]

    def step(_, c):
        onehot = _weighted(_one_hot(_labels(xt, c, active), k, xt.dtype), sample_weight)
        counts = jnp.sum(onehot, axis=1)
        sums = jnp.stack([jnp.sum(onehot * xt[i][None, :], axis=1)
                          for i in range(xt.shape[0])], -1)
        return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1e-30)[:, None], c)

    return jax.lax.fori_loop(0, n_iter, step, centers)


def init_centers(key: Array, X: Array, xt: Array, n_components: int, *, init_params: str,
                 sample_weight: Array | None, n_lloyd: int,
                 n_active: Array | None = None) -> Array:
    """The centres ``(K, D)`` of the hard initialisations of
    :func:`emjax.gmm.fitting.responsibilities_init` (``"kmeans"``, ``"k-means++"``,
    ``"random_from_data"``: the same draws) on ``X`` ``(N, D)`` and its transpose ``xt``;
    ``n_active`` as there."""
    k = n_components
    if init_params == "random_from_data":
        return X[kmeans.sample_rows(key, X.shape[0], k, sample_weight, X.dtype)]
    centers = _kmeans_plusplus(key, X, xt, k, sample_weight, n_active)
    if init_params == "kmeans":
        centers = _lloyd(xt, centers, n_lloyd, sample_weight,
                         kmeans.active_centers(k, n_active))
    return centers


def init_stats(key: Array, X: Array, xt: Array, n_components: int, *, covariance_type: str,
               init_params: str, sample_weight: Array | None, n_lloyd: int,
               n_active: Array | None = None, centers: Array | None = None) -> SuffStats:
    """The statistics of the hard assignment to :func:`init_centers` (or to the given
    ``centers``), whose M-step gives the initial parameters."""
    k = n_components
    if centers is None:
        centers = init_centers(key, X, xt, k, init_params=init_params,
                               sample_weight=sample_weight, n_lloyd=n_lloyd, n_active=n_active)
    g = _one_hot(_labels(xt, centers, kmeans.active_centers(k, n_active)), k, X.dtype)
    return stats(g, xt, sample_weight, covariance_type=covariance_type)
