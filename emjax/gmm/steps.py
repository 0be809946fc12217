"""Gaussian mixture model: parameters, the pure E- and M-steps, and model utilities.

Nothing here is jitted, so the steps compose with ``jit``, ``vmap`` and ``grad``; the driver in
:mod:`emjax.em` and the fitting API in :mod:`emjax.gmm.fitting` compile them. The fast chunked
E-step is in :mod:`emjax.gmm.kernels`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from emjax import _sizes
from emjax import _validation as v
from emjax._chunks import fold_chunks, rows
from emjax._linalg import diagonal
from emjax.gmm import covariance as cov_lib
from emjax.gmm.covariance import Covariance

Array = jax.Array


class GMMParams(NamedTuple):
    """Parameters of a Gaussian mixture (a pytree).

    Attributes:
      weights: ``(n_components,)`` mixing proportions, summing to one.
      means: ``(n_components, n_features)``.
      covariance: one of :class:`~emjax.gmm.covariance.FullCovariance`, ``TiedCovariance``,
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


def uncentre(result, shift: Array):
    """``result`` (any result with ``params``) of a fit on data centred at ``shift``, with its
    means moved back to the data's own coordinates (the covariances do not change)."""
    return result._replace(params=result.params._replace(means=result.params.means + shift))


def make_params(weights, means, covariances, covariance_type: str) -> GMMParams:
    """Build :class:`GMMParams` from scikit-learn-shaped weights, means and covariances.

    On concrete values they are checked (outside ``jit``; a ``ValueError`` quoting the
    shapes): ``means`` ``(n_components, n_features)`` finite, ``weights`` ``(n_components,)``
    in ``[0, 1]`` summing to 1, ``covariances`` of the covariance type's shape (as
    scikit-learn's ``covariances_``), symmetric positive definite (variances positive).
    """
    if not v.is_traced(weights, means, covariances):
        covariance_type = v.check_covariance_type(covariance_type)
        m = np.asarray(means)
        if m.ndim != 2:
            raise ValueError(f"means must be (n_components, n_features); got shape {m.shape}")
        k, d = m.shape
        dtype = m.dtype if m.dtype in (np.float32, np.float64) else np.float64
        v.check_means(m, k, d, dtype, name="means")
        v.check_weights(weights, k, dtype, name="weights")
        v.check_spd(covariances, covariance_type, k, d, dtype, name="covariances")
    return GMMParams(
        jnp.asarray(weights),
        jnp.asarray(means),
        cov_lib.from_covariances(covariance_type, covariances),
    )


def _shift(params: GMMParams) -> Array:
    # A point near the data (weighted mean of the means): subtracting it from X and the means
    # before the distance expansion keeps float32 digits when the data sits at a large offset.
    return jax.lax.stop_gradient(params.weights @ params.means)


def over_active(fn, n_active: Array, k: int, shape: tuple, dtype) -> Array:
    """``fn(j)`` stacked for ``j < n_active`` into ``(k, *shape)``, zeros after: per-component
    work that costs nothing for padded components (a loop with a traced trip count)."""
    def body(j, acc):
        return jax.lax.dynamic_update_index_in_dim(acc, fn(j).astype(dtype), j, 0)
    return jax.lax.fori_loop(0, n_active, body, jnp.zeros((k,) + tuple(shape), dtype))


def component_log_prob(params: GMMParams, X: Array, n_features: Array | None = None,
                       n_active: Array | None = None, pool: Array | None = None) -> Array:
    """``log N(x_n | mu_k, Sigma_k)``, shape ``(n_samples, n_components)``.

    .. math:: \\log N = -\\tfrac{D}{2}\\log 2\\pi + \\log|U_k| - \\tfrac12 \\|U_k^T(x-\\mu_k)\\|^2

    ``n_features``: optional traced int, the ``D`` of the constant: the features after the
    first ``n_features`` are zero padding with identity covariance blocks (which add nothing
    else; see :func:`params_from_stats_checked`). ``n_active``: optional traced int, full
    covariances: only the first ``n_active`` components are computed, one GEMM each in a loop
    (the others are padding of weight 0, their distances 0; not reverse-differentiable).
    ``pool``: optional traced :data:`POOL` code, full covariances pooled by the M-step
    (:func:`params_from_stats_checked`): the distances of a tied (diagonal, spherical) pool are
    computed as that type's own, one whitening (the diagonals) instead of ``K`` full ones.
    """
    c = _shift(params)
    d = X.shape[-1]
    cov, xc, mc = params.covariance, X - c, params.means - c

    def full_maha():
        if n_active is None:
            return cov_lib.mahalanobis_squared(cov, xc, mc)
        pc = cov.precisions_cholesky

        def one(j):
            u = jax.lax.dynamic_index_in_dim(pc, j, keepdims=False)
            y = xc @ u - jax.lax.dynamic_index_in_dim(mc, j, keepdims=False) @ u
            return jnp.sum(y * y, axis=-1)

        return over_active(one, n_active, pc.shape[0], X.shape[:1], X.dtype).T

    if not isinstance(cov, cov_lib.FullCovariance):
        maha = cov_lib.mahalanobis_squared(cov, xc, mc)
    elif pool is None:
        maha = full_maha()
    else:
        # Component 0 is always active, so its factor is the tied one.
        def tied_maha():
            return cov_lib.mahalanobis_squared(
                cov_lib.TiedCovariance(cov.covariances[0], cov.precisions_cholesky[0]), xc, mc)

        def diag_maha():
            return cov_lib.mahalanobis_squared(
                cov_lib.DiagCovariance(diagonal(cov.covariances),
                                       diagonal(cov.precisions_cholesky)), xc, mc)

        maha = jax.lax.switch(_pool_branch(pool), (full_maha, tied_maha, diag_maha))
    log_det = cov_lib.log_det_precision_cholesky(params.covariance, d)
    const = d * math.log(2 * math.pi)
    if n_features is not None:
        # Each count's constant rounded as the unpadded program rounds its own.
        const = jnp.asarray(np.arange(d + 1) * math.log(2 * math.pi), X.dtype)[n_features]
    return -0.5 * (const + maha) + log_det


def weighted_log_prob(params: GMMParams, X: Array, n_features: Array | None = None,
                      n_active: Array | None = None, pool: Array | None = None) -> Array:
    """``log pi_k + log N(x_n | mu_k, Sigma_k)``, shape ``(n_samples, n_components)``."""
    return (component_log_prob(params, X, n_features, n_active, pool)
            + jnp.log(params.weights)[None, :])


def _mean(values: Array, sample_weight: Array | None) -> Array:
    if sample_weight is None:
        return jnp.mean(values)
    return jnp.sum(sample_weight * values) / jnp.sum(sample_weight)


def e_step_full(params: GMMParams, X: Array, n_features: Array | None = None,
                n_active: Array | None = None, pool: Array | None = None) -> tuple[Array, Array]:
    """Log-responsibilities ``(n_samples, n_components)`` and per-sample log-likelihood
    (``n_features``, ``n_active``, ``pool``: see :func:`component_log_prob`)."""
    wlp = weighted_log_prob(params, X, n_features, n_active, pool)
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

    Raises:
      ValueError: called outside ``jit``, on mis-shaped or non-finite ``X`` or weights, a
        ``params`` whose shapes disagree, or a float64 model with JAX's x64 mode off (see
        :func:`emjax._validation.check_model_data`). Inside ``jit``/``vmap``/``grad`` nothing is
        checked.
    """
    X = v.check_model_data(params, X)
    if v.is_traced(params, X, sample_weight):
        log_resp, ll = e_step_full(params, X)
        return jnp.exp(log_resp), _mean(ll, sample_weight)
    if sample_weight is not None:
        sample_weight = v.check_sample_weight(sample_weight, X.shape[0], np.float64)
    # on concrete data: one program per size class of the rows (_per_row), the rest on the host
    log_resp, ll = (np.asarray(a) for a in _per_row(_e_rows, params, X))
    w = np.ones(ll.shape, np.float64) if sample_weight is None else np.asarray(sample_weight)
    mean = np.sum(w * ll, dtype=np.float64) / np.sum(w, dtype=np.float64)
    return jax.device_put(np.exp(log_resp)), jax.device_put(np.asarray(mean, ll.dtype))


class SuffStats(NamedTuple):
    """Sufficient statistics of the M-step, additive over samples (chunks, devices, passes).

    Moments are taken about a per-component reference point ``ref`` (e.g. the previous means), so
    ``Sigma = sxx / nk - d d^T`` with ``d = sx / nk`` small and no catastrophic cancellation.

    Attributes:
      nk: ``(n_components,)`` ``sum_n w_n gamma_nk``.
      sx: ``(n_components, n_features)`` ``sum_n w_n gamma_nk (x_n - ref_k)``.
      sxx: ``sum_n w_n gamma_nk (x_n - ref_k)(x_n - ref_k)^T`` reduced to what the covariance
        type needs: full ``(K, D, D)``; tied ``(K, D, D)`` of which only the sum over components
        is defined (the dense steps put it in the first); diag and spherical ``(K, D)`` (the
        diagonal).
      ref: ``(n_components, n_features)`` the reference points (not summed).
    """

    nk: Array
    sx: Array
    sxx: Array
    ref: Array


def _suff_stats_dense(gamma, X, ref, covariance_type, sample_weight, n_active=None, pool=None):
    if sample_weight is not None:
        gamma = gamma * sample_weight[:, None]
    nk = jnp.sum(gamma, axis=0)
    sx = gamma.T @ X - nk[:, None] * ref

    def diagonal_moments():
        return jnp.einsum("nk,knd->kd", gamma, jax.vmap(lambda r: jnp.square(X - r))(ref))

    if covariance_type not in ("full", "tied"):
        return nk, sx, diagonal_moments()
    k, d = ref.shape

    def pooled_scatter():
        # Tied covariances read only the sum over components (params_from_stats_checked): one
        # GEMM about a point c near the data (exact for any c: sum_k S_k = A - B - B^T + C).
        total = jnp.sum(nk)
        c = (nk @ ref) / jnp.where(total > 0, total, 1.0)
        xc, rc = X - c, ref - c
        b = gamma.T @ xc
        s = ((jnp.sum(gamma, axis=1)[:, None] * xc).T @ xc - b.T @ rc - rc.T @ b
             + (nk[:, None] * rc).T @ rc)
        return jnp.zeros((k, d, d), X.dtype).at[0].set(s)

    if covariance_type == "tied":
        return nk, sx, pooled_scatter()

    def scatters():
        def scatter(g, r):
            diff = X - r
            return (g[:, None] * diff).T @ diff

        if n_active is None:
            return jax.vmap(scatter, in_axes=(1, 0))(gamma, ref)
        d = X.shape[1]
        return over_active(lambda j: scatter(jax.lax.dynamic_index_in_dim(gamma, j, 1, False),
                                             jax.lax.dynamic_index_in_dim(ref, j, 0, False)),
                           n_active, ref.shape[0], (d, d), X.dtype)

    if pool is None:
        return nk, sx, scatters()

    def diagonal_only():
        # A diagonal (spherical) pool reads only the diagonals of the moments.
        return diagonal_moments()[:, :, None] * jnp.eye(d, dtype=X.dtype)

    sxx = jax.lax.switch(_pool_branch(pool), (scatters, pooled_scatter, diagonal_only))
    return nk, sx, sxx


def suff_stats(
    gamma: Array,
    X: Array,
    ref: Array,
    *,
    covariance_type: str = "full",
    sample_weight: Array | None = None,
    chunk_size: int | None = None,
    n_active: Array | None = None,
    pool: Array | None = None,
) -> SuffStats:
    """Sufficient statistics of ``(gamma, X)`` about ``ref`` (see :class:`SuffStats`).

    The per-component differences ``x_n - ref_k`` are formed ``chunk_size`` rows at a time
    (static; default: chunks of about 2^20 elements of ``(K, chunk, D)``) and the statistics summed
    over chunks, so memory stays O(chunk K D) whatever ``n_samples``. ``n_active``: optional
    traced int, full and tied: the scatter of only the first ``n_active`` components, one GEMM
    each in a loop (the others' is 0). ``pool``: optional traced :data:`POOL` code, full
    covariances: a diagonal or spherical pool computes only the moments' diagonals (the rest 0).
    """
    n, d = X.shape
    k = ref.shape[0]
    if chunk_size is None:
        chunk_size = max(256, 2**20 // max(1, k * d))

    def part(acc, start, size):
        st = _suff_stats_dense(rows(gamma, start, size), rows(X, start, size), ref,
                               covariance_type, rows(sample_weight, start, size), n_active, pool)
        return jax.tree_util.tree_map(jnp.add, acc, st)

    shapes = jax.eval_shape(lambda: _suff_stats_dense(gamma, X, ref, covariance_type,
                                                      sample_weight))
    acc = fold_chunks(part, jax.tree_util.tree_map(jnp.zeros_like, shapes), n, chunk_size)
    return SuffStats(*acc, ref)


#: The codes of the traced ``pool`` argument (:func:`params_from_stats_checked`): the covariance
#: type asked for, whose values a full (diagonal) fit's M-step computes.
POOL = {"full": 0, "tied": 1, "diag": 2, "spherical": 3}


def _pool_branch(pool: Array) -> Array:
    """The ``lax.switch`` index of a traced :data:`POOL` code: 0 full, 1 tied, 2 diagonal or
    spherical (the branches of the steps that pool)."""
    return jnp.minimum(pool, POOL["diag"]).astype(jnp.int32)


def _spherical_if_pooled(var: Array, pool: Array, real: Array | None = None,
                         n_features: Array | None = None) -> Array:
    """Variances ``(K, D)``, each component's replaced by their mean when ``pool`` is the
    spherical code (``real``: the features that count, ``n_features`` of them)."""
    mean = (jnp.mean(var, axis=1) if real is None
            else jnp.sum(jnp.where(real, var, 0.0), axis=1) / n_features)
    return jnp.where(pool == POOL["spherical"], jnp.broadcast_to(mean[:, None], var.shape), var)


def params_from_stats(stats: SuffStats, *, covariance_type: str = "full",
                      reg_covar: float = 1e-6) -> GMMParams:
    r"""The closed-form M-step from sufficient statistics.

    .. math::
       N_k = n_k + 10\epsilon,\ \pi_k = N_k/\sum_j N_j,\ d_k = s_{x,k}/N_k,\
       \mu_k = r_k + d_k,\ \Sigma_k = S_{xx,k}/N_k - d_k d_k^T + r I
    """
    return params_from_stats_checked(stats, covariance_type=covariance_type,
                                     reg_covar=reg_covar)[0]


def params_from_stats_checked(stats: SuffStats, *, covariance_type: str = "full",
                              reg_covar: float = 1e-6,
                              blocked_inverse: bool | None = None,
                              lapack: bool = True,
                              unrolled: bool = False,
                              pool: Array | None = None,
                              n_features: Array | None = None,
                              pool_branches: bool = False) -> tuple[GMMParams, Array]:
    """:func:`params_from_stats`, and whether a covariance was not positive definite in the
    working precision and got a jitter on its diagonal (a bool scalar; see
    :func:`emjax.gmm.covariance.from_covariances_checked`, which also takes
    ``blocked_inverse``, ``lapack`` and ``unrolled``).

    ``pool``: optional traced int32 :data:`POOL` code of the covariance type asked for, full
    and diagonal covariances only: the M-step gives every component the tied covariance
    (``POOL["tied"]``, full), each component its diagonal (``"diag"``, full) or its spherical
    variance in each feature (``"spherical"``, full or diagonal), the same values as that
    type's own M-step, so one compiled fit serves several types (see
    :func:`emjax.gmm.plan.pooled_type`). ``pool_branches`` (static): the pooled types factorise
    as their own M-steps do (one matrix, or the variances), a ``lax.switch`` branch each; else
    every component's matrix is factorised (a smaller program).

    ``n_features``: optional traced int, full covariances only: the features after the first
    ``n_features`` are padding (zero columns): their block is the identity, so they add
    nothing to any log-density but the constant ``-log(2 pi) / 2`` each, and a spherical
    variance is the mean over the others."""
    dtype = stats.sx.dtype
    nk = stats.nk + 10 * jnp.finfo(dtype).eps
    delta = stats.sx / nk[:, None]
    means = stats.ref + delta
    d = stats.sx.shape[-1]
    kw = dict(blocked_inverse=blocked_inverse, lapack=lapack, unrolled=unrolled)
    if covariance_type in ("full", "tied"):
        eye = jnp.eye(d, dtype=dtype)
        scatter = stats.sxx - nk[:, None, None] * delta[:, :, None] * delta[:, None, :]
        if covariance_type == "full":
            real = None if n_features is None else jnp.arange(d) < n_features

            def real_block(m):  # the padded features' block is the identity
                return m if real is None else jnp.where(real[:, None] & real[None, :], m, eye)

            def factor(covs):
                return cov_lib.from_covariances_checked("full", real_block(covs), **kw)

            def own():
                return factor(scatter / nk[:, None, None] + reg_covar * eye)

            def pooled_tied():
                return jnp.sum(scatter, 0) / jnp.sum(nk) + reg_covar * eye

            def pooled_variances():
                # The diagonal M-step's own expression, from the diagonal of the moments.
                var = diagonal(stats.sxx) / nk[:, None] - delta * delta + reg_covar
                return _spherical_if_pooled(var, pool, real, n_features)

            if pool is None:
                cov, regularised = own()
            elif not pool_branches:
                covs = scatter / nk[:, None, None] + reg_covar * eye
                covs = jnp.where(pool == POOL["tied"],
                                 jnp.broadcast_to(pooled_tied(), covs.shape),
                                 jnp.where(pool >= POOL["diag"],
                                           pooled_variances()[:, :, None] * eye, covs))
                cov, regularised = factor(covs)
            else:
                # Each pooled type factorises as its own M-step does (one matrix, or the
                # variances); every component then takes the result in the full form.
                def tied():
                    c, flag = cov_lib.from_covariances_checked("tied", real_block(pooled_tied()),
                                                               **kw)
                    return cov_lib.FullCovariance(*(jnp.broadcast_to(a, scatter.shape)
                                                    for a in c)), flag

                def diag():
                    var = pooled_variances()
                    if real is not None:
                        var = jnp.where(real, var, 1.0)
                    c, flag = cov_lib.from_covariances_checked("diag", var)
                    return cov_lib.FullCovariance(*(a[:, :, None] * eye for a in c)), flag

                cov, regularised = jax.lax.switch(_pool_branch(pool), (own, tied, diag))
            return GMMParams(nk / jnp.sum(nk), means, cov), regularised
        covs = jnp.sum(scatter, 0) / jnp.sum(nk) + reg_covar * eye
    else:
        var = stats.sxx / nk[:, None] - delta * delta + reg_covar
        covs = var if covariance_type == "diag" else jnp.mean(var, axis=1)
        if covariance_type == "diag" and pool is not None:
            covs = _spherical_if_pooled(var, pool)
    cov, regularised = cov_lib.from_covariances_checked(covariance_type, covs, **kw)
    return GMMParams(nk / jnp.sum(nk), means, cov), regularised


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

    Outside ``jit`` the inputs are checked (``ValueError`` quoting shapes) and the step runs
    compiled on rows padded to their size class with weight 0 (as :func:`score_samples`), so
    a new number of rows rarely compiles; inside ``jit``/``vmap``/``grad`` it is traced as is.
    """
    if v.is_traced(gamma, X, sample_weight):
        return _m_step(gamma, X, covariance_type=covariance_type, reg_covar=reg_covar,
                       sample_weight=sample_weight)
    covariance_type = v.check_covariance_type(covariance_type)
    reg_covar = v.check_non_negative(reg_covar, "reg_covar")
    X = v.as_data(X, dtype=v.jax_float(X))
    v.check_x64(X.dtype)
    n = X.shape[0]
    g = np.asarray(gamma, X.dtype)
    if g.ndim != 2 or g.shape[0] != n or g.shape[1] < 1:
        raise ValueError(f"gamma must have shape (n_samples={n}, n_components) to match X of "
                         f"shape {X.shape}; got shape {g.shape}")
    w = v.check_sample_weight(sample_weight, n, X.dtype)
    n_rows = _sizes.padded_rows(n, X.dtype.itemsize * (X.shape[1] + g.shape[1]))
    if n_rows is not None and n_rows > n:
        # zero-weight rows (copies of the first) change no statistic
        X, w = _sizes.pad_rows(X, w, n_rows)
        g = np.concatenate([g, np.zeros((n_rows - n, g.shape[1]), g.dtype)])
    return _m_step_compiled(g, X, covariance_type=covariance_type, reg_covar=reg_covar,
                            sample_weight=w)


def _m_step(gamma, X, *, covariance_type, reg_covar, sample_weight):
    stats = m_step_stats(gamma, X, covariance_type=covariance_type, sample_weight=sample_weight)
    return params_from_stats(stats, covariance_type=covariance_type, reg_covar=reg_covar)


_m_step_compiled = jax.jit(_m_step, static_argnames=("covariance_type", "reg_covar"))


def m_step_stats(gamma: Array, X: Array, *, covariance_type: str = "full",
                 sample_weight: Array | None = None,
                 n_active: Array | None = None, pool: Array | None = None) -> SuffStats:
    """The statistics :func:`m_step` completes: moments about the new means themselves (a first
    pass over ``X`` for the means, a second for the scatter about them; ``n_active``, ``pool``:
    see :func:`suff_stats`)."""
    g = gamma if sample_weight is None else gamma * sample_weight[:, None]
    nk = jnp.sum(g, axis=0) + 10 * jnp.finfo(X.dtype).eps
    ref = (g.T @ X) / nk[:, None]
    return suff_stats(gamma, X, ref, covariance_type=covariance_type,
                      sample_weight=sample_weight, n_active=n_active, pool=pool)


def _per_row(fn, params: GMMParams, X: Array):
    """``fn(params, X)`` (outputs with a leading axis of rows). In a trace, as it is; on
    concrete data, ``jax.jit(fn)`` on ``X``'s rows padded to their size class (copies of the
    first row; :func:`emjax._sizes.padded_rows`) and cut on the host, so a new number of rows
    rarely compiles (op by op, every operation would compile for every shape)."""
    if v.is_traced(params, X):
        return fn(params, X)
    n = X.shape[0]
    n_rows = _sizes.padded_rows(n, X.dtype.itemsize * X.shape[1]) if n else None
    if n_rows is None or n_rows == n:
        return _PER_ROW[fn](params, X)
    Xp, _ = _sizes.pad_rows(np.asarray(X), None, n_rows)
    return _sizes.first_rows(_PER_ROW[fn](params, Xp), n)


def _e_rows(params, X):
    return e_step_full(params, X)


def _score_rows(params, X):
    return logsumexp(weighted_log_prob(params, X), axis=1)


def _proba_rows(params, X):
    return jnp.exp(e_step_full(params, X)[0])


def _predict_rows(params, X):
    return jnp.argmax(weighted_log_prob(params, X), axis=1)


def score_samples(params: GMMParams, X: Array) -> Array:
    """``log p(x_n)`` for each sample, shape ``(n_samples,)``.

    Checked when called outside ``jit`` (see :func:`emjax._validation.check_model_data`);
    inside ``jit``/``vmap``/``grad`` nothing is checked.
    """
    return _per_row(_score_rows, params, v.check_model_data(params, X))


log_prob = score_samples


def predict_proba(params: GMMParams, X: Array) -> Array:
    """Posterior component probabilities ``(n_samples, n_components)``.

    Checked when called outside ``jit`` (see :func:`emjax._validation.check_model_data`);
    inside ``jit``/``vmap``/``grad`` nothing is checked.
    """
    return _per_row(_proba_rows, params, v.check_model_data(params, X))


def predict(params: GMMParams, X: Array) -> Array:
    """Most probable component of each sample, shape ``(n_samples,)``.

    Checked when called outside ``jit`` (see :func:`emjax._validation.check_model_data`);
    inside ``jit``/``vmap``/``grad`` nothing is checked.
    """
    return _per_row(_predict_rows, params, v.check_model_data(params, X))


def sample(key: Array, params: GMMParams, n_samples: int) -> tuple[Array, Array]:
    """Draw ``n_samples`` points: returns ``(X, labels)``.

    Outside a trace the draws run as one compiled program for ``n_samples``' class
    (:func:`emjax._sizes.draw_class`), whose first ``n_samples`` rows are these draws (JAX's
    partitionable PRNG draws each row from its index), so a new ``n_samples`` rarely compiles.

    Args:
      key: a PRNG key (or, outside a trace, an int seed).
      params: the mixture.
      n_samples: static number of samples.
    """
    if v.is_traced(key, params):
        return _draw(key, params, n_samples)
    key = v.as_key(key)
    v.check_params(params)
    v.check_model_x64(params)
    n_samples = v.check_positive_int(n_samples, "n_samples")
    n_class = _sizes.draw_class(n_samples)
    out = _draw_compiled(key, params, n_class)
    return out if n_class == n_samples else _sizes.first_rows(out, n_samples)


def _draw(key: Array, params: GMMParams, n_samples: int) -> tuple[Array, Array]:
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


_draw_compiled = jax.jit(_draw, static_argnums=2)
_PER_ROW = {fn: jax.jit(fn) for fn in (_e_rows, _score_rows, _proba_rows, _predict_rows)}


def n_parameters(covariance_type: str, n_components: int, n_features: int) -> int:
    """Number of free parameters (scikit-learn's ``_n_parameters``)."""
    covariance_type = v.check_covariance_type(covariance_type)
    return (
        cov_lib.n_covariance_parameters(covariance_type, n_components, n_features)
        + n_components * n_features
        + n_components
        - 1
    )


def bic(params: GMMParams, X: Array) -> Array:
    """Bayesian information criterion (lower is better): ``-2 log L + p log n``.

    Checked when called outside ``jit`` (see :func:`emjax._validation.check_model_data`);
    inside ``jit``/``vmap``/``grad`` nothing is checked.
    """
    X = v.check_model_data(params, X)
    n = X.shape[0]
    p = n_parameters(params.covariance_type, params.n_components, params.n_features)
    return -2.0 * _total(score_samples(params, X)) + p * math.log(n)


def aic(params: GMMParams, X: Array) -> Array:
    """Akaike information criterion (lower is better): ``-2 log L + 2 p``.

    Checked when called outside ``jit`` (see :func:`emjax._validation.check_model_data`);
    inside ``jit``/``vmap``/``grad`` nothing is checked.
    """
    X = v.check_model_data(params, X)
    p = n_parameters(params.covariance_type, params.n_components, params.n_features)
    return -2.0 * _total(score_samples(params, X)) + 2 * p


def _total(ll: Array) -> Array:
    """``sum(ll)``: in a trace by JAX, else on the host (a device sum compiles per shape)."""
    if v.is_traced(ll):
        return jnp.sum(ll)
    a = np.asarray(ll)
    return jax.device_put(np.asarray(np.sum(a, dtype=np.float64), a.dtype))


def responsibilities_mass(gamma: Array, sample_weight: Array | None = None) -> Array:
    """``N_k = sum_n w_n gamma_nk``, shape ``(n_components,)``."""
    if sample_weight is not None:
        gamma = gamma * sample_weight[:, None]
    return jnp.sum(gamma, axis=0)


# ------------------------------------------------------------------ padded components

def filler_params(covariance_type: str, k: int, d: int, dtype, lead: tuple = ()) -> GMMParams:
    """Parameters of ``k`` padding components: weight 0, mean 0, identity covariance (tied:
    the identity as the shared matrix, which padding leaves to the real components)."""
    eye_like = {
        "full": jnp.broadcast_to(jnp.eye(d, dtype=dtype), lead + (k, d, d)),
        "tied": jnp.broadcast_to(jnp.eye(d, dtype=dtype), lead + (d, d)),
        "diag": jnp.ones(lead + (k, d), dtype),
        "spherical": jnp.ones(lead + (k,), dtype),
    }[covariance_type]
    cov = cov_lib.COVARIANCE_CLASSES[covariance_type](eye_like, eye_like)
    return GMMParams(jnp.zeros(lead + (k,), dtype), jnp.zeros(lead + (k, d), dtype), cov)


def from_pooled(params: GMMParams, covariance_type: str, lead: int = 0) -> GMMParams:
    """``params`` of a fit run as ``plan.pooled_type(covariance_type, ...)`` with pooled
    covariances (every component's the same matrix, diagonal matrices, or each component's
    variances equal), in ``covariance_type``'s own form (``lead`` leading batch axes; NumPy or JAX
    arrays)."""
    cov = params.covariance
    full = isinstance(cov, cov_lib.FullCovariance)
    if covariance_type == "tied":
        cov = cov_lib.TiedCovariance(*(a[(slice(None),) * lead + (0,)] for a in cov))
    elif covariance_type == "diag" and full:
        cov = cov_lib.DiagCovariance(*(a.diagonal(axis1=-2, axis2=-1) for a in cov))
    elif covariance_type == "spherical":
        cov = cov_lib.SphericalCovariance(*(a[..., 0, 0] if full else a[..., 0] for a in cov))
    return GMMParams(params.weights, params.means, cov)


def first_components(params: GMMParams, k: int, lead: int = 0) -> GMMParams:
    """``params`` (``lead`` leading batch axes) without the padding components after the first
    ``k`` (tied covariances have no component axis)."""
    cut = (slice(None),) * lead + (slice(0, k),)
    cov = params.covariance
    if not isinstance(cov, cov_lib.TiedCovariance):
        cov = jax.tree_util.tree_map(lambda a: a[cut], cov)
    return GMMParams(params.weights[cut], params.means[cut], cov)


def mask_params(params: GMMParams, active: Array) -> GMMParams:
    """Force the inactive components of ``params`` to the padding values and renormalise the
    weights of the active ones (``active``: ``(K_max,)`` bool)."""
    k, d = params.means.shape
    dtype = params.means.dtype
    weights = jnp.where(active, params.weights, 0.0)
    weights = weights / jnp.sum(weights)
    means = jnp.where(active[:, None], params.means, 0.0)
    cov = params.covariance
    if not isinstance(cov, cov_lib.TiedCovariance):
        fill = filler_params(params.covariance_type, k, d, dtype).covariance
        shape = (k,) + (1,) * (cov.covariances.ndim - 1)
        cov = jax.tree_util.tree_map(
            lambda a, f: jnp.where(active.reshape(shape), a, f), cov, fill)
    return GMMParams(weights, means, cov)
