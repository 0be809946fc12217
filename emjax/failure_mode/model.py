"""Failure-mode mixture: a mixture of random-effects regressions for multi-sensor degradation
curves.

Unit ``l`` reports ``C`` channels (sensors plus a health index ``y``, conventionally the last
channel) at its own irregular times. Given its failure mode ``k``, each channel's curve is a basis
expansion ``x_lc = Phi_lc T_lc + noise`` with ``T_lc ~ N(mu_ck, Sigma_ck)`` and noise variance
``s2_ck``; channels are independent given the mode. EM (``e_step``/``m_step``, pure and unjitted,
all in the ``p x p`` coefficient space through Cholesky factors) runs on the generic driver
:mod:`emjax.em`; :func:`fit` vmaps the restarts in one compiled program. See
``docs/failure_mode.md`` for the model, its equations and the derivation of the steps.

Shapes: ``L`` units, ``C`` channels, ``N`` padded observation slots, ``K`` modes, ``p`` basis
functions. Ragged data is padded; padded or missing entries carry ``obs = 0`` and ``x = 0`` and
contribute nothing (padding is exact).

Scaling advice: rescale time to ``tau = t / t_scale`` in ``[0, 1]`` (done by :func:`make_data`)
and bring every channel to an O(1) scale (e.g. subtract each channel's value at the start of life
and divide by its standard deviation over the fleet) before fitting: the noise floor and the
covariance floor are absolute, and a raw-cycle polynomial basis is badly conditioned.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular
from jax.scipy.special import logsumexp

from emjax import _validation as v
from emjax import _xla, em, kmeans
from emjax._linalg import after, diagonal, unrolled_cholesky, unrolled_lower_inverse
from emjax._sizes import first_rows, history_class, size_class

Array = jax.Array

_LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------------------------
# Bases
# --------------------------------------------------------------------------------------------


def polynomial_basis(tau: Array, degree: int) -> Array:
    """``(1, tau, ..., tau^degree)``: ``(..., degree + 1)``. Use with ``tau`` in ``[0, 1]``."""
    tau = jnp.asarray(tau)
    return jnp.stack([tau**j for j in range(degree + 1)], axis=-1)


def bspline_basis(tau: Array, n_interior_knots: int, degree: int = 3) -> Array:
    """Clamped B-splines on ``[0, 1]`` with equally spaced interior knots (Cox-de Boor).

    Returns ``(..., n_interior_knots + degree + 1)``; the functions sum to one on ``[0, 1]``.
    Outside ``[0, 1]`` ``tau`` is clipped (constant extrapolation): use a polynomial basis when
    predicting beyond the observed life.
    """
    tau = jnp.clip(jnp.asarray(tau), 0.0, 1.0)
    dtype = tau.dtype if jnp.issubdtype(tau.dtype, jnp.floating) else jnp.result_type(float)
    tau = tau.astype(dtype)
    interior = [(i + 1) / (n_interior_knots + 1) for i in range(n_interior_knots)]
    knots = [0.0] * (degree + 1) + interior + [1.0] * (degree + 1)
    n_spans = len(knots) - 1
    # Degree-0 indicators; the last non-empty span is closed on the right so tau = 1 is covered.
    last = max(i for i in range(n_spans) if knots[i + 1] > knots[i])
    basis = []
    for i in range(n_spans):
        lo, hi = knots[i], knots[i + 1]
        if hi <= lo:
            basis.append(jnp.zeros_like(tau))
        elif i == last:
            basis.append(((tau >= lo) & (tau <= hi)).astype(dtype))
        else:
            basis.append(((tau >= lo) & (tau < hi)).astype(dtype))
    for d in range(1, degree + 1):
        new = []
        for i in range(n_spans - d):
            term = jnp.zeros_like(tau)
            den1 = knots[i + d] - knots[i]
            if den1 > 0:
                term = term + (tau - knots[i]) / den1 * basis[i]
            den2 = knots[i + d + 1] - knots[i + 1]
            if den2 > 0:
                term = term + (knots[i + d + 1] - tau) / den2 * basis[i + 1]
            new.append(term)
        basis = new
    return jnp.stack(basis, axis=-1)


@dataclasses.dataclass(frozen=True)
class Basis:
    """A hashable basis specification (static under jit).

    Attributes:
      kind: ``"polynomial"``, ``"bspline"``, ``"exponential"`` or ``"power"``.
      degree: polynomial degree (``p = degree + 1``) or spline degree; for ``"exponential"`` and
        ``"power"`` the degree of the polynomial part.
      n_interior_knots: B-splines only (``p = n_interior_knots + degree + 1``).
      rate: ``"exponential"``: ``(1, tau, ..., tau^degree, exp(rate (tau - 1)))``; ``"power"``:
        ``(1, tau, ..., tau^degree, tau^rate)`` (``p = degree + 2`` for both). These follow a
        degradation that accelerates towards failure (the knee) and extrapolate beyond
        ``tau = 1``, which clamped B-splines do not.
    """

    kind: str = "polynomial"
    degree: int = 2
    n_interior_knots: int = 0
    rate: float = 0.0

    def __post_init__(self):
        if self.kind not in ("polynomial", "bspline", "exponential", "power"):
            raise ValueError("basis kind must be 'polynomial', 'bspline', 'exponential' or "
                             f"'power', got {self.kind!r}")
        if self.degree < 0 or self.n_interior_knots < 0:
            raise ValueError("basis degree and n_interior_knots must be non-negative")
        if self.kind == "exponential" and not self.rate > 0:
            raise ValueError(f"an exponential basis needs rate > 0, got {self.rate}")
        if self.kind == "power" and not self.rate > self.degree:
            raise ValueError(f"a power basis needs rate > degree = {self.degree}, got {self.rate}")

    @property
    def size(self) -> int:
        """Number of basis functions ``p``."""
        if self.kind == "polynomial":
            return self.degree + 1
        if self.kind == "bspline":
            return self.n_interior_knots + self.degree + 1
        return self.degree + 2

    def __call__(self, tau: Array) -> Array:
        """Evaluate at rescaled times ``tau`` ``(...)``: ``(..., p)``."""
        if self.kind == "polynomial":
            return polynomial_basis(tau, self.degree)
        if self.kind == "bspline":
            return bspline_basis(tau, self.n_interior_knots, self.degree)
        tau = jnp.asarray(tau)
        if not jnp.issubdtype(tau.dtype, jnp.floating):
            tau = tau.astype(jnp.result_type(float))
        if self.kind == "exponential":
            last = jnp.exp(self.rate * (tau - 1.0))
        else:  # times before the origin are clipped: tau^rate is not real there
            last = jnp.maximum(tau, 0.0) ** self.rate
        return jnp.concatenate([polynomial_basis(tau, self.degree), last[..., None]], -1)


# --------------------------------------------------------------------------------------------
# Parameters, data, E-step statistics
# --------------------------------------------------------------------------------------------


#: The default basis: quadratic polynomial ``(1, tau, tau^2)``.
QUADRATIC = Basis()


class FMMParams(NamedTuple):
    """Failure-mode mixture parameters (a pytree).

    Attributes:
      weights: ``(K,)`` mode probabilities ``pi_k``.
      means: ``(C, K, p)`` mean coefficients ``mu_ck``.
      covs: ``(C, K, p, p)`` random-effect covariances ``Sigma_ck``.
      noise_var: ``(C, K)`` noise variances ``s2_ck``.
    """

    weights: Array
    means: Array
    covs: Array
    noise_var: Array


class FMMData(NamedTuple):
    """Padded, masked data with its sufficient statistics (a pytree; build with :func:`make_data`).

    Attributes:
      tau: ``(L, N)`` rescaled times (padded slots hold any finite value).
      x: ``(L, C, N)`` values, 0 where not observed.
      obs: ``(L, C, N)`` 1.0 where observed, else 0.0.
      design: ``(L, N, p)`` basis at ``tau``.
      A: ``(L, C, p, p)`` ``Phi_lc^T Phi_lc``.
      b: ``(L, C, p)`` ``Phi_lc^T x_lc``.
      n: ``(L, C)`` number of observed values.
      t_scale: ``()`` the time scale (``tau = t / t_scale``).
    """

    tau: Array
    x: Array
    obs: Array
    design: Array
    A: Array
    b: Array
    n: Array
    t_scale: Array


class FMMPosterior(NamedTuple):
    """E-step output (a pytree).

    Attributes:
      log_resp: ``(L, K)`` log responsibilities ``log gamma_lk``.
      coef_mean: ``(L, C, K, p)`` posterior means ``m_lck`` of the coefficients.
      coef_cov: ``(L, C, K, p, p)`` posterior covariances ``P_lck``.
      rss: ``(L, C, K)`` ``||x_lc - Phi_lc m_lck||^2`` on observed entries.
      log_density: ``(L, C, K)`` marginal ``log N(x_lc; Phi_lc mu_ck, V_lck)``.
      log_lik: ``(L,)`` per-unit observed-data log-likelihood.
    """

    log_resp: Array
    coef_mean: Array
    coef_cov: Array
    rss: Array
    log_density: Array
    log_lik: Array


class Prior(NamedTuple):
    """Conjugate priors for MAP-EM (a pytree; any field may be ``None`` = flat).

    Attributes:
      cov_scale: ``(p, p)`` inverse-Wishart scale ``Psi`` on every ``Sigma_ck``.
      cov_dof: ``()`` inverse-Wishart degrees of freedom ``nu``.
      noise_shape: ``()`` inverse-gamma shape ``a`` on every ``s2_ck``.
      noise_scale: ``()`` inverse-gamma scale ``beta_0``.
      dirichlet: ``()`` symmetric Dirichlet concentration ``alpha >= 1`` on the weights.
    """

    cov_scale: Array | None = None
    cov_dof: Array | None = None
    noise_shape: Array | None = None
    noise_scale: Array | None = None
    dirichlet: Array | None = None


def make_data(times, values, obs=None, *, basis: Basis = QUADRATIC, t_scale=None) -> FMMData:
    """Padded arrays -> :class:`FMMData` (with sufficient statistics).

    Args:
      times: ``(L, N)`` observation times (padded slots: anything; NaN allowed).
      values: ``(L, C, N)`` channel values; NaN marks a missing entry.
      obs: optional ``(L, C, N)`` mask (truthy = observed); combined with ``isfinite(values)``.
      basis: the :class:`Basis` (default quadratic polynomial).
      t_scale: time scale, ``tau = times / t_scale`` (default: the largest observed time).

    Returns:
      :class:`FMMData` in the dtype of ``values`` (float32 stays float32).

    Raises:
      ValueError: on mis-shaped inputs, infinite values, non-finite times at observed slots or
        ``t_scale <= 0``.
    """
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.floating):
        values = values.astype(v.jax_float(values))  # JAX's default float, as jnp.asarray
    dtype = values.dtype
    v.check_x64(dtype, "values", "pass float32 values")  # else float32, silently
    times = np.asarray(times, dtype)
    if values.ndim != 3:
        raise ValueError(f"values must be (L, C, N), got shape {values.shape}")
    L, C, N = values.shape
    if times.shape != (L, N):
        raise ValueError(f"times must be (L, N) = {(L, N)} to match values {values.shape}, "
                         f"got {times.shape}")
    mask = np.isfinite(values)
    if obs is not None:
        obs = np.asarray(obs)
        if obs.shape != values.shape:
            raise ValueError(f"obs must have the shape of values {values.shape}, got {obs.shape}")
        mask &= obs.astype(bool)
    # NaN marks a missing entry; an infinity is a bad value, not a hole (as load_long_table)
    inf = np.isinf(values) & (True if obs is None else obs.astype(bool))
    if inf.any():
        unit, channel, slot = (int(i[0]) for i in np.nonzero(inf))
        raise ValueError(f"values holds {int(inf.sum())} infinite entries (the first: unit "
                         f"{unit}, channel {channel}, slot {slot}); NaN marks a missing entry")
    bad = mask & ~np.isfinite(times)[:, None, :]
    if bad.any():
        raise ValueError(f"{int(bad.sum())} observed entries have non-finite times")
    if t_scale is None:
        observed_t = np.where(mask.any(1), times, -np.inf)
        t_scale = float(np.max(observed_t)) if mask.any() else 1.0
        if not t_scale > 0:
            t_scale = 1.0
    t_scale = float(t_scale)
    if not (t_scale > 0 and np.isfinite(t_scale)):
        raise ValueError(f"t_scale must be positive and finite, got {t_scale}")
    tau = np.where(np.isfinite(times), times / t_scale, 0.0).astype(dtype)
    x = np.where(mask, values, 0.0).astype(dtype)
    # One compiled program per size class of units and observations (padding: unobserved
    # zeros, which enter no statistic), cut on the host: op by op, every operation would
    # compile for every new shape.
    n_units, n_obs = size_class(L), size_class(N)
    grow = ((0, n_units - L), (0, 0), (0, n_obs - N))
    d = _data_compiled(np.pad(tau, (grow[0], grow[2])), np.pad(x, grow),
                       np.pad(mask.astype(dtype), grow), np.asarray(t_scale, dtype), basis=basis)
    units, obs_ = slice(0, L), slice(0, N)
    cuts = ((units, obs_), (units, slice(None), obs_), (units, slice(None), obs_),
            (units, obs_), (units,), (units,), (units,))
    return FMMData(*(jax.device_put(np.asarray(a)[c]) for a, c in zip(d[:-1], cuts)),
                   jax.device_put(np.asarray(d.t_scale)))


def data_from_arrays(tau: Array, x: Array, obs: Array, *, basis: Basis, t_scale=1.0) -> FMMData:
    """Sufficient statistics from already-clean arrays (pure; jittable; no validation).

    ``tau`` ``(L, N)`` finite, ``x`` ``(L, C, N)`` zero where ``obs`` ``(L, C, N)`` is zero.
    """
    design = basis(tau).astype(x.dtype)
    phim = design[:, None] * obs[..., None]  # (L, C, N, p): padded rows are zero
    A = jnp.einsum("lcnp,lcnq->lcpq", phim, phim)
    b = jnp.einsum("lcnp,lcn->lcp", phim, x)
    return FMMData(tau, x, obs, design, A, b, jnp.sum(obs, -1), jnp.asarray(t_scale, x.dtype))


_data_compiled = jax.jit(
    lambda tau, x, obs, t_scale, *, basis: data_from_arrays(tau, x, obs, basis=basis,
                                                           t_scale=t_scale),
    static_argnames=("basis",))


# --------------------------------------------------------------------------------------------
# E-step (everything in p-space: docs/failure_mode.md, "E-step")
# --------------------------------------------------------------------------------------------


#: Bases of up to this many functions are factorised by unrolled elementwise operations in the
#: E-step (a property of the method, not of a backend: a batch of tiny matrices is elementwise
#: work everywhere, one library call per matrix nowhere fast); larger ones by LAPACK.
UNROLLED_MAX_BASIS = 8


def _swap(a: Array) -> Array:
    return jnp.swapaxes(a, -1, -2)


def _matvec(a: Array, x: Array) -> Array:
    """``a @ x`` for batches of small matrices, one multiply-add per column of ``a`` (fused
    elementwise; XLA:CPU reduces a short axis slowly)."""
    return sum(a[..., :, k] * x[..., k, None] for k in range(a.shape[-1]))


def _einsum_matvec(a: Array, x: Array) -> Array:
    return jnp.einsum("...ij,...j->...i", a, x)


def _matmul(a: Array, b: Array) -> Array:
    """``a @ b`` for batches of small matrices, one multiply-add per column of ``a``."""
    return sum(a[..., :, k, None] * b[..., None, k, :] for k in range(a.shape[-1]))


def posterior(params: FMMParams, data: FMMData, *,
              unrolled: bool | None = None) -> FMMPosterior:
    """The exact E-step through Cholesky factors (never the ``n x n`` matrix ``V``).

    With ``G = chol(Sigma)``, ``B = I + G^T A G / s2`` (eigenvalues >= 1, so well conditioned even
    for ``n < p``), ``v = B^{-1} G^T (b - A mu)``:

    .. math::
       m = \\mu + G v / s^2,\\quad P = G B^{-1} G^T,\\quad
       \\log|V| = n \\log s^2 + \\log|B|,\\quad
       r^T V^{-1} r = \\mathrm{RSS}/s^2 + \\|v\\|^2/s^4.

    A channel with ``n_lc = 0`` gives ``log N = 0``, ``m = mu``, ``P = Sigma``. ``unrolled``
    (static): factorise each ``B`` by unrolled elementwise operations rather than LAPACK;
    default: for bases of up to :data:`UNROLLED_MAX_BASIS` functions.
    """
    w_, mu, Sig, s2 = params
    p = mu.shape[-1]
    dtype = data.x.dtype
    G = jnp.linalg.cholesky(Sig)  # (C, K, p, p) lower
    Gt = _swap(G)[None]
    inv_s2 = 1.0 / s2  # (C, K)
    if unrolled is None:
        unrolled = p <= UNROLLED_MAX_BASIS
    if unrolled:
        # Small bases: every product and the factorisation of each (unit, channel, mode)'s B
        # elementwise over that batch (LAPACK would take a call per matrix; B is well
        # conditioned, so its inverse factor is safe).
        mv, mm = _matvec, _matmul
        B = jnp.eye(p, dtype=dtype) + mm(Gt, mm(data.A[:, :, None], G[None])) * inv_s2[
            None, :, :, None, None]
        resid0 = data.b[:, :, None] - mv(data.A[:, :, None], mu[None])  # b - A mu
        CB = unrolled_cholesky(B)
        Ci = unrolled_lower_inverse(CB)
        v = mv(_swap(Ci), mv(Ci, mv(Gt, resid0)))  # B^{-1} G^T (b - A mu)
        H = mm(Ci, Gt)  # CB^{-1} G^T
    else:
        mv, mm = _einsum_matvec, jnp.matmul
        GtAG = jnp.einsum("ckqp,lcqr,ckrs->lckps", G, data.A, G)
        B = jnp.eye(p, dtype=dtype) + GtAG * inv_s2[None, :, :, None, None]
        CB = jnp.linalg.cholesky(B)  # (L, C, K, p, p)
        resid0 = data.b[:, :, None] - jnp.einsum("lcpq,ckq->lckp", data.A, mu)  # b - A mu
        w = jnp.einsum("ckqp,lckq->lckp", G, resid0)  # G^T (b - A mu)
        u = solve_triangular(CB, w[..., None], lower=True)
        v = solve_triangular(CB, u, lower=True, trans="T")[..., 0]  # B^{-1} w
        # after v's solves, not beside them (emjax._linalg)
        H = solve_triangular(CB, after(jnp.broadcast_to(Gt, CB.shape), v), lower=True)
    m = mu[None] + mv(G[None], v) * inv_s2[None, ..., None]
    P = mm(_swap(H), H)
    fitted = mv(data.design[:, None, None], m)  # (L, C, K, n)
    res = (data.x[:, :, None] - fitted) * data.obs[:, :, None]
    rss = jnp.sum(res * res, -1)  # (L, C, K)
    n = data.n[..., None]
    logdet_b = 2.0 * jnp.sum(jnp.log(diagonal(CB)), -1)
    logdet_v = n * jnp.log(s2)[None] + logdet_b
    quad = rss * inv_s2[None] + jnp.sum(v * v, -1) * (inv_s2 * inv_s2)[None]
    log_dens = -0.5 * (n * _LOG_2PI + logdet_v + quad)  # (L, C, K)
    joint = jnp.log(w_)[None] + jnp.sum(log_dens, 1)  # (L, K)
    ll = logsumexp(joint, axis=1)
    return FMMPosterior(joint - ll[:, None], m, P, rss, log_dens, ll)


def log_prior(params: FMMParams, prior: Prior | None) -> Array:
    """Log prior density of ``params`` (up to constants); ``0`` for ``prior=None``."""
    dtype = params.means.dtype
    out = jnp.zeros((), dtype)
    if prior is None:
        return out
    p = params.means.shape[-1]
    if prior.cov_scale is not None:
        G = jnp.linalg.cholesky(params.covs)
        logdet = 2.0 * jnp.sum(jnp.log(diagonal(G)), -1)
        Gi_psi = solve_triangular(G, jnp.broadcast_to(prior.cov_scale, G.shape), lower=True)
        tr = jnp.trace(solve_triangular(G, _swap(Gi_psi), lower=True), axis1=-2, axis2=-1)
        out = out + jnp.sum(-0.5 * (prior.cov_dof + p + 1) * logdet - 0.5 * tr)
    if prior.noise_shape is not None:
        s2 = params.noise_var
        out = out + jnp.sum(-(prior.noise_shape + 1) * jnp.log(s2) - prior.noise_scale / s2)
    if prior.dirichlet is not None:
        out = out + (prior.dirichlet - 1) * jnp.sum(jnp.log(params.weights))
    return out


def e_step(params: FMMParams, data: FMMData,
           prior: Prior | None = None) -> tuple[FMMPosterior, Array]:
    """``(posterior, objective)``: the observed-data log-likelihood (plus ``log_prior``)."""
    post = posterior(params, data)
    return post, jnp.sum(post.log_lik) + log_prior(params, prior)


# --------------------------------------------------------------------------------------------
# M-step
# --------------------------------------------------------------------------------------------


def _floor_eigenvalues(S: Array, floor) -> Array:
    """Symmetrise and raise eigenvalues below ``floor`` to ``floor``: the exact maximiser of the
    Gaussian covariance objective over ``{Sigma >= floor I}``, so EM stays monotone."""
    S = 0.5 * (S + _swap(S))
    lam, vec = jnp.linalg.eigh(S)
    lam = jnp.maximum(lam, floor)
    return (vec * lam[..., None, :]) @ _swap(vec)


def _m_update(gamma, m, P, resid2, n, coef_mask, *, prior, cov_floor, noise_floor,
              n_units=None):
    """Closed-form (MAP-)M-step from weighted moments; ``coef_mask`` ``(L, C)`` or ``None``;
    ``n_units``: the number of units (default ``L``; less when ``gamma`` is zero on padding)."""
    L, K = gamma.shape
    L = L if n_units is None else n_units
    p = m.shape[-1]
    dtype = m.dtype
    tiny = 10 * jnp.finfo(dtype).eps
    Nk = jnp.sum(gamma, 0)  # (K,)
    g = gamma[:, None, :] if coef_mask is None else gamma[:, None, :] * coef_mask[..., None]
    Nck = jnp.sum(g, 0) + tiny  # (C, K)
    mu = jnp.einsum("lck,lckp->ckp", g, m) / Nck[..., None]
    d = m - mu[None]
    S = jnp.einsum("lck,lckpq->ckpq", g, P + d[..., :, None] * d[..., None, :])
    if prior is not None and prior.cov_scale is not None:
        Sig = (prior.cov_scale + S) / (Nck + prior.cov_dof + p + 1)[..., None, None]
    else:
        Sig = S / Nck[..., None, None]
    Sig = _floor_eigenvalues(Sig, cov_floor)
    num = jnp.einsum("lk,lck->ck", gamma, resid2)
    den = jnp.einsum("lk,lc->ck", gamma, n)
    if prior is not None and prior.noise_shape is not None:
        s2 = (2 * prior.noise_scale + num) / (2 * prior.noise_shape + 2 + den)
    else:
        s2 = num / (den + tiny)
    s2 = jnp.maximum(s2, noise_floor)
    if prior is not None and prior.dirichlet is not None:
        wts = (Nk + prior.dirichlet - 1) / (L + K * prior.dirichlet - K)
    else:
        wts = Nk / L
    wts = jnp.maximum(wts, tiny)
    return FMMParams(wts / jnp.sum(wts), mu, Sig, s2)


def m_step(post: FMMPosterior, data: FMMData, *, prior: Prior | None = None,
           cov_floor: float = 0.0, noise_floor: float = 0.0) -> FMMParams:
    """The exact (MAP-)M-step, all sums over units:

    .. math::
       N_k = \\sum_l \\gamma_{lk},\\ \\pi_k = N_k / L,

       \\mu_{ck} = \\sum_l \\gamma_{lk} m_{lck}/N_k,

       \\Sigma_{ck} = \\sum_l \\gamma_{lk}[P_{lck} + d d^T]/N_k\\ (d = m_{lck} - \\mu_{ck}^{new}),

       s^2_{ck} = \\sum_l \\gamma_{lk}[\\mathrm{RSS}_{lck} + \\mathrm{tr}(A_{lc} P_{lck})]
                  / \\sum_l \\gamma_{lk} n_{lc}.

    With a :class:`Prior` the conjugate MAP forms of docs/failure_mode.md are used. ``cov_floor``
    raises eigenvalues of ``Sigma`` to at least that value, ``noise_floor`` bounds ``s2`` below
    (both are exact constrained maximisers, so the objective still cannot fall).
    """
    return _weighted_m_step(post, data, None, prior=prior, cov_floor=cov_floor,
                            noise_floor=noise_floor)


def _weighted_m_step(post, data, w, *, prior, cov_floor, noise_floor):
    """:func:`m_step` with unit weights ``w`` ``(L,)`` (0 on padding units; None: all 1)."""
    gamma = jnp.exp(post.log_resp)
    gamma, n_units = (gamma, None) if w is None else (gamma * w[:, None], jnp.sum(w))
    trAP = jnp.einsum("lcpq,lckqp->lck", data.A, post.coef_cov)
    return _m_update(gamma, post.coef_mean, post.coef_cov, post.rss + trAP, data.n, None,
                     prior=prior, cov_floor=cov_floor, noise_floor=noise_floor, n_units=n_units)


def q_function(params: FMMParams, post: FMMPosterior, data: FMMData,
               prior: Prior | None = None) -> Array:
    """Expected complete-data log-likelihood ``Q(params | post)`` (+ ``log_prior``), constants
    included, so that ``m_step`` is its maximiser (``jax.grad`` of this is zero there)."""
    gamma = jnp.exp(post.log_resp)
    pi, mu, Sig, s2 = params
    p = mu.shape[-1]
    G = jnp.linalg.cholesky(Sig)
    logdet = 2.0 * jnp.sum(jnp.log(diagonal(G)), -1)  # (C, K)
    d = post.coef_mean - mu[None]
    M = post.coef_cov + d[..., :, None] * d[..., None, :]  # (L, C, K, p, p)
    Gi = solve_triangular(jnp.broadcast_to(G[None], M.shape), M, lower=True)
    tr = jnp.trace(solve_triangular(jnp.broadcast_to(G[None], M.shape), _swap(Gi), lower=True),
                   axis1=-2, axis2=-1)
    trAP = jnp.einsum("lcpq,lckqp->lck", data.A, post.coef_cov)
    n = data.n[..., None]
    coef = -0.5 * (p * _LOG_2PI + logdet[None] + tr)
    noise = -0.5 * (n * _LOG_2PI + n * jnp.log(s2)[None] + (post.rss + trAP) / s2[None])
    per = jnp.log(pi)[None] + jnp.sum(coef + noise, 1)  # (L, K)
    return jnp.sum(gamma * per) + log_prior(params, prior)


# --------------------------------------------------------------------------------------------
# Initialisation, repair, fit
# --------------------------------------------------------------------------------------------


def ridge_coefficients(data: FMMData, ridge: float = 1e-3) -> Array:
    """Per-unit, per-channel ridge fits ``(A_lc + ridge I)^{-1} b_lc``: ``(L, C, p)``."""
    p = data.A.shape[-1]
    chol = jnp.linalg.cholesky(data.A + ridge * jnp.eye(p, dtype=data.A.dtype))
    u = solve_triangular(chol, data.b[..., None], lower=True)
    return solve_triangular(chol, u, lower=True, trans="T")[..., 0]


def init_params(key: Array, data: FMMData, n_components: int, *, init: str = "kmeans",
                ridge: float = 1e-3, n_lloyd: int = 10, cov_floor: float = 1e-6,
                noise_floor: float = 1e-6, unit_weight: Array | None = None) -> FMMParams:
    """Initial parameters (pure; vmappable over ``key``).

    Per-unit ridge coefficients, concatenated over channels and standardised, are clustered by
    k-means++ and ``n_lloyd`` Lloyd steps (``init="kmeans"``) or the units get random Dirichlet
    responsibilities (``init="random"``). Then ``gamma = 0.9 onehot + 0.1 / K`` and one M-step
    with ``m = beta``, ``P = 0`` (channels with fewer than ``p`` values do not enter the means and
    covariances) and ``1e-4 I`` added to each ``Sigma``. ``unit_weight``: optional ``(L,)``, 0 on
    padding units (``init="kmeans"`` only), which then enter no statistic and are never drawn.

    On concrete data it runs one compiled program per shape (and takes an int seed as ``key``);
    inside ``jit``/``vmap`` it is traced as is.
    """
    static = dict(n_components=n_components, init=init, ridge=ridge, n_lloyd=n_lloyd,
                  cov_floor=cov_floor, noise_floor=noise_floor)
    if v.is_traced(key, data, unit_weight):
        return _init_params(key, data, unit_weight=unit_weight, **static)
    # op by op, k-means' loops (closures made per call) compiled again at every call: 0.5 s
    return _init_params_compiled(v.as_key(key), data, unit_weight=unit_weight, **static)


def _init_params(key, data, *, n_components, init, ridge, n_lloyd, cov_floor, noise_floor,
                 unit_weight):
    L, C = data.n.shape
    p = data.A.shape[-1]
    K = n_components
    dtype = data.x.dtype
    beta = ridge_coefficients(data, ridge)  # (L, C, p)
    w = unit_weight
    if init == "random":
        gamma = jax.random.dirichlet(key, jnp.ones((K,), dtype), (L,)).astype(dtype)
    else:
        feats = beta.reshape(L, C * p)
        if w is None:
            mean, sd = jnp.mean(feats, 0), jnp.std(feats, 0)
        else:
            mean = w @ feats / jnp.sum(w)
            sd = jnp.sqrt(w @ (feats - mean) ** 2 / jnp.sum(w))
        feats = (feats - mean) / (sd + 1e-12)
        centers, _ = kmeans.kmeans_plusplus(key, feats, K, sample_weight=w)
        centers = kmeans.lloyd(feats, centers, n_lloyd, sample_weight=w)
        onehot = jax.nn.one_hot(kmeans.assign(feats, centers), K, dtype=dtype)
        gamma = 0.9 * onehot + 0.1 / K
    n_units = None
    if w is not None:
        gamma, n_units = gamma * w[:, None], jnp.sum(w)
    res = (data.x - jnp.einsum("lnp,lcp->lcn", data.design, beta)) * data.obs
    rss = jnp.broadcast_to(jnp.sum(res * res, -1)[..., None], (L, C, K))
    m = jnp.broadcast_to(beta[:, :, None], (L, C, K, p))
    ok = (data.n >= p).astype(dtype)
    ok = jnp.where(jnp.sum(ok, 0, keepdims=True) > 0, ok, jnp.ones_like(ok))
    params = _m_update(gamma, m, jnp.zeros((L, C, K, p, p), dtype), rss, data.n, ok, prior=None,
                       cov_floor=cov_floor, noise_floor=noise_floor, n_units=n_units)
    return params._replace(covs=params.covs + 1e-4 * jnp.eye(p, dtype=dtype))


_init_params_compiled = jax.jit(_init_params, static_argnames=(
    "n_components", "init", "ridge", "n_lloyd", "cov_floor", "noise_floor"))


def make_model(*, prior: Prior | None = None, cov_floor: float = 1e-6,
               noise_floor: float = 1e-6, min_mass: float = 1.0):
    """The model as :func:`emjax.em.run` sees it: ``(e_step, m_step, repair)`` over
    ``data = FMMData``.

    ``repair`` re-seeds every mode whose responsibility mass fell below ``min_mass`` units: its
    coefficient means move to the posterior means of one of the worst-explained units (a
    different unit for each), its covariances and noise variances to the largest mode's, its
    weight to ``1 / (2K)`` before renormalising.
    """
    e_fn, m_fn, repair = _weighted_model(prior, cov_floor, noise_floor, min_mass)
    return (lambda params, data: e_fn(params, (data, None)),
            lambda post, data: m_fn(post, (data, None)),
            lambda params, post, data: repair(params, post, (data, None)))


def _weighted_model(prior, cov_floor, noise_floor, min_mass):
    """:func:`make_model` over ``(data, w)``: unit weights ``w`` ``(L,)``, 0 on padding units
    (which then enter no sum and are never a re-seeding candidate), or None (all 1)."""

    def e_fn(params, dw):
        data, w = dw
        post = posterior(params, data)
        ll = post.log_lik if w is None else w * post.log_lik
        return post, jnp.sum(ll) + log_prior(params, prior)

    def m_fn(post, dw):
        data, w = dw
        return _weighted_m_step(post, data, w, prior=prior, cov_floor=cov_floor,
                                noise_floor=noise_floor)

    def repair(params, post, dw):
        _, w = dw
        K = params.weights.shape[0]
        gamma = jnp.exp(post.log_resp)
        Nk = jnp.sum(gamma if w is None else gamma * w[:, None], 0)
        empty = Nk < min_mass
        big = jnp.argmax(Nk)
        badness = -post.log_lik if w is None else jnp.where(w > 0, -post.log_lik, -jnp.inf)
        worst = jax.lax.top_k(badness, K)[1]
        rank = jnp.clip(jnp.cumsum(empty) - 1, 0, K - 1)
        seeds = post.coef_mean[worst[rank], :, big]  # (K, C, p)
        means = jnp.where(empty[None, :, None], jnp.swapaxes(seeds, 0, 1), params.means)
        covs = jnp.where(empty[None, :, None, None], params.covs[:, big][:, None], params.covs)
        s2 = jnp.where(empty[None], params.noise_var[:, big][:, None], params.noise_var)
        wts = jnp.where(empty, 1.0 / (2 * K), params.weights)
        fixed = FMMParams(wts / jnp.sum(wts), means, covs, s2)
        any_empty = jnp.any(empty)
        out = jax.tree_util.tree_map(lambda a, b: jnp.where(any_empty, a, b), fixed, params)
        return out, jnp.where(any_empty, em.STATUS_RESEEDED, 0)

    return e_fn, m_fn, repair


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class FMMFitResult(em.FitResult):
    """Result of :func:`fit`: :class:`emjax.em.FitResult` (``params`` the best restart's
    :class:`FMMParams`; ``n_iter``, ``converged``, ``status``, ``history``, ``best_index``,
    ``restarts`` as there) with ``log_likelihood`` the observed-data log-likelihood, plus:

    Attributes:
      log_likelihood: ``()`` best restart's observed-data log-likelihood at ``params`` (sum over
        units; the MAP objective adds ``log_prior``, reported separately in ``objective``).
      objective: ``()`` the monitored objective (log-likelihood + log prior).
      bic, icl: ``()`` criteria at ``params`` (lower is better).
      responsibilities: ``(L, K)`` posterior mode probabilities ``gamma_lk`` of the training
        units at ``params`` (rows in the order of the data's units).
    """

    objective: Array
    bic: Array
    icl: Array
    responsibilities: Array


def n_parameters(n_components: int, n_channels: int, n_basis: int) -> int:
    """Free parameters ``(K - 1) + K C (p + p (p + 1) / 2 + 1)``."""
    p = n_basis
    return (n_components - 1) + n_components * n_channels * (p + p * (p + 1) // 2 + 1)


def _criteria(ll, log_resp, params, data, w=None):
    """``(BIC, ICL)``; ``w``: optional unit weights, 0 on padding units."""
    C, K, p = params.means.shape
    L = data.n.shape[0] if w is None else jnp.sum(w)
    bic_ = -2.0 * ll + n_parameters(K, C, p) * jnp.log(jnp.asarray(L, ll.dtype))
    ent = jnp.exp(log_resp) * log_resp
    entropy = -jnp.sum(ent if w is None else w[:, None] * ent)
    return bic_, bic_ + 2.0 * entropy


def bic(params: FMMParams, data: FMMData) -> Array:
    """``-2 ll + d log L`` (``L`` = number of units, ``d`` = :func:`n_parameters`; lower is
    better)."""
    post = posterior(params, data)
    return _criteria(jnp.sum(post.log_lik), post.log_resp, params, data)[0]


def icl(params: FMMParams, data: FMMData) -> Array:
    """``BIC + 2 EN`` with the entropy ``EN = -sum gamma log gamma`` (lower is better)."""
    post = posterior(params, data)
    return _criteria(jnp.sum(post.log_lik), post.log_resp, params, data)[1]


def _fit_program(data, key, rtol, prior, params_init, unit_weight, max_iter, *, n_components,
                 history_size, n_init, init, ridge, n_lloyd, cov_floor, noise_floor, min_mass):
    # unit_weight: None, or 0 on the units padding the fleet to its size class; max_iter is
    # traced (history_size static): fits of one size class and history class share a program.
    w = unit_weight
    if params_init is None:
        keys = jax.random.split(key, n_init)
        params0 = jax.vmap(lambda k: init_params(
            k, data, n_components, init=init, ridge=ridge, n_lloyd=n_lloyd,
            cov_floor=cov_floor, noise_floor=noise_floor, unit_weight=w))(keys)
    else:
        params0 = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (n_init,) + a.shape),
                                         params_init)
    e_fn, m_fn, repair = _weighted_model(prior, cov_floor, noise_floor, min_mass)
    res = em.run_restarts(e_fn, m_fn, params0, (data, w), tol=0.0, rtol=rtol,
                          max_iter=max_iter, repair=repair, history_size=history_size)
    best = em.best_restart(res)
    post = posterior(best.params, data)
    ll = jnp.sum(post.log_lik if w is None else w * post.log_lik)
    bic_, icl_ = _criteria(ll, post.log_resp, best.params, data, w)
    return FMMFitResult.extend(best, log_likelihood=ll, objective=best.log_likelihood, bic=bic_,
                               icl=icl_, responsibilities=jnp.exp(post.log_resp))


#: The compiled fit, one per set of XLA options (:func:`emjax._xla.compiler_options`).
_fit_compiled = _xla.JitByOptions(
    _fit_program,
    static_argnames=("n_components", "history_size", "n_init", "init", "ridge", "n_lloyd",
                     "cov_floor", "noise_floor", "min_mass"))


def fit(
    data: FMMData,
    n_components: int,
    *,
    key: Array | None = None,
    n_init: int = 5,
    max_iter: int = 500,
    tol: float = 1e-7,
    init: str = "kmeans",
    ridge: float = 1e-3,
    n_lloyd: int = 10,
    cov_floor: float = 1e-6,
    noise_floor: float = 1e-6,
    min_mass: float = 1.0,
    prior: Prior | None = None,
    params_init: FMMParams | None = None,
) -> FMMFitResult:
    """Fit the failure-mode mixture by (MAP-)EM: ``n_init`` restarts vmapped in one program.

    Args:
      data: :class:`FMMData` (see :func:`make_data`, :func:`.data.load_long_table`).
      n_components: number of failure modes ``K``.
      key: PRNG key for the initialisations (default ``jax.random.key(0)``).
      n_init: restarts, run in parallel (``jax.vmap``); the best objective wins.
      max_iter: maximum EM iterations per restart (variance-component EM is slow: 200-500).
      tol: relative tolerance: stop when the objective changes by less than ``tol * |objective|``
        (default ``1e-7``).
      init: ``"kmeans"`` (ridge fits + k-means++) or ``"random"`` (Dirichlet responsibilities).
      ridge: ridge penalty of the per-unit initial fits.
      n_lloyd: Lloyd steps after k-means++.
      cov_floor: lower bound on the eigenvalues of every ``Sigma_ck`` (the covariance jitter).
      noise_floor: lower bound on every ``s2_ck``.
      min_mass: a mode with fewer than this many units' responsibility is re-seeded.
      prior: optional :class:`Prior` for MAP-EM (the monitored objective then includes it).
      params_init: start every restart from these parameters instead.

    Returns:
      :class:`FMMFitResult`.

    Raises:
      ValueError: on mis-shaped data, ``n_components`` outside ``[1, L]``, unknown ``init``,
        non-positive ``n_init``/``max_iter``, negative floors or tolerance.
    """
    if not isinstance(data, FMMData):
        raise ValueError("data must be an FMMData (use make_data or failure_data.load_long_table)")
    L, C, N = data.x.shape
    p = data.design.shape[-1]
    if data.A.shape != (L, C, p, p) or data.obs.shape != (L, C, N):
        raise ValueError(f"inconsistent FMMData shapes: x {data.x.shape}, obs {data.obs.shape}, "
                         f"A {data.A.shape}, design {data.design.shape}")
    # (a bool is an int to Python: True would fit one component)
    if isinstance(n_components, bool) or not (
            isinstance(n_components, (int, np.integer)) and 1 <= n_components <= L):
        raise ValueError(f"n_components must be an int in [1, L={L}], got {n_components!r}")
    if init not in ("kmeans", "random"):
        raise ValueError(f"init must be 'kmeans' or 'random', got {init!r}")
    for name, val in (("n_init", n_init), ("max_iter", max_iter)):
        v.check_positive_int(val, name)
    for name, val in (("tol", tol), ("ridge", ridge), ("cov_floor", cov_floor),
                      ("noise_floor", noise_floor), ("min_mass", min_mass)):
        v.check_non_negative(val, name)
    dtype = data.x.dtype
    if params_init is not None:
        shapes = tuple(np.shape(a) for a in params_init)
        want = ((n_components,), (C, n_components, p), (C, n_components, p, p), (C, n_components))
        if shapes != want:
            raise ValueError(f"params_init shapes {shapes} do not match {want}")
        params_init = FMMParams(*(jnp.asarray(a, dtype) for a in params_init))
    if prior is not None:
        prior = Prior(*(None if a is None else jnp.asarray(a, dtype) for a in prior))
        if (prior.cov_scale is None) != (prior.cov_dof is None) or \
                (prior.noise_shape is None) != (prior.noise_scale is None):
            raise ValueError("Prior: give cov_scale with cov_dof and noise_shape with noise_scale")
    key = v.as_key(key)
    static = dict(n_components=int(n_components), history_size=history_class(max_iter),
                  n_init=int(n_init), init=init, ridge=float(ridge), n_lloyd=int(n_lloyd),
                  cov_floor=float(cov_floor), noise_floor=float(noise_floor),
                  min_mass=float(min_mass))
    args = (jnp.asarray(tol, dtype), prior, params_init)
    if v.is_traced(data, key, prior, params_init):
        # Inside a caller's trace the fit is inlined (a nested jit carries no compiler options)
        # and runs on the units as given, its history max_iter long as the plain fit's.
        return _fit_compiled[()](data, key, *args, None, jnp.int32(max_iter),
                                 **{**static, "history_size": int(max_iter)})
    # Units padded to their size class with units of weight 0 (they enter no sum): fleets of
    # nearby sizes share one program. Random starts draw per unit, so they run unpadded.
    n_units = size_class(L) if init == "kmeans" or params_init is not None else L
    w = None
    if n_units > L:
        data, w = _pad_units(data, n_units)
    options = _xla.compiler_options("failure_mode", n_units * C * int(n_components) * p * p)
    res = _fit_compiled.call(options, (data, key, *args, w, np.int32(max_iter)), static,
                             "failure_mode")
    if n_units == L and static["history_size"] == max_iter:
        return res
    # Drop the padding units and history entries on the host (slicing device arrays would
    # compile a small program per shape).
    res = jax.tree_util.tree_map(np.asarray, res).first_iterations(max_iter)
    return jax.device_put(res._replace(responsibilities=res.responsibilities[:L]))


def _pad_units(data: FMMData, n_units: int) -> tuple[FMMData, np.ndarray]:
    """``data`` with units of no observation appended up to ``n_units`` (NumPy leaves: padding
    on the device would compile a program per shape), and the unit weights (1, then 0)."""
    L = data.n.shape[0]

    def pad(a):
        a = np.asarray(a)
        return np.concatenate([a, np.zeros((n_units - L,) + a.shape[1:], a.dtype)])

    padded = FMMData(*(pad(a) for a in data[:-1]), np.asarray(data.t_scale))
    w = np.concatenate([np.ones(L, data.x.dtype), np.zeros(n_units - L, data.x.dtype)])
    return padded, w


# --------------------------------------------------------------------------------------------
# Using a fitted model
# --------------------------------------------------------------------------------------------


def pad_to_classes(data: FMMData) -> FMMData:
    """``data`` (NumPy leaves) with units of no observation appended up to the units' size class
    and unobserved slots up to the observations' (:func:`emjax._sizes.size_class`): both enter
    no statistic, so units of nearby shapes share one compiled program."""
    L, N = data.tau.shape
    n_units, n_obs = size_class(L), size_class(N)

    def pad(a, obs_axis):
        a = np.asarray(a)
        widths = [(0, n_units - L)] + [(0, 0)] * (a.ndim - 1)
        if obs_axis is not None:
            widths[obs_axis] = (0, n_obs - N)
        return np.pad(a, widths)

    return FMMData(pad(data.tau, 1), pad(data.x, 2), pad(data.obs, 2), pad(data.design, 1),
                   pad(data.A, None), pad(data.b, None), pad(data.n, None),
                   np.asarray(data.t_scale))


@jax.jit
def _log_resp_compiled(params, data):
    return posterior(params, data).log_resp


def log_responsibilities(params: FMMParams, data: FMMData):
    """``(L, K)`` log mode probabilities: in a trace, :func:`posterior`'s; on concrete data, a
    NumPy array from one compiled program per size class (:func:`pad_to_classes`)."""
    if v.is_traced(params, data):
        return posterior(params, data).log_resp
    return np.asarray(_log_resp_compiled(params, pad_to_classes(data)))[:data.tau.shape[0]]


def predict_proba(params: FMMParams, data: FMMData) -> Array:
    """Failure-mode probabilities ``(L, K)`` from whatever data each unit has (partial is fine)."""
    lr = log_responsibilities(params, data)
    return jnp.exp(lr) if v.is_traced(lr) else jax.device_put(np.exp(lr))


def predict(params: FMMParams, data: FMMData) -> Array:
    """Most probable failure mode ``(L,)``."""
    lr = log_responsibilities(params, data)
    return jnp.argmax(lr, axis=1) if v.is_traced(lr) else jax.device_put(np.argmax(lr, axis=1))


class PathPrediction(NamedTuple):
    """Predictive distribution of each channel's path (a pytree).

    Attributes:
      mean, var: ``(L, C, T)`` mean and variance of the mixture over modes (observation noise
        included).
      mode_mean, mode_var: ``(L, C, K, T)`` per-mode Gaussian predictive mean and variance.
      proba: ``(L, K)`` mode probabilities.
    """

    mean: Array
    var: Array
    mode_mean: Array
    mode_var: Array
    proba: Array


_basis_values = jax.jit(lambda tau, *, basis: basis(tau), static_argnames=("basis",))


def _check_basis(basis: Basis, data: FMMData) -> None:
    """Predicting with another basis than the one the data were prepared with is a user error:
    caught by size always, and by value when the data are concrete (not traced under jit)."""
    if not isinstance(basis, Basis):
        raise ValueError(f"basis must be a Basis, got {type(basis).__name__}")
    if basis.size != data.design.shape[-1]:
        raise ValueError(f"basis {basis} has {basis.size} functions but the data were prepared "
                         f"with {data.design.shape[-1]} (design {data.design.shape}): pass the "
                         "basis the data were made with (a PrognosticModel carries it)")
    if isinstance(data.tau, jax.core.Tracer) or isinstance(data.design, jax.core.Tracer):
        return
    tau, design = np.asarray(data.tau), np.asarray(data.design)
    L, N = tau.shape
    # compiled on tau padded to its size classes (op by op it would compile per shape)
    grown = np.pad(tau, ((0, size_class(L) - L), (0, size_class(N) - N)))
    again = np.asarray(_basis_values(grown, basis=basis), design.dtype)[:L, :N]
    tol = 1e-4 if design.dtype == np.float32 else 1e-9
    if not np.allclose(again, design, rtol=tol, atol=tol):
        raise ValueError(f"basis {basis} is not the basis the data were prepared with (same size "
                         f"{basis.size}, other values): pass that basis (a PrognosticModel "
                         "carries it)")


def _check_channel(channel, data: FMMData) -> None:
    """``channel`` indexes one of the data's channels: past the end, JAX's indexing would clamp
    it to the last channel and answer for that one, silently."""
    C = data.x.shape[1]
    if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)) \
            or not -C <= channel < C:
        raise ValueError(f"channel must be an int in [-{C}, {C}) for data with {C} channels "
                         f"(x of shape {data.x.shape}); got {channel!r}")


def predict_path(params: FMMParams, data: FMMData, times: Array, *, basis: Basis,
                 include_noise: bool = True) -> PathPrediction:
    """Predictive path of every channel at ``times`` (``(T,)`` or ``(L, T)``).

    ``times`` are in the data's original time units: they are divided by ``data.t_scale``
    inside. ``basis`` must be the one ``data`` was prepared with (checked by size).

    Per mode ``N(phi(t)^T m_lck, phi(t)^T P_lck phi(t) + s2_ck)``, mixed with the unit's mode
    probabilities (docs/failure_mode.md, "in-service unit").
    """
    _check_basis(basis, data)
    L = data.n.shape[0]
    if len(np.shape(times)) not in (1, 2) or len(np.shape(times)) == 2 \
            and np.shape(times)[0] != L:
        raise ValueError(f"times must be (T,) or (L, T) with L = {L} units; got shape "
                         f"{np.shape(times)}")
    if not v.is_traced(params, data, times):
        if not np.all(np.isfinite(times)):
            raise ValueError(f"times must be finite; got {np.asarray(times)}")
        L, Lp, padded = _padded(data)
        times = np.asarray(times, data.x.dtype)
        if times.ndim == 2:
            times = np.pad(times, ((0, Lp - L), (0, 0)), mode="edge")
        return first_rows(_compiled["path"](params, padded, times, basis=basis,
                                            include_noise=include_noise), L)
    return _predict_path(params, data, times, basis=basis, include_noise=include_noise)


def _predict_path(params, data, times, *, basis, include_noise):
    post = posterior(params, data)
    L = data.n.shape[0]
    times = jnp.asarray(times, data.x.dtype)
    times = jnp.broadcast_to(times, (L,) + times.shape[-1:])
    phi = basis(times / data.t_scale).astype(data.x.dtype)  # (L, T, p)
    mode_mean = jnp.einsum("ltp,lckp->lckt", phi, post.coef_mean)
    mode_var = jnp.einsum("ltp,lckpq,ltq->lckt", phi, post.coef_cov, phi)
    if include_noise:
        mode_var = mode_var + params.noise_var[None, ..., None]
    g = jnp.exp(post.log_resp)[:, None, :, None]
    mean = jnp.sum(g * mode_mean, 2)
    var = jnp.sum(g * (mode_var + mode_mean**2), 2) - mean**2
    return PathPrediction(mean, jnp.maximum(var, 0.0), mode_mean, mode_var,
                          jnp.exp(post.log_resp))


def _rul_grid(data, t_now, horizon, n_grid):
    """``(t_now (L,), grid (L, n_grid))``: ``n_grid`` equal steps in ``(t_now, horizon]``, per
    unit (``t_now`` and ``horizon`` are ``()`` or ``(L,)``, original time units)."""
    L = data.n.shape[0]
    t_now = jnp.broadcast_to(jnp.asarray(t_now, data.x.dtype), (L,))
    horizon = jnp.broadcast_to(jnp.asarray(horizon, data.x.dtype), (L,))
    frac = jnp.linspace(0.0, 1.0, n_grid + 1, dtype=data.x.dtype)[1:]
    return t_now, t_now[:, None] + frac[None] * (horizon - t_now)[:, None]  # (L, G)


def failure_time_samples(key: Array, params: FMMParams, data: FMMData, t_now, *, basis: Basis,
                         threshold: float, horizon, channel: int = -1,
                         n_samples: int = 1000, n_grid: int = 200) -> Array:
    """Monte Carlo failure times ``(L, n_samples)``: ``k ~ gamma``, ``T ~ N(m, P)`` of
    ``channel`` (default the last, ``y``), then the first grid time in ``(t_now, horizon]``
    with ``phi(t)^T T >= threshold``; ``inf`` where the path does not cross by ``horizon``.

    Only the random effects and the mode are sampled (a fixed ``threshold`` on the latent
    path): :class:`~emjax.failure_mode.prognostics.PrognosticModel` adds the spread of the
    failure level and the observation noise.

    Args:
      key: a PRNG key (or, outside a trace, an int seed).
      t_now: ``()`` or ``(L,)`` current times in original time units (the data should stop
        there).
      threshold: failure level, in the units of the data's channel (as prepared).
      horizon: ``()`` or ``(L,)`` end of the search grid, original time units.
      n_grid: grid points between ``t_now`` and ``horizon``: the answer's resolution is
        ``(horizon - t_now) / n_grid``.
    """
    _check_basis(basis, data)
    _check_channel(channel, data)
    return _unit_call("samples", (key,), params, data, t_now, horizon, threshold, basis=basis,
                      channel=channel, n_samples=n_samples, n_grid=n_grid)


def _failure_time_samples(key, params, data, t_now, horizon, threshold, *, basis, channel,
                          n_samples, n_grid):
    post = posterior(params, data)
    t_now, grid = _rul_grid(data, t_now, horizon, n_grid)
    phi = basis(grid / data.t_scale).astype(data.x.dtype)  # (L, G, p)
    L, K = post.log_resp.shape
    p = phi.shape[-1]
    k1, k2 = jax.random.split(key)
    modes = jax.random.categorical(k1, post.log_resp[:, None, :], axis=-1,
                                   shape=(L, n_samples))  # (L, S)
    m = jnp.take_along_axis(post.coef_mean[:, channel], modes[..., None], axis=1)  # (L, S, p)
    P = post.coef_cov[:, channel]  # (L, K, p, p)
    jit = 1e-12 * jnp.eye(p, dtype=P.dtype)
    chol = jnp.linalg.cholesky(P + jit)
    chol_s = jnp.take_along_axis(chol, modes[..., None, None], axis=1)  # (L, S, p, p)
    eps = jax.random.normal(k2, (L, n_samples, p), data.x.dtype)
    coef = m + jnp.einsum("lspq,lsq->lsp", chol_s, eps)
    path = jnp.einsum("lgp,lsp->lsg", phi, coef)
    crossed = path >= threshold
    first = jnp.argmax(crossed, axis=-1)
    t_fail = jnp.take_along_axis(grid[:, None, :], first[..., None], axis=-1)[..., 0]
    return jnp.where(jnp.any(crossed, -1), t_fail, jnp.inf)


def failure_cdf(params: FMMParams, data: FMMData, t_now, *, basis: Basis, threshold: float,
                horizon, channel: int = -1, n_grid: int = 1000) -> tuple[Array, Array]:
    """Closed-form approximation (monotone paths) ``P(T_f <= t)`` on a grid:
    ``sum_k gamma_k [1 - Phi((D - phi^T m) / sqrt(phi^T P phi))]``, its running maximum over
    the grid (non-decreasing: a path that crossed and turned back has failed).

    A fixed ``threshold`` on the latent path, not conditioned on survival up to ``t_now``: see
    :class:`~emjax.failure_mode.prognostics.PrognosticModel` for calibrated failure-time
    distributions.

    Args:
      t_now, horizon: ``()`` or ``(L,)``, original time units (divided by ``data.t_scale``
        inside).

    Returns:
      ``(grid, cdf)``, both ``(L, n_grid)``; ``grid`` in original time units.
    """
    _check_basis(basis, data)
    _check_channel(channel, data)
    return _unit_call("cdf", (), params, data, t_now, horizon, threshold, basis=basis,
                      channel=channel, n_grid=n_grid)


def _failure_cdf(params, data, t_now, horizon, threshold, *, basis, channel, n_grid):
    post = posterior(params, data)
    t_now, grid = _rul_grid(data, t_now, horizon, n_grid)
    phi = basis(grid / data.t_scale).astype(data.x.dtype)
    mean = jnp.einsum("lgp,lkp->lkg", phi, post.coef_mean[:, channel])
    var = jnp.einsum("lgp,lkpq,lgq->lkg", phi, post.coef_cov[:, channel], phi)
    z = (threshold - mean) / jnp.sqrt(jnp.maximum(var, 1e-30))
    cdf = jnp.sum(jnp.exp(post.log_resp)[..., None] * jax.scipy.stats.norm.sf(z), 1)
    # a path that turns back stays failed (first passage, as the samples and rul_point count)
    return grid, jax.lax.cummax(cdf, axis=1)


def rul_point(params: FMMParams, data: FMMData, t_now, *, basis: Basis, threshold: float,
              horizon, channel: int = -1, n_grid: int = 1000) -> Array:
    """Median remaining useful life ``(L,)`` from :func:`failure_cdf`: the first grid time
    with CDF >= 1/2, minus ``t_now``; ``inf`` when the median lies beyond ``horizon``.

    ``t_now`` and ``horizon`` (``()`` or ``(L,)``) and the returned remaining life are in the
    data's original time units (``data.t_scale`` is applied inside); the resolution is
    ``(horizon - t_now) / n_grid``. For quantiles and intervals that include the spread of the
    failure level and the observation noise, use
    :class:`~emjax.failure_mode.prognostics.PrognosticModel`.
    """
    _check_basis(basis, data)
    _check_channel(channel, data)
    return _unit_call("rul", (), params, data, t_now, horizon, threshold, basis=basis,
                      channel=channel, n_grid=n_grid)


def _rul_point(params, data, t_now, horizon, threshold, *, basis, channel, n_grid):
    grid, cdf = _failure_cdf(params, data, t_now, horizon, threshold, basis=basis,
                             channel=channel, n_grid=n_grid)
    t_now = jnp.broadcast_to(jnp.asarray(t_now, data.x.dtype), grid.shape[:1])
    hit = cdf >= 0.5
    t = jnp.take_along_axis(grid, jnp.argmax(hit, -1)[:, None], -1)[:, 0]
    return jnp.where(jnp.any(hit, -1), t - t_now, jnp.inf)


# On concrete data the functions above run compiled, on units and observations padded to their
# size classes (pad_to_classes), and cut on the host: op by op, every operation would compile
# for every new shape (1.5-3.5 s a call).


def _padded(data: FMMData) -> tuple[int, int, FMMData]:
    padded = pad_to_classes(data)
    return data.n.shape[0], padded.n.shape[0], padded


def per_unit(a, data: FMMData, n_units: int, name: str = "t_now") -> np.ndarray:
    """A ``()`` or ``(L,)`` per-unit value (checked: :func:`emjax._validation.check_per_unit`),
    ``(n_units,)``: the padding units repeat the last unit's (finite, in order)."""
    a = v.check_per_unit(a, data.n.shape[0], name, data.x.dtype)
    return np.pad(a, (0, n_units - a.shape[0]), mode="edge")


def check_horizon(t_now: np.ndarray, horizon: np.ndarray) -> None:
    """Every unit's ``horizon`` later than its ``t_now`` (``(L,)`` each): a grid running
    backwards would give negative remaining lives."""
    late = np.flatnonzero(~(horizon > t_now))
    if late.size:
        i = late[0]
        raise ValueError(f"horizon must be later than t_now for every unit; unit {i} has "
                         f"t_now {t_now[i]} and horizon {horizon[i]}")


def _unit_call(name: str, lead: tuple, params, data, t_now, horizon, threshold, **static):
    """``impl(*lead, params, data, t_now, horizon, threshold, **static)`` of the function
    ``name``: in a trace as it is; on concrete data compiled on the padded units, cut to
    ``L``."""
    if v.is_traced(*lead, params, data, t_now, horizon, threshold):
        return _IMPLS[name](*lead, params, data, t_now, horizon, threshold, **static)
    for arg in ("n_grid", "n_samples"):
        if arg in static:
            v.check_positive_int(static[arg], arg)
    lead = tuple(v.as_key(k) for k in lead)  # an int seed outside a trace, as emjax.sample
    L, Lp, padded = _padded(data)
    t_now, horizon = per_unit(t_now, data, Lp), per_unit(horizon, data, Lp, "horizon")
    check_horizon(t_now, horizon)
    return first_rows(_compiled[name](*lead, params, padded, t_now, horizon,
                                      np.asarray(threshold, data.x.dtype), **static), L)


_IMPLS = {"samples": _failure_time_samples, "cdf": _failure_cdf, "rul": _rul_point}
_compiled = {
    "path": jax.jit(_predict_path, static_argnames=("basis", "include_noise")),
    "samples": jax.jit(_failure_time_samples,
                       static_argnames=("basis", "channel", "n_samples", "n_grid")),
    "cdf": jax.jit(_failure_cdf, static_argnames=("basis", "channel", "n_grid")),
    "rul": jax.jit(_rul_point, static_argnames=("basis", "channel", "n_grid")),
}


# --------------------------------------------------------------------------------------------
# Evaluation against ground truth
# --------------------------------------------------------------------------------------------


def match_labels(true_labels, pred_labels, n_components: int | None = None):
    """Best one-to-one relabelling of ``pred_labels`` by brute force over permutations.

    Args:
      true_labels, pred_labels: ``(L,)`` integer labels in ``[0, K)``.
      n_components: ``K`` (default: one more than the largest label); at most 8.

    Returns:
      ``(perm, accuracy)``: ``perm[k_pred] = k_true`` maximising agreement, and that agreement.
    """
    t = np.asarray(true_labels).astype(int)
    q = np.asarray(pred_labels).astype(int)
    if t.shape != q.shape or t.ndim != 1:
        raise ValueError(f"labels must be two (L,) arrays, got {t.shape} and {q.shape}")
    K = int(max(t.max(initial=0), q.max(initial=0)) + 1) if n_components is None else n_components
    if K > 8:
        raise ValueError(f"brute-force label matching is for K <= 8, got K={K} (use Hungarian)")
    conf = np.zeros((K, K), int)
    np.add.at(conf, (q, t), 1)
    best, best_perm = -1, None
    for perm in itertools.permutations(range(K)):
        s = int(conf[np.arange(K), perm].sum())
        if s > best:
            best, best_perm = s, perm
    return np.asarray(best_perm), best / max(len(t), 1)


class ModeMatch(NamedTuple):
    """Result of :func:`match_modes`: the mapping in both directions, named.

    Attributes:
      fitted_to_true: ``(K,)`` ``fitted_to_true[k_fitted] = k_true``.
      true_to_fitted: ``(K,)`` the inverse, ``true_to_fitted[k_true] = k_fitted``.
      accuracy: fraction of units whose mapped fitted label equals the true one.
    """

    fitted_to_true: np.ndarray
    true_to_fitted: np.ndarray
    accuracy: float


def match_modes(true_labels, fitted_labels, n_components: int | None = None) -> ModeMatch:
    """Best one-to-one relabelling of fitted modes onto true ones (brute force, ``K <= 8``).

    Use ``result.fitted_to_true[pred]`` to express predictions in true labels, and
    ``permute_modes(params, result.fitted_to_true)`` to reorder fitted parameters into the true
    modes' order.
    """
    perm, acc = match_labels(true_labels, fitted_labels, n_components)
    return ModeMatch(perm, np.argsort(perm), acc)


def permute_modes(params: FMMParams, perm) -> FMMParams:
    """Reorder modes so that new mode ``perm[k]`` is old mode ``k`` (``perm`` from
    :func:`match_labels`)."""
    inv = np.argsort(np.asarray(perm))
    return FMMParams(params.weights[inv], params.means[:, inv], params.covs[:, inv],
                     params.noise_var[:, inv])


__all__ = [
    "QUADRATIC", "Basis", "FMMData", "FMMFitResult", "FMMParams", "FMMPosterior", "ModeMatch",
    "PathPrediction", "Prior",
    "bic", "bspline_basis", "data_from_arrays", "e_step", "failure_cdf", "failure_time_samples",
    "fit", "icl", "init_params", "log_prior", "log_responsibilities", "m_step", "make_data",
    "make_model", "match_labels", "match_modes",
    "n_parameters", "pad_to_classes", "per_unit", "permute_modes", "polynomial_basis",
    "posterior", "predict", "predict_path",
    "predict_proba", "q_function", "ridge_coefficients", "rul_point",
]
