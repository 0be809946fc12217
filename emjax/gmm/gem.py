"""Generalised EM: an M-step that maximises Q with an optax optimiser instead of a closed form.

For a Gaussian mixture the closed form exists (and the tests check this path reaches it); the
point is the recipe, which needs only a differentiable Q and an unconstrained parametrisation:
softmax logits for the weights, free means, and precision Cholesky factors with an ``exp``
diagonal. Each M-step is warm-started at the current parameters (L-BFGS by default, any optax
transformation allowed) and accepted only if Q does not decrease, so the observed
log-likelihood never falls (the EM bound of seed 001).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.linalg import solve_triangular

from emjax import _sizes, _xla, em
from emjax import _validation as v
from emjax._linalg import after, diagonal
from emjax.gmm import GMMParams, fitting, steps
from emjax.gmm import covariance as cov_lib
from emjax.gmm import reseed as reseed_lib
from emjax.gmm.options import check_fit

Array = jax.Array

__all__ = [
    "GMMUnconstrained",
    "default_optimizer",
    "expected_log_likelihood",
    "fit_gem",
    "from_unconstrained",
    "make_gem_model",
    "maximise",
    "optax_m_step",
    "to_unconstrained",
]


class GMMUnconstrained(NamedTuple):
    """Unconstrained coordinates of a mixture (a pytree).

    Attributes:
      logits: ``(n_components,)``; ``weights = softmax(logits)``.
      means: ``(n_components, n_features)``.
      chol: the precision Cholesky factor with ``log`` of its diagonal: full ``(K, D, D)`` and
        tied ``(D, D)`` (upper triangle used, diagonal exponentiated); diag ``(K, D)`` and
        spherical ``(K,)`` (``precisions_cholesky = exp(chol)``).
    """

    logits: Array
    means: Array
    chol: Array


def _is_matrix(covariance_type: str) -> bool:
    return covariance_type in ("full", "tied")


def _tri_exp_diag(raw: Array) -> Array:
    """Upper-triangular factor from raw entries: strict upper triangle kept, diagonal exp'ed."""
    diag = diagonal(raw)
    eye = jnp.eye(raw.shape[-1], dtype=raw.dtype)
    return jnp.triu(raw, 1) + jnp.exp(diag)[..., None] * eye


def _tri_log_diag(u: Array) -> Array:
    diag = diagonal(u)
    eye = jnp.eye(u.shape[-1], dtype=u.dtype)
    return jnp.triu(u, 1) + jnp.log(diag)[..., None] * eye


def to_unconstrained(params: GMMParams) -> GMMUnconstrained:
    """The unconstrained coordinates of ``params`` (inverse of :func:`from_unconstrained`)."""
    pc = params.covariance.precisions_cholesky
    ctype = params.covariance_type
    chol = _tri_log_diag(pc) if _is_matrix(ctype) else jnp.log(pc)
    return GMMUnconstrained(jnp.log(params.weights), params.means, chol)


def from_unconstrained(u: GMMUnconstrained, covariance_type: str) -> GMMParams:
    """Mixture parameters from unconstrained coordinates (valid for every real input)."""
    raw = u.chol
    pc = _tri_exp_diag(raw) if _is_matrix(covariance_type) else jnp.exp(raw)
    cov = cov_lib.from_precisions_cholesky(covariance_type, pc)
    return GMMParams(jax.nn.softmax(u.logits), u.means, cov)


def expected_log_likelihood(
    params: GMMParams,
    gamma: Array,
    X: Array,
    sample_weight: Array | None = None,
    *,
    reg_covar: float = 0.0,
) -> Array:
    """Q of :func:`emjax.gmm.objective.complete_data_log_likelihood`, through the fast paths.

    Uses the precision Cholesky factors (:func:`emjax.gmm.component_log_prob`) and
    ``tr(Sigma_k^{-1}) = ||U_k||_F^2``, so no matrix is inverted; this is what the optax M-step
    differentiates. The dense module is its independent reference in the tests.
    """
    wg = gamma if sample_weight is None else gamma * sample_weight[:, None]
    q = jnp.sum(wg * steps.weighted_log_prob(params, X))
    if reg_covar:
        pc = params.covariance.precisions_cholesky
        ctype = params.covariance_type
        nk = jnp.sum(wg, axis=0)
        if ctype == "full":
            tr_prec = jnp.sum(nk * jnp.sum(pc * pc, axis=(-1, -2)))
        elif ctype == "tied":
            tr_prec = jnp.sum(nk) * jnp.sum(pc * pc)
        elif ctype == "diag":
            tr_prec = jnp.sum(nk * jnp.sum(pc * pc, axis=-1))
        else:
            tr_prec = X.shape[-1] * jnp.sum(nk * pc * pc)
        q = q - 0.5 * reg_covar * tr_prec
    return q


def maximise(
    objective: Callable[[Any], Array],
    u0: Any,
    *,
    optimizer: optax.GradientTransformation,
    n_steps: int,
) -> tuple[Any, Array]:
    """Maximise ``objective`` from ``u0`` with ``n_steps`` optax updates (one ``lax.scan``).

    Returns the best iterate seen (not necessarily the last: Adam may overshoot) and its value.
    Non-finite values never count as best. Line-search methods such as ``optax.lbfgs`` get the
    ``value``, ``grad`` and ``value_fn`` extra arguments they need.
    """
    loss = lambda u: -objective(u)
    value_and_grad = jax.value_and_grad(loss)
    # Line-search optimisers (optax.lbfgs) need the loss; others ignore the extra arguments.
    optimizer = optax.with_extra_args_support(optimizer)

    def step(carry, _):
        u, state, best_u, best_v = carry
        neg_value, neg_grad = value_and_grad(u)
        value = -neg_value
        better = jnp.isfinite(value) & (value > best_v)
        best_u = jax.tree_util.tree_map(lambda a, b: jnp.where(better, a, b), u, best_u)
        best_v = jnp.where(better, value, best_v)
        updates, state = optimizer.update(neg_grad, state, u, value=neg_value, grad=neg_grad,
                                          value_fn=loss)
        return (optax.apply_updates(u, updates), state, best_u, best_v), value

    v0 = objective(u0)
    v0 = jnp.where(jnp.isfinite(v0), v0, -jnp.inf)
    carry = (u0, optimizer.init(u0), u0, v0)
    (u, _, best_u, best_v), _ = jax.lax.scan(step, carry, None, length=n_steps)
    v_last = objective(u)
    better = jnp.isfinite(v_last) & (v_last > best_v)
    best_u = jax.tree_util.tree_map(lambda a, b: jnp.where(better, a, b), u, best_u)
    return best_u, jnp.where(better, v_last, best_v)


def _relative_to_params(u: GMMUnconstrained, ref: GMMParams, covariance_type: str) -> GMMParams:
    """Parameters at coordinates ``u`` *relative to* ``ref``: ``u = 0`` (and ``logits = log
    ref.weights``) gives ``ref``; means move in ``ref``'s whitened units and the precision
    Cholesky factor is ``U_ref @ T(u.chol)``. This affine change of variables makes optax step
    sizes independent of the data's scale (and the warm start the natural origin)."""
    pc0 = ref.covariance.precisions_cholesky
    if covariance_type == "full":
        # mu = mu0 + U0^{-T} v  (so (mu - mu0)^T Sigma0^{-1} (mu - mu0) = |v|^2)
        delta = jax.vmap(lambda a, b: solve_triangular(a, b, trans=1, lower=False))(pc0, u.means)
        pc = pc0 @ _tri_exp_diag(u.chol)
    elif covariance_type == "tied":
        delta = solve_triangular(pc0, u.means.T, trans=1, lower=False).T
        pc = pc0 @ _tri_exp_diag(u.chol)
    elif covariance_type == "diag":
        delta = u.means / pc0
        pc = pc0 * jnp.exp(u.chol)
    else:
        delta = u.means / pc0[:, None]
        pc = pc0 * jnp.exp(u.chol)
    # the factor's solve after the means' solve, not beside it (emjax._linalg)
    cov = cov_lib.from_precisions_cholesky(covariance_type, after(pc, delta))
    return GMMParams(jax.nn.softmax(u.logits), ref.means + delta, cov)


def _relative_origin(ref: GMMParams) -> GMMUnconstrained:
    pc0 = ref.covariance.precisions_cholesky
    return GMMUnconstrained(jnp.log(ref.weights), jnp.zeros_like(ref.means), jnp.zeros_like(pc0))


def optax_m_step(
    gamma: Array,
    X: Array,
    params0: GMMParams,
    *,
    reg_covar: float = 1e-6,
    sample_weight: Array | None = None,
    optimizer: optax.GradientTransformation | None = None,
    n_steps: int = 10,
) -> GMMParams:
    """A generalised M-step: maximise Q by ``n_steps`` optax updates, warm-started at
    ``params0``, and keep ``params0`` unless Q increased.

    The objective is ``Q / N`` with ``Q`` from :func:`expected_log_likelihood` (with the
    ``reg_covar`` term whose exact maximiser is :func:`emjax.gmm.m_step`'s regularised closed
    form). The acceptance test uses Q *without* the regularisation term, so the observed
    log-likelihood cannot fall (``Q`` up, hence ``log p(X)`` up); non-finite candidates are
    rejected too.

    Args:
      gamma: ``(n_samples, n_components)`` responsibilities from the E-step at ``params0``.
      X: ``(n_samples, n_features)``.
      params0: the current parameters (warm start and fall-back); its covariance type is used.
      reg_covar: static ``r`` of the regularised objective.
      sample_weight: optional ``(n_samples,)`` weights.
      optimizer: an optax transformation (default ``optax.lbfgs()``); static.
        A first-order method with a fixed step (e.g. Adam) works too but needs many more steps
        near convergence, where its normalised steps overshoot a warm start that is already
        close (the M-step then keeps ``params0`` and EM stops early).
      n_steps: static number of optimiser updates.

    Returns:
      :class:`~emjax.gmm.GMMParams` of ``params0``'s covariance type.
    """
    optimizer = _check_optimizer(optimizer)
    ctype = params0.covariance_type
    n_total = X.shape[0] if sample_weight is None else jnp.sum(sample_weight)
    gamma = jax.lax.stop_gradient(gamma)

    def objective(u):
        p = _relative_to_params(u, params0, ctype)
        q = expected_log_likelihood(p, gamma, X, sample_weight, reg_covar=reg_covar)
        return q / n_total

    u, _ = maximise(objective, _relative_origin(params0), optimizer=optimizer, n_steps=n_steps)
    new = _relative_to_params(u, params0, ctype)
    q_new = expected_log_likelihood(new, gamma, X, sample_weight)
    q_old = expected_log_likelihood(params0, gamma, X, sample_weight)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree_util.tree_leaves(new)]))
    accept = finite & jnp.isfinite(q_new) & (q_new >= q_old)
    return jax.tree_util.tree_map(lambda a, b: jnp.where(accept, a, b), new, params0)


def make_gem_model(
    covariance_type: str,
    reg_covar: float = 1e-6,
    *,
    optimizer: optax.GradientTransformation | None = None,
    n_steps: int = 10,
):
    """``(e_step, m_step, repair)`` for :func:`emjax.em.run` over ``data = (X, w)``, with the
    optax M-step in place of the closed form.

    The E-step's statistics carry the current parameters (``(log_resp, ll, params)``) because a
    warm-started M-step needs them; ``repair`` is the closed-form model's re-seeding of empty
    components (:func:`emjax.gmm.reseed.dense_repair`).
    """
    base_repair = reseed_lib.dense_repair(covariance_type)

    def e_step(params, data):
        X, w = data
        log_resp, ll = steps.e_step_full(params, X)
        mean_ll = jnp.mean(ll) if w is None else jnp.sum(w * ll) / jnp.sum(w)
        return (log_resp, ll, params), mean_ll

    def m_step(estats, data):
        X, w = data
        log_resp, _, params = estats
        return optax_m_step(jnp.exp(log_resp), X, params, reg_covar=reg_covar, sample_weight=w,
                            optimizer=optimizer, n_steps=n_steps)

    def repair(params, estats, data):
        return base_repair(params, estats[:2], data)

    return e_step, m_step, repair


def _fit_gem_program(X, key, sample_weight, tol, max_iter=None, *, options, optimizer, n_steps):
    # options.max_iter is the history length; a traced max_iter (<= it) stops the loop.
    n_components, covariance_type, init_method, reg_covar, history_size, n_init, n_lloyd = options
    if max_iter is None:
        max_iter = history_size
    w = sample_weight
    shift = fitting.weighted_mean(X, w)
    Xc = X - shift

    def initial(k):
        return fitting.init_params(k, Xc, n_components, covariance_type=covariance_type,
                                   reg_covar=reg_covar, init_params=init_method, sample_weight=w,
                                   n_lloyd=n_lloyd)

    params0 = jax.vmap(initial)(jax.random.split(key, n_init))
    e_step, m_step, repair = make_gem_model(covariance_type, reg_covar, optimizer=optimizer,
                                            n_steps=n_steps)
    res = em.run_restarts(e_step, m_step, params0, (Xc, w), tol=tol, max_iter=max_iter,
                          repair=repair, history_size=history_size)
    res = steps.uncentre(res, shift)
    return em.best_restart(res)


#: The compiled generalised-EM fit, one per set of XLA options
#: (:func:`emjax._xla.compiler_options`).
_fit_gem_compiled = _xla.JitByOptions(_fit_gem_program,
                                      static_argnames=("options", "optimizer", "n_steps"))


def _check_optimizer(optimizer) -> optax.GradientTransformation:
    """``optimizer``, or :func:`default_optimizer` for None; anything without optax's ``init``
    and ``update`` is a ``ValueError`` (it would fail deep inside the trace)."""
    if optimizer is None:
        return default_optimizer()
    if not (callable(getattr(optimizer, "init", None))
            and callable(getattr(optimizer, "update", None))):
        raise ValueError("optimizer must be an optax.GradientTransformation (e.g. "
                         f"optax.lbfgs() or optax.adam(1e-2)); got {optimizer!r}")
    return optimizer


@functools.lru_cache(maxsize=1)
def default_optimizer() -> optax.GradientTransformation:
    """``optax.lbfgs()``, one shared object so repeated fits hit jit's cache (it is static)."""
    return optax.lbfgs()


def fit_gem(
    X,
    n_components: int,
    *,
    key: Array | None = None,
    covariance_type: str = "full",
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    max_iter: int = 100,
    n_init: int = 1,
    init_params: str = "kmeans",
    sample_weight=None,
    optimizer: optax.GradientTransformation | None = None,
    n_steps: int = 10,
) -> fitting.FitResult:
    """Fit a Gaussian mixture by generalised EM (optax M-step) in one compiled program.

    Same initialisation, restarts, convergence rule and result as :func:`emjax.fit`; only the
    M-step differs (see :func:`optax_m_step`). Useful as a template for component families
    without a closed-form M-step, and as a check of the closed form.

    Args:
      X: ``(n_samples, n_features)``.
      n_components, key, covariance_type, tol, reg_covar, max_iter, n_init, init_params,
        sample_weight: as in :func:`emjax.fit`.
      optimizer: an optax transformation (static; pass the same object to reuse the compiled
        program); default :func:`default_optimizer` (``optax.lbfgs()``).
      n_steps: optimiser updates per M-step.

    Returns:
      :class:`emjax.gmm.fitting.FitResult`.

    Raises:
      ValueError: as :func:`emjax.fit`, and for ``n_steps < 1``.

    Examples:
      >>> import jax, numpy as np, emjax
      >>> X = np.random.default_rng(0).normal(size=(200, 2)).astype(np.float32)
      >>> res = emjax.fit_gem(X, 2, key=jax.random.key(0), max_iter=20)
      >>> res.params.means.shape
      (2, 2)
    """
    c = check_fit(X, n_components, key=key, covariance_type=covariance_type, tol=tol,
                  reg_covar=reg_covar, max_iter=max_iter, n_init=n_init, init_params=init_params,
                  sample_weight=sample_weight)
    n_steps = v.check_positive_int(n_steps, "n_steps")
    optimizer = _check_optimizer(optimizer)
    Xa, w = c.X, c.sample_weight
    n, max_iter = Xa.shape[0], c.options.max_iter
    # Rows up to their size class (zero-weight copies of the first row) and the history up to
    # its class, max_iter an argument: fits of nearby sizes and lengths share one program.
    n_rows = _sizes.padded_rows(n, Xa.nbytes // n)
    if n_rows is not None:
        Xa, w = _sizes.pad_rows(Xa, w, n_rows)
    o = c.options._replace(max_iter=_sizes.history_class(max_iter))
    options = _xla.compiler_options("gem", Xa.shape[0] * Xa.shape[1] * o.n_components)
    # NumPy arguments go to the device with the call (converting them first compiles per shape)
    res = _fit_gem_compiled[options](Xa, c.key, w, np.asarray(c.tol, Xa.dtype),
                                     np.int32(max_iter), options=o, optimizer=optimizer,
                                     n_steps=n_steps)
    return res.with_max_iter(max_iter)  # the history past max_iter dropped on the host
