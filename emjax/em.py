"""The generic EM driver: one ``jax.lax.while_loop`` per fit and ``jax.vmap`` over restarts.

The driver knows a model only through three pure functions::

    e_step(params, data) -> (estats, log_likelihood)   # log_likelihood: a scalar to monitor
    m_step(estats, data) -> params                      # or Flagged(params, status bits)
    repair(params, estats, data) -> (params, flags)    # optional: re-seed degenerate parts

``data`` is any pytree (e.g. ``(X, sample_weight)``); it is closed over by the loop body, never
carried in the loop state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array

# Status bits (an int32 per fit; 0 means nothing degenerated).
STATUS_OK = 0
STATUS_RESEEDED = 1  # a component emptied or collapsed and was re-seeded inside the loop
STATUS_NONFINITE = 2  # a step produced NaN/inf; the fit stopped at the last finite parameters
STATUS_DECREASED = 4  # the monitored log-likelihood fell by more than round-off (not a re-seed)
STATUS_REGULARISED = 8  # a covariance was not positive definite in the working precision and was
#                         factorised with a jitter on its diagonal (stored with it)

STATUS_NAMES = {
    STATUS_RESEEDED: "reseeded",
    STATUS_NONFINITE: "non-finite step (stopped at last finite parameters)",
    STATUS_DECREASED: "log-likelihood decreased",
    STATUS_REGULARISED: "covariance not positive definite, regularised (increase reg_covar)",
}


class Flagged(NamedTuple):
    """What an ``m_step`` may return instead of bare parameters: the parameters and status bits
    (``STATUS_*``) to record, e.g. ``STATUS_REGULARISED`` when a covariance needed a jitter."""

    params: Any
    flags: Array


def describe_status(status: int) -> str:
    """Human-readable description of a status bit field."""
    status = int(status)
    if status == STATUS_OK:
        return "ok"
    return ", ".join(name for bit, name in STATUS_NAMES.items() if status & bit)


class EMResult(NamedTuple):
    """Outcome of one EM run (a pytree; batched along a leading axis for restarts).

    Attributes:
      params: fitted parameters.
      log_likelihood: ``()`` the monitored log-likelihood at ``params`` (final E-step).
      n_iter: ``()`` int32, EM iterations performed.
      converged: ``()`` bool, True iff ``|delta log_likelihood| < tol`` was reached.
      status: ``()`` int32 bit field of ``STATUS_*`` flags.
      history: ``(max_iter,)`` log-likelihood before each iteration's M-step; entries at and after
        ``n_iter`` are NaN (iterations not run).
    """

    params: Any
    log_likelihood: Array
    n_iter: Array
    converged: Array
    status: Array
    history: Array


class _State(NamedTuple):
    params: Any
    ll_prev: Array
    n_iter: Array
    converged: Array
    status: Array
    history: Array
    reseeded_last: Array  # the previous step re-seeded: its log-likelihood may fall once


def _tree_where(pred, a, b):
    return jax.tree_util.tree_map(lambda x, y: jnp.where(pred, x, y), a, b)


def _all_finite(tree) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def run(
    e_step: Callable,
    m_step: Callable,
    params0: Any,
    data: Any,
    *,
    tol: Array,
    max_iter: int,
    repair: Callable | None = None,
    callback: Callable | None = None,
    decrease_tol: float = 1e-6,
    rtol: Array = 0.0,
) -> EMResult:
    """Run EM from ``params0`` inside one ``jax.lax.while_loop`` (not jitted: compose or jit it).

    Each iteration: ``estats, ll = e_step(params)``; ``params = m_step(estats)``; optional
    ``repair``. It stops when ``|ll - ll_previous| < tol`` (converged), after ``max_iter``
    iterations, or when a step is not finite (parameters roll back to the last finite ones and
    ``STATUS_NONFINITE`` is set). A finished state is frozen by the body itself, so a batched
    (vmapped) loop that keeps stepping other lanes leaves it bit-for-bit unchanged.

    Args:
      e_step, m_step, repair: the model (see the module docstring).
      params0: initial parameters (pytree).
      data: pytree passed to the steps.
      tol: convergence threshold on the change of the monitored log-likelihood (may be traced).
      max_iter: static maximum number of iterations (also the history length).
      callback: optional ``callback(n_iter, ll, converged)`` called inside the loop (e.g. a
        throttled host callback for progress); it must return nothing.
      decrease_tol: relative fall of the log-likelihood that sets ``STATUS_DECREASED``.
      rtol: relative convergence threshold (may be traced): converged also when
        ``|ll - ll_previous| < rtol * |ll|`` (default 0: only the absolute ``tol``).

    Returns:
      :class:`EMResult`.
    """
    leaves = jax.tree_util.tree_leaves(params0)
    dtype = leaves[0].dtype if leaves else jnp.float32
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    tol = jnp.asarray(tol, dtype)
    rtol = jnp.asarray(rtol, dtype)

    def cond_fun(s: _State) -> Array:
        stopped = (s.status & STATUS_NONFINITE) != 0
        return (~s.converged) & (s.n_iter < max_iter) & (~stopped)

    def body_fun(s: _State) -> _State:
        active = cond_fun(s)
        estats, ll = e_step(s.params, data)
        ll = ll.astype(dtype)
        new_params = m_step(estats, data)
        flags = jnp.int32(0)
        if isinstance(new_params, Flagged):
            new_params, flags = new_params.params, jnp.asarray(new_params.flags, jnp.int32)
        if repair is not None:
            new_params, repair_flags = repair(new_params, estats, data)
            flags = flags | jnp.asarray(repair_flags, jnp.int32)
        finite = jnp.isfinite(ll) & _all_finite(new_params)
        change = ll - s.ll_prev
        reseeded = (flags & STATUS_RESEEDED) != 0
        small = (jnp.abs(change) < tol) | (jnp.abs(change) < rtol * jnp.abs(ll))
        converged = finite & small & ~reseeded
        decreased = change < -decrease_tol * jnp.maximum(1.0, jnp.abs(ll))
        flags = flags | jnp.where(decreased & ~s.reseeded_last & finite, STATUS_DECREASED, 0)
        flags = flags | jnp.where(finite, 0, STATUS_NONFINITE)
        new = _State(
            params=_tree_where(finite, new_params, s.params),
            ll_prev=jnp.where(finite, ll, s.ll_prev),
            n_iter=s.n_iter + finite.astype(jnp.int32),
            converged=converged,
            status=s.status | flags,
            history=s.history.at[s.n_iter].set(jnp.where(finite, ll, jnp.nan)),
            reseeded_last=reseeded,
        )
        out = _tree_where(active, new, s)
        if callback is not None:
            # After the freeze, so a finished lane of a vmapped loop reports its final state.
            callback(out.n_iter, out.ll_prev, out.converged)
        return out

    init = _State(
        params=params0,
        ll_prev=jnp.asarray(-jnp.inf, dtype),
        n_iter=jnp.int32(0),
        converged=jnp.array(False),
        status=jnp.int32(STATUS_OK),
        history=jnp.full((max_iter,), jnp.nan, dtype),
        reseeded_last=jnp.array(False),
    )
    final = jax.lax.while_loop(cond_fun, body_fun, init)
    _, ll_final = e_step(final.params, data)
    ll_final = ll_final.astype(dtype)
    status = final.status | jnp.where(jnp.isfinite(ll_final), 0, STATUS_NONFINITE)
    ll_final = jnp.where(jnp.isfinite(ll_final), ll_final, final.ll_prev)
    return EMResult(
        params=final.params,
        log_likelihood=ll_final,
        n_iter=final.n_iter,
        converged=final.converged,
        status=status,
        history=final.history,
    )


def best_index(log_likelihoods: Array) -> Array:
    """Index of the best restart: highest finite log-likelihood (first on ties)."""
    ll = jnp.where(jnp.isfinite(log_likelihoods), log_likelihoods, -jnp.inf)
    return jnp.argmax(ll)


def select(tree: Any, index: Array) -> Any:
    """Take element ``index`` along the leading (restart) axis of every leaf."""
    return jax.tree_util.tree_map(lambda x: x[index], tree)


def run_restarts(
    e_step: Callable,
    m_step: Callable,
    params0_batched: Any,
    data: Any,
    *,
    tol: Array,
    max_iter: int,
    repair: Callable | None = None,
    callback: Callable | None = None,
    rtol: Array = 0.0,
) -> EMResult:
    """:func:`run` vmapped over a leading restart axis of ``params0_batched``; data is shared."""

    def one(p0):
        return run(e_step, m_step, p0, data, tol=tol, max_iter=max_iter, repair=repair,
                   callback=callback, rtol=rtol)

    return jax.vmap(one)(params0_batched)
