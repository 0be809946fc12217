"""Gaussian mixture model: parameters, the pure E- and M-steps, and model utilities.

Nothing here is jitted, so the steps compose with ``jit``, ``vmap`` and ``grad``; the driver in
:mod:`emjax.em` and the fitting API in :mod:`emjax.mixture` compile them.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from emjax import covariance as cov_lib
from emjax.covariance import Covariance

Array = jax.Array


class GMMParams(NamedTuple):
    """Parameters of a Gaussian mixture (a pytree).

    Attributes:
      weights: ``(n_components,)`` mixing proportions, summing to one.
      means: ``(n_components, n_features)``.
      covariance: one of :class:`~emjax.covariance.FullCovariance`, ``TiedCovariance``,
        ``DiagCovariance``, ``SphericalCovariance``; its type is the covariance type.
    """

    weights: Array
    means: Array
    covariance: Covariance

    @property
    def covariance_type(self) -> str:
        return cov_lib.covariance_type_of(self.covariance)

    @property
    def n_components(self) -> int:
        return self.means.shape[-2]

    @property
    def n_features(self) -> int:
        return self.means.shape[-1]


def make_params(weights, means, covariances, covariance_type: str) -> GMMParams:
    """Build :class:`GMMParams` from scikit-learn-shaped weights, means and covariances."""
    return GMMParams(
        jnp.asarray(weights),
        jnp.asarray(means),
        cov_lib.from_covariances(covariance_type, covariances),
    )


def _shift(params: GMMParams) -> Array:
    # A point near the data (weighted mean of the means): subtracting it from X and the means
    # before the distance expansion keeps float32 digits when the data sits at a large offset.
    return jax.lax.stop_gradient(params.weights @ params.means)


def component_log_prob(params: GMMParams, X: Array) -> Array:
    """``log N(x_n | mu_k, Sigma_k)``, shape ``(n_samples, n_components)``.

    .. math:: \\log N = -\\tfrac{D}{2}\\log 2\\pi + \\log|U_k| - \\tfrac12 \\|U_k^T(x-\\mu_k)\\|^2
    """
    c = _shift(params)
    d = X.shape[-1]
    maha = cov_lib.mahalanobis_squared(params.covariance, X - c, params.means - c)
    log_det = cov_lib.log_det_precision_cholesky(params.covariance, d)
    return -0.5 * (d * math.log(2 * math.pi) + maha) + log_det


def weighted_log_prob(params: GMMParams, X: Array) -> Array:
    """``log pi_k + log N(x_n | mu_k, Sigma_k)``, shape ``(n_samples, n_components)``."""
    return component_log_prob(params, X) + jnp.log(params.weights)[None, :]


def _mean(values: Array, sample_weight: Array | None) -> Array:
    if sample_weight is None:
        return jnp.mean(values)
    return jnp.sum(sample_weight * values) / jnp.sum(sample_weight)


def e_step_full(params: GMMParams, X: Array) -> tuple[Array, Array]:
    """Log-responsibilities ``(n_samples, n_components)`` and per-sample log-likelihood."""
    wlp = weighted_log_prob(params, X)
    ll = logsumexp(wlp, axis=1)
    return wlp - ll[:, None], ll


def e_step(
    params: GMMParams, X: Array, sample_weight: Array | None = None
) -> tuple[Array, Array]:
    """E-step: responsibilities and the mean log-likelihood of ``X`` under ``params``.

    .. math:: \\gamma_{nk} = \\exp\\big(\\log\\pi_k + \\log N(x_n|\\mu_k,\\Sigma_k)
              - \\operatorname{logsumexp}_j(\\log\\pi_j + \\log N(x_n|\\mu_j,\\Sigma_j))\\big)

    Args:
      params: the mixture.
      X: ``(n_samples, n_features)``.
      sample_weight: optional ``(n_samples,)`` non-negative weights; the log-likelihood is then
        their weighted mean.

    Returns:
      ``(gamma, log_likelihood)``: ``gamma`` is ``(n_samples, n_components)`` with rows summing to
      one; ``log_likelihood`` is the (weighted) mean of ``log p(x_n)``.
    """
    log_resp, ll = e_step_full(params, X)
    return jnp.exp(log_resp), _mean(ll, sample_weight)


class SuffStats(NamedTuple):
    """Sufficient statistics of the M-step, additive over samples (chunks, devices, passes).

    Moments are taken about a per-component reference point ``ref`` (e.g. the previous means), so
    ``Sigma = sxx / nk - d d^T`` with ``d = sx / nk`` small and no catastrophic cancellation.

    Attributes:
      nk: ``(n_components,)`` ``sum_n w_n gamma_nk``.
      sx: ``(n_components, n_features)`` ``sum_n w_n gamma_nk (x_n - ref_k)``.
      sxx: ``sum_n w_n gamma_nk (x_n - ref_k)(x_n - ref_k)^T`` reduced to what the covariance
        type needs: full ``(K, D, D)``; tied ``(K, D, D)``; diag and spherical ``(K, D)`` (the
        diagonal).
      ref: ``(n_components, n_features)`` the reference points (not summed).
    """

    nk: Array
    sx: Array
    sxx: Array
    ref: Array


def _suff_stats_dense(gamma, X, ref, covariance_type, sample_weight):
    if sample_weight is not None:
        gamma = gamma * sample_weight[:, None]
    nk = jnp.sum(gamma, axis=0)
    sx = gamma.T @ X - nk[:, None] * ref
    if covariance_type in ("full", "tied"):

        def scatter(g, r):
            diff = X - r
            return (g[:, None] * diff).T @ diff

        sxx = jax.vmap(scatter, in_axes=(1, 0))(gamma, ref)
    else:
        sxx = jnp.einsum("nk,knd->kd", gamma, jax.vmap(lambda r: jnp.square(X - r))(ref))
    return nk, sx, sxx


def suff_stats(
    gamma: Array,
    X: Array,
    ref: Array,
    *,
    covariance_type: str = "full",
    sample_weight: Array | None = None,
    chunk_size: int | None = None,
) -> SuffStats:
    """Sufficient statistics of ``(gamma, X)`` about ``ref`` (see :class:`SuffStats`).

    The per-component differences ``x_n - ref_k`` are formed ``chunk_size`` rows at a time
    (static; default: chunks of about 2^20 elements of ``(K, chunk, D)``) and the statistics summed
    over chunks, so memory stays O(chunk K D) whatever ``n_samples``.
    """
    n, d = X.shape
    k = ref.shape[0]
    if chunk_size is None:
        chunk_size = max(256, 2**20 // max(1, k * d))
    chunk = int(min(chunk_size, n))
    n_full, rem = divmod(n, chunk)

    def part(start, size):
        sl = lambda a: None if a is None else jax.lax.dynamic_slice_in_dim(a, start, size)
        return _suff_stats_dense(sl(gamma), sl(X), ref, covariance_type, sl(sample_weight))

    if n_full <= 1 and rem == 0:
        acc = part(0, n)
    else:
        acc = jax.tree_util.tree_map(jnp.zeros_like, jax.eval_shape(lambda: part(0, chunk)))
        acc = jax.lax.fori_loop(
            0, n_full, lambda i, a: jax.tree_util.tree_map(jnp.add, a, part(i * chunk, chunk)),
            acc)
        if rem:
            acc = jax.tree_util.tree_map(jnp.add, acc, part(n_full * chunk, rem))
    return SuffStats(*acc, ref)


def params_from_stats(stats: SuffStats, *, covariance_type: str = "full",
                      reg_covar: float = 1e-6) -> GMMParams:
    r"""The closed-form M-step from sufficient statistics.

    .. math::
       N_k = n_k + 10\epsilon,\ \pi_k = N_k/\sum_j N_j,\ d_k = s_{x,k}/N_k,\
       \mu_k = r_k + d_k,\ \Sigma_k = S_{xx,k}/N_k - d_k d_k^T + r I
    """
    dtype = stats.sx.dtype
    nk = stats.nk + 10 * jnp.finfo(dtype).eps
    delta = stats.sx / nk[:, None]
    means = stats.ref + delta
    d = stats.sx.shape[-1]
    if covariance_type in ("full", "tied"):
        eye = jnp.eye(d, dtype=dtype)
        scatter = stats.sxx - nk[:, None, None] * delta[:, :, None] * delta[:, None, :]
        if covariance_type == "full":
            covs = scatter / nk[:, None, None] + reg_covar * eye
        else:
            covs = jnp.sum(scatter, 0) / jnp.sum(nk) + reg_covar * eye
    else:
        var = stats.sxx / nk[:, None] - delta * delta + reg_covar
        covs = var if covariance_type == "diag" else jnp.mean(var, axis=1)
    return GMMParams(nk / jnp.sum(nk), means, cov_lib.from_covariances(covariance_type, covs))


def m_step(
    gamma: Array,
    X: Array,
    *,
    covariance_type: str = "full",
    reg_covar: float = 1e-6,
    sample_weight: Array | None = None,
) -> GMMParams:
    r"""M-step: the closed-form maximiser of Q given responsibilities.

    .. math::
       N_k = \sum_n w_n\gamma_{nk} + 10\epsilon,\quad \pi_k = N_k / \sum_j N_j,\quad
       \mu_k = \frac{1}{N_k}\sum_n w_n\gamma_{nk} x_n,\quad
       \Sigma_k = \frac{1}{N_k}\sum_n w_n\gamma_{nk}(x_n-\mu_k)(x_n-\mu_k)^T + r I

    The scatter is taken about the new means themselves (two passes over ``X``), so it is exact.

    Args:
      gamma: ``(n_samples, n_components)`` responsibilities.
      X: ``(n_samples, n_features)``.
      covariance_type: static; ``"full"``, ``"tied"``, ``"diag"`` or ``"spherical"``.
      reg_covar: static; added to the covariance diagonal.
      sample_weight: optional ``(n_samples,)`` weights multiplying the responsibilities.
    """
    g = gamma if sample_weight is None else gamma * sample_weight[:, None]
    nk = jnp.sum(g, axis=0) + 10 * jnp.finfo(X.dtype).eps
    ref = (g.T @ X) / nk[:, None]
    stats = suff_stats(gamma, X, ref, covariance_type=covariance_type,
                       sample_weight=sample_weight)
    return params_from_stats(stats, covariance_type=covariance_type, reg_covar=reg_covar)


def score_samples(params: GMMParams, X: Array) -> Array:
    """``log p(x_n)`` for each sample, shape ``(n_samples,)``."""
    return logsumexp(weighted_log_prob(params, X), axis=1)


log_prob = score_samples


def predict_proba(params: GMMParams, X: Array) -> Array:
    """Posterior component probabilities ``(n_samples, n_components)``."""
    return jnp.exp(e_step_full(params, X)[0])


def predict(params: GMMParams, X: Array) -> Array:
    """Most probable component of each sample, shape ``(n_samples,)``."""
    return jnp.argmax(weighted_log_prob(params, X), axis=1)


def sample(key: Array, params: GMMParams, n_samples: int) -> tuple[Array, Array]:
    """Draw ``n_samples`` points: returns ``(X, labels)``.

    Args:
      key: a PRNG key.
      params: the mixture.
      n_samples: static number of samples.
    """
    k_label, k_noise = jax.random.split(key)
    k, d = params.means.shape
    dtype = params.means.dtype
    labels = jax.random.categorical(k_label, jnp.log(params.weights), shape=(n_samples,))
    z = jax.random.normal(k_noise, (n_samples, d), dtype=dtype)
    cov = params.covariance
    if isinstance(cov, (cov_lib.FullCovariance, cov_lib.TiedCovariance)):
        chol = jnp.linalg.cholesky(cov_lib.as_full(cov, k, d))  # (K, D, D)
        noise = jnp.einsum("nde,ne->nd", chol[labels], z)
    elif isinstance(cov, cov_lib.DiagCovariance):
        noise = z * jnp.sqrt(cov.covariances)[labels]
    else:
        noise = z * jnp.sqrt(cov.covariances)[labels][:, None]
    return params.means[labels] + noise, labels


def n_parameters(covariance_type: str, n_components: int, n_features: int) -> int:
    """Number of free parameters (scikit-learn's ``_n_parameters``)."""
    return (
        cov_lib.n_covariance_parameters(covariance_type, n_components, n_features)
        + n_components * n_features
        + n_components
        - 1
    )


def bic(params: GMMParams, X: Array) -> Array:
    """Bayesian information criterion (lower is better): ``-2 log L + p log n``."""
    n = X.shape[0]
    p = n_parameters(params.covariance_type, params.n_components, params.n_features)
    return -2.0 * jnp.sum(score_samples(params, X)) + p * math.log(n)


def aic(params: GMMParams, X: Array) -> Array:
    """Akaike information criterion (lower is better): ``-2 log L + 2 p``."""
    p = n_parameters(params.covariance_type, params.n_components, params.n_features)
    return -2.0 * jnp.sum(score_samples(params, X)) + 2 * p


def responsibilities_mass(gamma: Array, sample_weight: Array | None = None) -> Array:
    """``N_k = sum_n w_n gamma_nk``, shape ``(n_components,)``."""
    if sample_weight is not None:
        gamma = gamma * sample_weight[:, None]
    return jnp.sum(gamma, axis=0)


# ----------------------------------------------------------------------------------------------
# The fast path: one pass over the data in chunks, E-step and the next M-step's statistics fused.
#
# Every covariance type is written as "features of x" @ "a (n_features', K) matrix of the
# parameters" (one GEMM per chunk gives all log-densities), and the statistics as
# "responsibilities^T @ the same features" (one GEMM per chunk gives all moments). For full
# covariances the features are the packed upper-triangular outer products x_i x_j (i <= j) and x
# itself: ``(chunk, D(D+1)/2 + D)``. The (N, K, D) intermediate never exists; memory is
# O(chunk * (K + D^2)) on top of the data. Samples are centred at the weighted mean of the means
# inside each chunk, so float32 keeps its digits.

DEFAULT_CHUNK_BYTES = 4 * 2**20


def default_chunk_size(n_features: int, covariance_type: str = "full", itemsize: int = 4) -> int:
    """Rows per chunk: the chunk's feature matrix takes about ``DEFAULT_CHUNK_BYTES`` (4 MiB,
    about the size of this CPU's L2), clipped to ``[256, 16384]`` and rounded to a power of 2."""
    cols = _n_feature_columns(covariance_type, n_features)
    rows = DEFAULT_CHUNK_BYTES // (itemsize * cols)
    return int(2 ** int(math.log2(max(256, min(16384, rows)))))


def _n_feature_columns(covariance_type: str, d: int) -> int:
    if covariance_type == "full":
        return d * (d + 1) // 2 + d
    if covariance_type == "tied":
        return 2 * d
    return 2 * d


def _triu(d: int):
    import numpy as np

    return np.triu_indices(d)


def _unpack_sym(packed: Array, d: int) -> Array:
    """``(..., D(D+1)/2)`` upper-triangular entries -> symmetric ``(..., D, D)``."""
    iu, ju = _triu(d)
    out = jnp.zeros(packed.shape[:-1] + (d, d), packed.dtype)
    out = out.at[..., iu, ju].set(packed)
    return out.at[..., ju, iu].set(packed)


def _linear_form(params: GMMParams, c: Array):
    """``(W, b)`` with ``log pi_k + log N(x | mu_k, Sigma_k) = features(x - c) @ W + b``."""
    cov = params.covariance
    means = params.means - c
    k, d = means.shape
    dtype = means.dtype
    log_det = cov_lib.log_det_precision_cholesky(cov, d)
    const = -0.5 * d * math.log(2 * math.pi) + log_det + jnp.log(params.weights)
    pc = cov.precisions_cholesky
    if isinstance(cov, cov_lib.FullCovariance):
        prec = pc @ jnp.swapaxes(pc, -1, -2)  # (K, D, D) = U U^T
        iu, ju = _triu(d)
        scale = jnp.where(jnp.asarray(iu == ju), 1.0, 2.0).astype(dtype)
        quad = -0.5 * prec[:, iu, ju] * scale  # (K, T)
        pm = jnp.einsum("kde,ke->kd", prec, means)  # P_k mu_k
        W = jnp.concatenate([quad, pm], axis=1).T  # (T + D, K)
        b = const - 0.5 * jnp.sum(pm * means, axis=1)
        return W, b
    if isinstance(cov, cov_lib.TiedCovariance):
        m = means @ pc  # whitened means (K, D)
        return m.T, const - 0.5 * jnp.sum(m * m, axis=1)  # features: y = (x - c) U
    if isinstance(cov, cov_lib.DiagCovariance):
        prec = pc * pc
        W = jnp.concatenate([-0.5 * prec, means * prec], axis=1).T  # (2D, K)
        return W, const - 0.5 * jnp.sum(means * means * prec, axis=1)
    prec = pc * pc  # spherical (K,)
    W = jnp.concatenate([-0.5 * jnp.broadcast_to(prec[:, None], (k, d)), means * prec[:, None]],
                        axis=1).T
    return W, const - 0.5 * prec * jnp.sum(means * means, axis=1)


def _features(x: Array, cov: Covariance) -> Array:
    """The per-sample features of the E-step GEMM (see :func:`_linear_form`)."""
    d = x.shape[-1]
    if isinstance(cov, cov_lib.FullCovariance):
        iu, ju = _triu(d)
        return jnp.concatenate([x[:, iu] * x[:, ju], x], axis=1)
    if isinstance(cov, cov_lib.TiedCovariance):
        y = x @ cov.precisions_cholesky
        return jnp.concatenate([y, -0.5 * jnp.sum(y * y, axis=1, keepdims=True)], axis=1)
    return jnp.concatenate([x * x, x], axis=1)


def _chunk_pass(params: GMMParams, X: Array, sample_weight: Array | None, chunk_size: int,
                with_stats: bool, center: Array | None = None):
    """Per-sample log-likelihood ``(N,)`` and, if ``with_stats``, the statistics about the centre
    ``c`` as ``(nk (K,), moments (K, cols))`` (plus the pooled scatter for tied)."""
    n, d = X.shape
    cov = params.covariance
    k = params.means.shape[0]
    dtype = X.dtype
    c = (_shift(params) if center is None else jax.lax.stop_gradient(center)).astype(dtype)
    W, b = _linear_form(params, c)
    W, b = W.astype(dtype), b.astype(dtype)
    tied = isinstance(cov, cov_lib.TiedCovariance)
    if tied:
        # log-density = y @ m^T - 0.5 |y|^2 + b: append a column of ones to W's rows for |y|^2.
        W = jnp.concatenate([W, jnp.ones((1, k), dtype)], axis=0)

    def one(x, w):
        x = x - c
        f = _features(x, cov)
        lp = f @ W + b
        ll = logsumexp(lp, axis=1)
        if not with_stats:
            return ll, None
        g = jnp.exp(lp - ll[:, None])
        if w is not None:
            g = g * w[:, None]
        nk = jnp.sum(g, axis=0)
        if tied:
            # Pooled scatter (one D x D GEMM) instead of K per-component ones.
            xw = x if w is None else x * w[:, None]
            return ll, (nk, g.T @ x, xw.T @ x)
        return ll, (nk, g.T @ f)  # full: [x_i x_j, x]; diag/spherical: [x^2, x]

    chunk = int(min(chunk_size, n))
    n_full, rem = divmod(n, chunk)
    w_all = sample_weight

    def slice_w(start, size):
        if w_all is None:
            return None
        return jax.lax.dynamic_slice_in_dim(w_all, start, size)

    ll_out = jnp.zeros((n,), dtype)
    if with_stats:
        _, acc0 = jax.eval_shape(lambda: one(X[:1], None if w_all is None else w_all[:1]))
        acc0 = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), acc0)
    else:
        acc0 = None

    def body(i, carry):
        ll_buf, acc = carry
        start = i * chunk
        x = jax.lax.dynamic_slice_in_dim(X, start, chunk)
        ll, st = one(x, slice_w(start, chunk))
        ll_buf = jax.lax.dynamic_update_slice_in_dim(ll_buf, ll, start, 0)
        if st is not None:
            acc = jax.tree_util.tree_map(jnp.add, acc, st)
        return ll_buf, acc

    carry = (ll_out, acc0)
    if n_full == 1:
        carry = body(0, carry)
    elif n_full > 1:
        carry = jax.lax.fori_loop(0, n_full, body, carry)
    if rem:
        start = n_full * chunk
        ll, st = one(X[start:], None if w_all is None else w_all[start:])
        ll_buf, acc = carry
        ll_buf = jax.lax.dynamic_update_slice_in_dim(ll_buf, ll, start, 0)
        if st is not None:
            acc = jax.tree_util.tree_map(jnp.add, acc, st)
        carry = (ll_buf, acc)
    return carry[0], carry[1], c


def e_step_stats(
    params: GMMParams,
    X: Array,
    sample_weight: Array | None = None,
    *,
    chunk_size: int | None = None,
    center: Array | None = None,
) -> tuple[SuffStats, Array]:
    """E-step fused with the next M-step's sufficient statistics, in one chunked pass over ``X``.

    Equivalent to ``gamma = e_step(params, X)[0]`` followed by
    ``suff_stats(gamma, X, ref, covariance_type=..., sample_weight=...)`` with ``ref`` the
    weighted mean of the means (broadcast to ``(K, D)``), but without ever forming
    ``(n_samples, n_components)`` responsibilities or ``(K, N, D)`` differences: each chunk of
    ``chunk_size`` rows is turned into features (full: the packed outer products ``x_i x_j``,
    ``i <= j``, and ``x``), one GEMM with the parameters gives every log-density, and one GEMM of
    the responsibilities with the same features gives every moment; the moments are summed over
    chunks. ``params_from_stats(stats, ...)`` then completes the M-step. The precision Cholesky
    factors are used as stored (no factorisation in the E-step).

    For ``"tied"`` covariances ``stats.sxx[0]`` holds the pooled scatter
    ``sum_n w_n (x_n - ref)(x_n - ref)^T`` and the other entries are zero: only the sum over
    components is meaningful (it is all :func:`params_from_stats` needs).

    Args:
      params: the mixture.
      X: ``(n_samples, n_features)``.
      sample_weight: optional ``(n_samples,)`` non-negative weights.
      chunk_size: static rows per chunk (default :func:`default_chunk_size`); any value works,
        a remainder chunk handles ``n_samples % chunk_size``.
      center: optional ``(n_features,)`` point subtracted from every chunk (and the reference
        point of the statistics); default the weighted mean of the means. A fixed centre (e.g.
        the data's mean) makes the pass the same function of ``params`` at every iteration.

    Returns:
      ``(stats, log_likelihood)``: :class:`SuffStats` (moments about ``ref``) and the per-sample
      ``log p(x_n)`` of shape ``(n_samples,)``.
    """
    ctype = cov_lib.covariance_type_of(params.covariance)
    n, d = X.shape
    k = params.means.shape[0]
    if chunk_size is None:
        chunk_size = default_chunk_size(d, ctype, X.dtype.itemsize)
    ll, acc, c = _chunk_pass(params, X, sample_weight, chunk_size, True, center)
    ref = jnp.broadcast_to(c, (k, d))
    nk = acc[0]
    if ctype == "full":
        t = d * (d + 1) // 2
        mom = acc[1]
        sxx = _unpack_sym(mom[:, :t], d)
        sx = mom[:, t:]
    elif ctype == "tied":
        sx = acc[1]
        sxx = jnp.zeros((k, d, d), X.dtype).at[0].set(acc[2])
    else:
        sxx, sx = acc[1][:, :d], acc[1][:, d:]
    return SuffStats(nk, sx, sxx, ref), ll


def score_samples_chunked(params: GMMParams, X: Array, *,
                          chunk_size: int | None = None) -> Array:
    """:func:`score_samples` by the chunked GEMM path: ``log p(x_n)``, shape ``(n_samples,)``."""
    ctype = cov_lib.covariance_type_of(params.covariance)
    if chunk_size is None:
        chunk_size = default_chunk_size(X.shape[1], ctype, X.dtype.itemsize)
    return _chunk_pass(params, X, None, chunk_size, False)[0]


def em_step_fast(
    params: GMMParams,
    X: Array,
    sample_weight: Array | None = None,
    *,
    reg_covar: float = 1e-6,
    chunk_size: int | None = None,
) -> tuple[GMMParams, Array]:
    """One EM iteration by the fused chunked path: ``(new_params, log_likelihood (N,))``, where
    the log-likelihood is that of ``params`` (the E-step's)."""
    stats, ll = e_step_stats(params, X, sample_weight, chunk_size=chunk_size)
    ctype = cov_lib.covariance_type_of(params.covariance)
    return params_from_stats(stats, covariance_type=ctype, reg_covar=reg_covar), ll
