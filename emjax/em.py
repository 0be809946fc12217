"""The generic EM driver: one ``jax.lax.while_loop`` per fit and ``jax.vmap`` over restarts.

The driver knows a model only through three pure functions::

    e_step(params, data) -> (estats, log_likelihood)   # log_likelihood: a scalar to monitor
    m_step(estats, data) -> params                      # or Flagged(params, status bits)
    repair(params, estats, data) -> (params, flags)    # optional: re-seed degenerate parts

``data`` is any pytree (e.g. ``(X, sample_weight)``); it is closed over by the loop body, never
carried in the loop state.
"""

from __future__ import annotations

import dataclasses
import functools
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
STATUS_FLOORED = 16  # a probability, rate, variance or shape hit its floor (emjax.families)

STATUS_NAMES = {
    STATUS_RESEEDED: "reseeded",
    STATUS_NONFINITE: "non-finite step (stopped at last finite parameters)",
    STATUS_DECREASED: "log-likelihood decreased",
    STATUS_REGULARISED: "covariance not positive definite, regularised (increase reg_covar)",
    STATUS_FLOORED: "a probability, rate, variance or shape was held at its floor",
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
      log_likelihood: ``()`` the monitored log-likelihood at ``params`` (the last E-step).
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
    estats: Any  # the E-step's statistics at ``params``: the next M-step's input
    ll: Array  # the monitored log-likelihood at ``params``
    n_iter: Array
    converged: Array
    status: Array
    history: Array
    pending: Array  # the last change was below tol: one more M-step, then stop unless it re-seeds
    done: Array
    first: Array  # the next body is the M-step from ``estats0`` (not counted as an iteration)


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
    estats0: Any = None,
    ll_prev: Array | None = None,
    history_size: int | None = None,
) -> EMResult:
    """Run EM from ``params0`` inside one ``jax.lax.while_loop`` (not jitted: compose or jit it).

    Iteration ``i`` takes the parameters ``p_i`` to ``p_{i+1} = m_step(estats_i)`` (then the
    optional ``repair``), with ``estats_i, ll_i = e_step(p_i)``. It stops after the iteration
    whose ``|ll_i - ll_{i-1}| < tol`` (converged; not if that iteration's M-step re-seeded),
    after ``max_iter`` iterations, or when a step is not finite (the parameters roll back to
    the last finite ones, whose log-likelihood is returned, and ``STATUS_NONFINITE`` is set).
    The loop body is one M-step followed by one E-step, so the log-likelihood of the returned
    parameters comes out of the loop and each step appears once in the compiled program. A
    finished state is frozen by the body itself, so a batched (vmapped) loop that keeps
    stepping other lanes leaves it bit-for-bit unchanged.

    Args:
      e_step, m_step, repair: the model (see the module docstring).
      params0: initial parameters (pytree).
      data: pytree passed to the steps.
      tol: convergence threshold on the change of the monitored log-likelihood (may be traced).
      max_iter: maximum number of iterations: static, or traced with ``history_size`` given.
      callback: optional ``callback(n_iter, ll, converged)`` called inside the loop (e.g. a
        throttled host callback for progress); it must return nothing.
      decrease_tol: relative fall of the log-likelihood that sets ``STATUS_DECREASED``.
      rtol: relative convergence threshold (may be traced): converged also when
        ``|ll - ll_previous| < rtol * |ll|`` (default 0: only the absolute ``tol``).
      estats0: optional statistics in the E-step's format (e.g. of an initial hard
        assignment): the initial parameters are then ``m_step(estats0)``, computed by the
        loop's own M-step (no second copy of it in the program; no ``repair``, not counted as
        an iteration), and ``params0`` gives only their structure (it is returned, flagged
        ``STATUS_NONFINITE``, if that step is not finite). With ``max_iter=0`` that step still
        runs (initialisation only).
      ll_prev: optional log-likelihood before ``params0`` when continuing an earlier run that
        ended at ``params0`` (its last ``history`` entry; may be traced, ``-inf`` for none): the
        convergence test goes on from it, so that runs of a few iterations each converge as
        one long run would (scikit-learn's ``warm_start``). Ignored with ``estats0``.
      history_size: static length of ``history`` (default ``max_iter``; at least ``max_iter``):
        a size class lets runs with different ``max_iter`` share one compiled program.

    Returns:
      :class:`EMResult`.
    """
    start, body_fun, finish = _loop(e_step, m_step, params0, data, tol=tol, max_iter=max_iter,
                                    repair=repair, callback=callback, decrease_tol=decrease_tol,
                                    rtol=rtol, from_stats=estats0 is not None, ll_prev=ll_prev,
                                    history_size=history_size)
    return finish(jax.lax.while_loop(lambda s: ~s.done, body_fun, start(params0, estats0)))


def _loop_dtype(params):
    """The loop's floating dtype: that of the first parameter leaf (float if not floating)."""
    leaves = jax.tree_util.tree_leaves(params)
    dtype = leaves[0].dtype if leaves else jnp.float32
    return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.result_type(float)


def _loop(e_step, m_step, params0, data, *, tol, max_iter, repair=None, callback=None,
          decrease_tol=1e-6, rtol=0.0, from_stats=False, ll_prev=None, history_size=None):
    """:func:`run`'s loop as ``(start, body, finish)``: ``start(params0, estats0)`` is one
    fit's initial state, so a driver can run the body on any batch of states
    (:func:`run_restarts`' compaction). ``params0`` gives only the dtype here."""
    dtype = _loop_dtype(params0)
    tol = jnp.asarray(tol, dtype)
    rtol = jnp.asarray(rtol, dtype)
    size = max_iter if history_size is None else history_size

    def body_fun(s: _State) -> _State:
        new_params = m_step(s.estats, data)
        flags = jnp.int32(0)
        if isinstance(new_params, Flagged):
            new_params, flags = new_params.params, jnp.asarray(new_params.flags, jnp.int32)
        if repair is not None:
            repaired, repair_flags = repair(new_params, s.estats, data)
            repair_flags = jnp.asarray(repair_flags, jnp.int32)
            if from_stats:  # the initial M-step is not repaired
                repaired = _tree_where(s.first, new_params, repaired)
                repair_flags = jnp.where(s.first, 0, repair_flags)
            new_params, flags = repaired, flags | repair_flags
        estats, ll = e_step(new_params, data)
        ll = ll.astype(dtype)
        finite = jnp.isfinite(ll) & _all_finite(new_params)
        counted = ~s.first
        reseeded = (flags & STATUS_RESEEDED) != 0
        change = ll - s.ll
        small = (jnp.abs(change) < tol) | (jnp.abs(change) < rtol * jnp.abs(ll))
        converged = s.pending & ~reseeded & finite
        decreased = counted & (change < -decrease_tol * jnp.maximum(1.0, jnp.abs(ll)))
        flags = flags | jnp.where(decreased & ~reseeded & finite, STATUS_DECREASED, 0)
        flags = flags | jnp.where(finite, 0, STATUS_NONFINITE)
        n_iter = s.n_iter + (counted & finite).astype(jnp.int32)
        new = _State(
            params=_tree_where(finite, new_params, s.params),
            estats=_tree_where(finite, estats, s.estats),
            ll=jnp.where(finite, ll, s.ll),
            n_iter=n_iter,
            converged=converged,
            status=s.status | flags,
            # history[i] = ll_i, the log-likelihood before iteration i's M-step
            # (a select, not a scatter: XLA:CPU makes a batched scatter a loop of its own)
            history=(jnp.where((jnp.arange(size) == s.n_iter) & counted & finite, s.ll,
                               s.history) if size > 0 else s.history),
            pending=small & finite & ~converged,
            done=converged | ~finite | (n_iter >= max_iter),
            first=jnp.array(False),
        )
        out = _tree_where(~s.done, new, s)
        if callback is not None:
            # After the freeze, so a finished lane of a vmapped loop reports its final state.
            callback(out.n_iter, out.ll, out.converged)
        return out

    def start(params0, estats0) -> _State:
        if from_stats:
            estats, ll, done = estats0, jnp.asarray(-jnp.inf, dtype), jnp.array(False)
            status = jnp.int32(STATUS_OK)
        else:
            estats, ll = e_step(params0, data)
            ll = ll.astype(dtype)
            done = ~jnp.isfinite(ll)
            status = jnp.where(done, STATUS_NONFINITE, STATUS_OK).astype(jnp.int32)
            ll = jnp.where(done, -jnp.inf, ll)
        pending = jnp.array(False)
        if ll_prev is not None and not from_stats:
            change = ll - jnp.asarray(ll_prev, dtype)
            pending = ~done & ((jnp.abs(change) < tol) | (jnp.abs(change) < rtol * jnp.abs(ll)))
        return _State(
            params=params0,
            estats=estats,
            ll=ll,
            n_iter=jnp.int32(0),
            converged=jnp.array(False),
            status=status,
            history=jnp.full((size,), jnp.nan, dtype),
            pending=pending,
            # The initial M-step from estats0 runs even with max_iter = 0 (initialisation only).
            done=done | ((max_iter <= 0) & (not from_stats)),
            first=jnp.array(from_stats),
        )

    def finish(final: _State) -> EMResult:
        return EMResult(
            params=final.params,
            log_likelihood=final.ll,
            n_iter=final.n_iter,
            converged=final.converged,
            status=final.status | jnp.where(final.first, STATUS_NONFINITE, 0),
            history=final.history,
        )

    return start, body_fun, finish


def run_compacted(
    e_step: Callable,
    m_step: Callable,
    params0: Any,
    data: Any,
    *,
    tol: Array,
    max_iter: int,
    chunk: int,
    repair: Callable | None = None,
    decrease_tol: float = 1e-6,
    rtol: Array = 0.0,
    estats0: Any = None,
    ll_prev: Array | None = None,
    history_size: int | None = None,
) -> EMResult:
    """:func:`run` (without a callback) for a fit that may be one of a batch under ``jax.vmap``.

    A vmapped ``while_loop`` steps every fit of the batch until the slowest one stops. Here a
    batch of more than ``chunk`` fits is instead stepped ``chunk`` unfinished fits at a time
    (gathered, stepped by one iteration, scattered back), so finished fits cost nothing more:
    the work follows the fits' own iteration counts. Each fit goes through the same steps as
    alone (a finished fit is frozen), so every result is that of :func:`run`. Unbatched, or a
    batch of at most ``chunk``, it is :func:`run`.

    The steps must take every traced value through ``params0``, ``data``, ``tol``, ``rtol``,
    ``estats0``, ``ll_prev`` and ``max_iter``, not through closures (the batching rule sees
    only these).
    """
    kw = dict(repair=repair, decrease_tol=decrease_tol, from_stats=estats0 is not None,
              history_size=max_iter if history_size is None else history_size)

    def loop(params0, data, tol, rtol, ll_prev, max_iter):
        return _loop(e_step, m_step, params0, data, tol=tol, rtol=rtol, ll_prev=ll_prev,
                     max_iter=max_iter, **kw)

    def plain(params0, data, tol, rtol, estats0, ll_prev, max_iter):
        start, body_fun, finish = loop(params0, data, tol, rtol, ll_prev, max_iter)
        return finish(jax.lax.while_loop(lambda s: ~s.done, body_fun, start(params0, estats0)))

    @jax.custom_batching.custom_vmap
    def solo(*args):
        return plain(*args)

    @solo.def_vmap
    def _rule(axis_size, in_batched, *args):
        axes = tuple(jax.tree_util.tree_map(lambda b: 0 if b else None, ib) for ib in in_batched)
        if axis_size <= chunk:
            out = jax.vmap(plain, in_axes=axes)(*args)
            return out, jax.tree_util.tree_map(lambda _: True, out)
        def start_one(params0, data, tol, rtol, estats0, ll_prev, max_iter):
            return loop(params0, data, tol, rtol, ll_prev, max_iter)[0](params0, estats0)

        def step_one(s, params0, data, tol, rtol, ll_prev, max_iter):
            return loop(params0, data, tol, rtol, ll_prev, max_iter)[1](s)

        state = jax.vmap(start_one, in_axes=axes)(*args)
        kept = (0, 1, 2, 3, 5, 6)  # all but estats0
        step_axes = (0,) + tuple(axes[i] for i in kept)
        step = jax.vmap(step_one, in_axes=step_axes)
        step_args = tuple(args[i] for i in kept)

        def round_(state):
            # The unfinished fits first, then as many chunks as cover them (a last chunk that
            # would run past the end starts earlier: its first fits take a second step).
            order = jnp.argsort(state.done.astype(jnp.int32), stable=True)
            n_chunks = (jnp.sum(~state.done) + chunk - 1) // chunk

            def one_chunk(j, state):
                idx = jax.lax.dynamic_slice_in_dim(order, j * chunk, chunk)
                sub = jax.tree_util.tree_map(lambda a: a[idx], state)
                sub_args = [jax.tree_util.tree_map(lambda a, ax: a if ax is None else a[idx],
                                                   arg, ax)
                            for arg, ax in zip(step_args, step_axes[1:])]
                new = step(sub, *sub_args)
                return jax.tree_util.tree_map(lambda a, n: a.at[idx].set(n), state, new)

            return jax.lax.fori_loop(0, n_chunks, one_chunk, state)

        final = jax.lax.while_loop(lambda s: jnp.any(~s.done), round_, state)
        out = jax.vmap(loop(*step_args[:4], None, step_args[5])[2])(final)
        return out, jax.tree_util.tree_map(lambda _: True, out)

    return solo(params0, data, jnp.asarray(tol), jnp.asarray(rtol), estats0, ll_prev,
                jnp.asarray(max_iter, jnp.int32))


def best_index(log_likelihoods: Array) -> Array:
    """Index of the best restart: highest finite log-likelihood, the first of ties, where
    values within 16 ulps of the highest tie (restarts that reached one optimum differ in their
    last bits, which a padded or batched program rounds otherwise: it still picks the same)."""
    ll = jnp.where(jnp.isfinite(log_likelihoods), log_likelihoods, -jnp.inf)
    top = jnp.max(ll)
    return jnp.argmax(ll >= top - 16 * jnp.finfo(ll.dtype).eps * jnp.abs(top))


def select(tree: Any, index: Array) -> Any:
    """Take element ``index`` (in range) along the leading (restart) axis of every leaf (a
    dynamic slice: ``x[index]`` adds index normalisation to every leaf)."""
    return jax.tree_util.tree_map(lambda x: jax.lax.dynamic_index_in_dim(
        x, index, keepdims=False, allow_negative_indices=False), tree)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class FitResult:
    """Result of a fit with restarts: the best restart and all of them (a pytree).

    Every model's result is this class or a subclass adding its own fields (subclasses are
    registered pytrees too, with ``@jax.tree_util.register_dataclass``).

    Attributes:
      params: the best restart's fitted parameters.
      log_likelihood: ``()`` the best restart's monitored log-likelihood (at ``params``).
      n_iter, converged, status, history: the best restart's (see :class:`EMResult`).
      best_index: ``()`` which restart was best (:func:`best_index`).
      restarts: :class:`EMResult` of every restart, batched along axis 0.
    """

    params: Any
    log_likelihood: Array
    n_iter: Array
    converged: Array
    status: Array
    history: Array
    best_index: Array
    restarts: EMResult

    def _replace(self, **changes) -> FitResult:
        """A copy with ``changes`` (as a NamedTuple's ``_replace``)."""
        return dataclasses.replace(self, **changes)

    def first_iterations(self, max_iter: int) -> FitResult:
        """A copy whose histories (the best restart's and every restart's) keep their first
        ``max_iter`` entries, for a fit run with its history padded to a class. Call it on NumPy
        leaves: slicing device arrays would compile a small program per shape."""
        return self._replace(history=self.history[:max_iter], restarts=self.restarts._replace(
            history=self.restarts.history[:, :max_iter]))

    def with_max_iter(self, max_iter: int) -> FitResult:
        """:meth:`first_iterations` on the host, back on the device (as is when the history is
        ``max_iter`` long already)."""
        import numpy as np

        if self.history.shape[-1] == max_iter:
            return self
        return jax.device_put(jax.tree_util.tree_map(np.asarray, self).first_iterations(max_iter))

    @classmethod
    def extend(cls, result: FitResult, **changes) -> FitResult:
        """``result``'s fields with ``changes`` (a subclass's own fields among them) as ``cls``."""
        fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(FitResult)}
        return cls(**{**fields, **changes})


def best_restart(restarts: EMResult) -> FitResult:
    """The best of ``restarts`` (batched along axis 0; highest finite log-likelihood, first on
    ties) as a :class:`FitResult` that keeps them all."""
    best = best_index(restarts.log_likelihood)
    b = select(restarts, best)
    return FitResult(b.params, b.log_likelihood, b.n_iter, b.converged, b.status, b.history,
                     best, restarts)


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
    estats0_batched: Any = None,
    ll_prev: Array | None = None,
    compact: bool = False,
    vmap_chunk: int = 0,
    history_size: int | None = None,
    sequential: bool = False,
) -> EMResult:
    """:func:`run` vmapped over a leading restart axis of ``params0_batched`` (and of
    ``estats0_batched``, if given); data and ``ll_prev`` are shared. One restart runs
    unbatched (its result gets the leading axis of length 1): a batch of one would turn every
    GEMM of the steps into a batched one, which XLA:CPU runs more slowly (docs/performance.md).

    A vmapped loop steps every restart until the slowest has finished. With ``compact=True``
    (static; used from 4 restarts on) the loop runs in stages instead: once at most a quarter
    of the current batch is still running, those restarts are gathered into a batch a quarter
    the size, down to one, so finished restarts stop costing work. Each restart's arithmetic
    is unchanged (results equal to rounding); the program holds one copy of the loop body per
    stage.

    ``sequential=True`` (static): the restarts run one after the other (``lax.map``), each
    loop to its own end, in the same single program: for steps whose GEMMs are large, where
    a batch gains little and every lane would wait for the slowest (the pass plan's
    ``sequential_restarts``). A progress callback still sees every restart at once: the
    running one's iteration, and each one's log-likelihood and convergence so far.

    ``vmap_chunk > 0`` (static; no ``callback``): one restart is :func:`run_compacted` with
    ``chunk=vmap_chunk``, for fits that a caller vmaps over many data sets (the steps must
    then take every traced value through ``data``). ``history_size``: as in :func:`run`.
    """
    leaves = jax.tree_util.tree_leaves(params0_batched)
    n = leaves[0].shape[0] if leaves else 0
    loop_kw = dict(tol=tol, max_iter=max_iter, repair=repair, rtol=rtol,
                   from_stats=estats0_batched is not None, ll_prev=ll_prev,
                   history_size=history_size)
    start, body_fun, finish = _loop(
        e_step, m_step, jax.tree_util.tree_map(lambda a: a[0], params0_batched), data,
        callback=callback, **loop_kw)
    if n == 1 and vmap_chunk and callback is None:
        first = functools.partial(jax.tree_util.tree_map, lambda a: a[0])
        res = run_compacted(e_step, m_step, first(params0_batched), data, tol=tol,
                            max_iter=max_iter, chunk=vmap_chunk, repair=repair, rtol=rtol,
                            estats0=first(estats0_batched), ll_prev=ll_prev,
                            history_size=history_size)
        return jax.tree_util.tree_map(lambda a: a[None], res)
    if n == 1:
        first = functools.partial(jax.tree_util.tree_map, lambda a: a[0])
        final = jax.lax.while_loop(lambda s: ~s.done, body_fun,
                                   start(first(params0_batched), first(estats0_batched)))
        return jax.tree_util.tree_map(lambda a: a[None], finish(final))
    if sequential:
        return _sequential(e_step, m_step, params0_batched, estats0_batched, data, n, callback,
                           loop_kw)
    states = jax.vmap(start)(params0_batched, estats0_batched)
    if not compact or n < 4:
        return jax.vmap(finish)(jax.lax.while_loop(lambda s: ~jnp.all(s.done),
                                                   jax.vmap(body_fun), states))
    return jax.vmap(finish)(_staged(body_fun, states, n))


def _sequential(e_step, m_step, params0_batched, estats0_batched, data, n, callback, loop_kw):
    """Restarts one after the other (a ``lax.scan``), each loop to its own end. A ``callback``
    sees every restart at once, as under ``vmap``: the running one's state, the finished ones'
    final log-likelihood and convergence (their iteration count reported as 0, so the throttle
    and the bar follow the running one), and nothing yet for those to come."""
    dtype = _loop_dtype(params0_batched)
    seen0 = (jnp.full((n,), -jnp.inf, dtype), jnp.zeros((n,), bool))

    def one(seen, i_p0_e0):
        i, p0, e0 = i_p0_e0
        lls, convs = seen

        def report(n_iter, ll, converged):
            callback(jnp.zeros((n,), jnp.int32).at[i].set(n_iter),
                     lls.at[i].set(ll.astype(dtype)), convs.at[i].set(converged))

        start, body_fun, finish = _loop(e_step, m_step, p0, data,
                                        callback=None if callback is None else report, **loop_kw)
        res = finish(jax.lax.while_loop(lambda s: ~s.done, body_fun, start(p0, e0)))
        return (lls.at[i].set(res.log_likelihood.astype(dtype)),
                convs.at[i].set(res.converged)), res

    return jax.lax.scan(one, seen0, (jnp.arange(n), params0_batched, estats0_batched))[1]


def _stage_sizes(n: int) -> list:
    sizes = [n]
    while sizes[-1] > 1:
        sizes.append(-(-sizes[-1] // 4))
    return sizes


def _staged(body_fun: Callable, states: _State, n: int) -> _State:
    """Run a batch of loop states to the end in stages of shrinking batches (see
    :func:`run_restarts`): a stage runs while more lanes are running than the next stage holds;
    the next stage takes the running lanes first (a stable sort on ``done``)."""
    sizes = _stage_sizes(n)
    idx = jnp.arange(n)
    for size, next_size in zip(sizes, sizes[1:] + [0]):
        if size < n:
            idx = jnp.argsort(states.done.astype(jnp.int32), stable=True)[:size]
        sub = jax.tree_util.tree_map(lambda a: a[idx], states)
        if size == 1:  # unbatched: a batch of one would make every GEMM a batched one
            one = jax.tree_util.tree_map(lambda a: a[0], sub)
            one = jax.lax.while_loop(lambda s: ~s.done, body_fun, one)
            sub = jax.tree_util.tree_map(lambda a: a[None], one)
        else:
            sub = jax.lax.while_loop(
                lambda s, k=next_size: jnp.sum(~s.done) > k, jax.vmap(body_fun), sub)
        states = jax.tree_util.tree_map(lambda a, b: a.at[idx].set(b), states, sub)
    return states
