"""Fitting Gaussian mixtures: initialisation, the compiled EM loop and vmapped restarts.

:func:`fit` validates at the boundary, then runs two jitted programs: the ``n_init`` hard
initialisations' centres (vmapped over PRNG keys; shared by every covariance type on the same
data), then the ``n_init`` EM loops (vmapped, or one after the other), and picks the best.
"""

from __future__ import annotations

import concurrent.futures
import functools
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from emjax import _compile_cache, _threefry, _xla, em, kmeans
from emjax import _validation as v
from emjax._batching import rare_cond
from emjax._chunks import fold_chunks, rows
from emjax._sizes import draws_per_index, history_class, pad_rows, padded_rows, restart_class
from emjax.gmm import GMMParams, kernels, steps, unrolled
from emjax.gmm import covariance as cov_lib
from emjax.gmm import plan as plan_lib
from emjax.gmm.options import check_fit, check_options
from emjax.gmm.reseed import empty_components, reseed_empty, worst_explained

Array = jax.Array

#: The result of :func:`fit` (and of every GMM fit with restarts): :class:`emjax.em.FitResult`
#: with ``params`` a :class:`~emjax.gmm.GMMParams`.
FitResult = em.FitResult


def uniform_responsibilities(key: Array, start, size: int, n_components: int, dtype,
                             active: Array | None = None) -> Array:
    """Random responsibilities of rows ``start : start + size``: row ``i`` normalises uniforms
    drawn from ``fold_in(key, i)``, so a row's draw depends on neither the number of rows
    (padding) nor the chunking, nor on padded components (``active``: the first ones exist;
    the others get 0)."""
    def row(i):
        r = jax.random.uniform(jax.random.fold_in(key, i), (n_components,), dtype)
        if active is not None:
            r = jnp.where(active, r, 0.0)
        return r / jnp.sum(r)

    return jax.vmap(row)(start + jnp.arange(size))


def _init_centers(key, X, n_components, init_params, sample_weight, n_lloyd, center,
                  chunk_size, n_active=None):
    """Centres of the hard initialisations, in the coordinates of ``X - center`` (with
    ``n_active``, the first ``n_active`` are those of ``n_active`` components)."""
    n = X.shape[0]
    if init_params == "random_from_data":
        idx = kmeans.sample_rows(key, n, n_components, sample_weight, X.dtype)
        return X[idx] if center is None else X[idx] - center
    centers, _ = kmeans.kmeans_plusplus(key, X, n_components, sample_weight, center=center,
                                        chunk_size=chunk_size, n_active=n_active)
    if init_params == "kmeans":
        centers = kmeans.lloyd(X, centers, n_lloyd, sample_weight, center=center,
                               chunk_size=chunk_size,
                               active=kmeans.active_centers(n_components, n_active))
    return centers


def responsibilities_init(
    key: Array,
    X: Array,
    n_components: int,
    init_params: str = "kmeans",
    sample_weight: Array | None = None,
    n_lloyd: int = 10,
    *,
    center: Array | None = None,
    chunk_size: int | None = None,
    n_active: Array | None = None,
    centers: Array | None = None,
) -> Array:
    """Initial responsibilities ``(n_samples, n_components)`` (pure, vmappable over ``key``).

    ``"kmeans"``: k-means++ then ``n_lloyd`` Lloyd steps, hard assignment (scikit-learn's
    default). ``"k-means++"``: hard assignment to k-means++ centres. ``"random_from_data"``:
    hard assignment to distinct random samples. ``"random"``: uniform random responsibilities.
    The k-means passes run ``chunk_size`` rows at a time (see :mod:`emjax.kmeans`), on
    ``X - center`` if ``center`` is given. :func:`init_params` does not form this array.
    ``n_active`` (traced int): only the first ``n_active`` components exist (the others are
    padding and get no responsibility); the draws are those of ``n_active`` components.
    ``centers``: the hard initialisation's centres (``(n_components, n_features)``, in the
    coordinates of ``X - center``), computed elsewhere (:func:`_centers_program`).
    """
    n = X.shape[0]
    active = kmeans.active_centers(n_components, n_active)
    if init_params == "random":
        return uniform_responsibilities(key, 0, n, n_components, X.dtype, active)
    if centers is None:
        centers = _init_centers(key, X, n_components, init_params, sample_weight, n_lloyd,
                                center, chunk_size, n_active)
    labels = kmeans.assign(X, centers, center=center, chunk_size=chunk_size, active=active)
    return jax.nn.one_hot(labels, n_components, dtype=X.dtype)


def _stats_chunked(resp_of, X, sample_weight, center, *, n_components, covariance_type,
                   chunk_size):
    """The statistics :func:`emjax.gmm.m_step_stats` takes from the responsibilities
    ``resp_of(start, size)`` (a ``(size, n_components)`` block) on ``X - center``, in two
    chunked passes: the means, then the scatter about them (:func:`emjax.gmm.suff_stats` per
    block). Equal to the dense statistics when one block covers ``X`` and ``chunk_size`` is
    :func:`emjax.gmm.suff_stats`' block."""
    n, d = X.shape
    k = n_components
    dtype = X.dtype

    def block(start, size):
        x = rows(X, start, size)
        x = x if center is None else x - center
        return resp_of(start, size), x, rows(sample_weight, start, size)

    def first(acc, start, size):
        g, x, ws = block(start, size)
        if ws is not None:
            g = g * ws[:, None]
        return acc[0] + jnp.sum(g, axis=0), acc[1] + g.T @ x

    nk, sx = fold_chunks(first, (jnp.zeros((k,), dtype), jnp.zeros((k, d), dtype)), n,
                                chunk_size)
    ref = sx / (nk + 10 * jnp.finfo(dtype).eps)[:, None]

    def second(acc, start, size):
        g, x, ws = block(start, size)
        st = steps.suff_stats(g, x, ref, covariance_type=covariance_type, sample_weight=ws,
                            chunk_size=chunk_size)
        return acc[0] + st.nk, acc[1] + st.sx, acc[2] + st.sxx

    zeros = jax.eval_shape(lambda: steps.suff_stats(
        resp_of(0, min(chunk_size, n)), X[: min(chunk_size, n)], ref,
        covariance_type=covariance_type))
    acc = tuple(jnp.zeros(a.shape, a.dtype) for a in zeros[:3])
    nk, sx, sxx = fold_chunks(second, acc, n, chunk_size)
    return steps.SuffStats(nk, sx, sxx, ref)


def init_params(
    key: Array,
    X: Array,
    n_components: int,
    *,
    covariance_type: str = "full",
    reg_covar: float = 1e-6,
    init_params: str = "kmeans",
    sample_weight: Array | None = None,
    n_lloyd: int = 10,
    center: Array | None = None,
    chunk_size: int | None = None,
) -> GMMParams:
    """Initial :class:`GMMParams`: :func:`responsibilities_init` followed by one M-step (the
    M-step of :func:`init_stats`).

    Memory is O(n_samples + chunk_size * n_components * n_features) on top of ``X``: the
    responsibilities are never stored whole. The hard initialisations recompute each block's
    nearest centre in both passes of the M-step; ``"random"`` draws row ``i``'s
    responsibilities from ``jax.random.fold_in(key, i)``, as :func:`responsibilities_init` does.

    Args:
      key, X, n_components, covariance_type, reg_covar, init_params, sample_weight, n_lloyd:
        as in :func:`emjax.fit` (``X`` is ``(n_samples, n_features)``).
      center: optional ``(n_features,)``: the result is that of ``X - center`` (the mixture in
        centred coordinates) without a centred copy of ``X``.
      chunk_size: static rows per block of every pass (default: the k-means passes use
        :func:`emjax.kmeans.default_chunk_size`, the M-step that of :func:`emjax.gmm.suff_stats`).
    """
    static = dict(n_components=n_components, covariance_type=covariance_type,
                  reg_covar=reg_covar, init_params=init_params, n_lloyd=n_lloyd,
                  chunk_size=chunk_size)
    if v.is_traced(key, X, sample_weight, center):
        return _init_params(key, X, sample_weight, center, **static)
    # Concrete data: checked at the boundary, then one compiled program (op by op, every
    # operation would compile for every shape).
    X = v.as_data(X, dtype=v.jax_float(X))
    v.check_x64(X.dtype)
    _, o = check_options(n_components, X.shape, covariance_type=covariance_type,
                         init_params=init_params, reg_covar=reg_covar, n_lloyd=n_lloyd)
    static.update(n_components=o.n_components, covariance_type=o.covariance_type,
                  reg_covar=o.reg_covar, init_params=o.init_params, n_lloyd=o.n_lloyd)
    w = v.check_sample_weight(sample_weight, X.shape[0], X.dtype)
    if center is not None:
        center = np.asarray(center, X.dtype)
        if center.shape != X.shape[1:]:
            raise ValueError(f"center must have shape {X.shape[1:]} to match X of shape "
                             f"{X.shape}; got {center.shape}")
    n_rows = padded_rows(X.shape[0], X.nbytes // X.shape[0])
    if n_rows is not None and draws_per_index():
        # zero-weight rows up to the size class: never drawn, no statistic (the draws per row
        # are those of the rows as given), one program for nearby sizes
        X, w = pad_rows(X, w, n_rows)
    return _init_params_compiled(v.as_key(key), X, w, center, **static)


def _init_params(key, X, sample_weight, center, *, n_components, covariance_type, reg_covar,
                 init_params, n_lloyd, chunk_size):
    stats = init_stats(key, X, n_components, covariance_type=covariance_type,
                       init_params=init_params, sample_weight=sample_weight, n_lloyd=n_lloyd,
                       center=center, chunk_size=chunk_size)
    return steps.params_from_stats(stats, covariance_type=covariance_type, reg_covar=reg_covar)


_init_params_compiled = jax.jit(_init_params, static_argnames=(
    "n_components", "covariance_type", "reg_covar", "init_params", "n_lloyd", "chunk_size"))


def init_stats(
    key: Array,
    X: Array,
    n_components: int,
    *,
    covariance_type: str = "full",
    init_params: str = "kmeans",
    sample_weight: Array | None = None,
    n_lloyd: int = 10,
    center: Array | None = None,
    chunk_size: int | None = None,
    n_active: Array | None = None,
    centers: Array | None = None,
) -> steps.SuffStats:
    """The sufficient statistics of :func:`responsibilities_init` (arguments as there),
    whose M-step gives the initial parameters; computed in chunked passes without the
    ``(n_samples, n_components)`` responsibilities."""
    n, d = X.shape
    k = n_components
    dtype = X.dtype
    m_chunk = chunk_size if chunk_size is not None else max(256, 2**20 // max(1, k * d))
    m_chunk = int(min(m_chunk, n))
    active = kmeans.active_centers(k, n_active)
    if init_params == "random":
        def resp_of(start, size):
            return uniform_responsibilities(key, start, size, k, dtype, active)
    else:
        if centers is None:
            centers = _init_centers(key, X, k, init_params, sample_weight, n_lloyd, center,
                                    chunk_size, n_active)

        def resp_of(start, size):
            x = rows(X, start, size)
            x = x if center is None else x - center
            labels = jnp.argmin(
                kmeans.mask_inactive(kmeans.squared_distances(x, centers), active), axis=1)
            return jax.nn.one_hot(labels, k, dtype=dtype)

    return _stats_chunked(resp_of, X, sample_weight, center, n_components=k,
                          covariance_type=covariance_type, chunk_size=m_chunk)


def m_step_from_stats(stats: steps.SuffStats, *, covariance_type: str,
                      reg_covar: float, blocked_inverse: bool | None = None,
                      lapack: bool = True, unrolled: bool = False,
                      pool: Array | None = None, n_features: Array | None = None,
                      pool_branches: bool = False) -> em.Flagged:
    """The GMM M-step as the driver takes it: :func:`emjax.gmm.params_from_stats`, flagged with
    ``em.STATUS_REGULARISED`` when a covariance needed a jitter to be factorised (``pool``,
    ``n_features``, ``pool_branches``: see :func:`emjax.gmm.steps.params_from_stats_checked`)."""
    params, regularised = steps.params_from_stats_checked(
        stats, covariance_type=covariance_type, reg_covar=reg_covar,
        blocked_inverse=blocked_inverse, lapack=lapack, unrolled=unrolled, pool=pool,
        n_features=n_features, pool_branches=pool_branches)
    return em.Flagged(params, jnp.where(regularised, em.STATUS_REGULARISED, 0))


def make_model(covariance_type: str, reg_covar: float, empty_threshold: float = 1e-3, *,
               plan: plan_lib.PassPlan | None = None, center: Array | None = None,
               inputs=None, active: Array | None = None, pool: Array | None = None,
               n_features: Array | None = None, n_active: Array | None = None):
    """The GMM as the driver sees it: ``(e_step, m_step, repair)`` over ``data = (X, w)``.

    The static ``plan`` (:func:`emjax.gmm.plan.make_plan`) chooses the steps. ``plan.fused``:
    the E-step is :func:`kernels.e_step_stats`, one chunked pass over ``X`` as the plan lays
    it out (each chunk centred at ``center``, default the mixture's mean) that also
    accumulates the next M-step's sufficient statistics, and the M-step is
    :func:`emjax.gmm.params_from_stats`; nothing of size ``(n_samples, n_components)`` is
    stored. ``inputs``: optional :func:`kernels.prepare` ``(plan, X, center)``, built once by
    the caller outside the EM loop (``emjax.fit`` does); without it every pass builds them.
    Not ``plan.fused`` but ``plan.unrolled`` (few features): the E-step is
    :func:`emjax.gmm.unrolled.e_step_stats` on ``X^T`` (``data = (X, w, X^T)``, or ``inputs``,
    default built in every pass), which also gives the next M-step's statistics (moments about
    the current means), and the M-step factorises by closed forms. ``plan=None`` or neither:
    the dense reference steps :func:`emjax.gmm.e_step_full` and :func:`emjax.gmm.m_step`
    (exact two-pass M-step), whose statistics are ``(log_resp, ll)``.

    The M-step reports ``em.STATUS_REGULARISED`` when a covariance was not positive definite in
    the working precision and was factorised with a jitter (:class:`emjax.em.Flagged`).

    ``repair`` is :func:`reseed_empty`: it re-seeds every component whose responsibility mass
    fell below ``empty_threshold`` (in units of the mean sample weight), reading the mass from
    the statistics and the worst-explained samples from the per-sample log-likelihoods.

    ``active``: optional ``(n_components,)`` bool (traced), the components that exist; the
    others are padding (so that fits of nearby ``n_components`` share one program): weight 0
    (their log-weight is ``-inf`` in every E-step, so they take no responsibility), never
    re-seeded, and the M-step renormalises the weights of the active ones. ``n_active``:
    optional traced int, their count (the first ``n_active`` are active); with
    ``plan.active_loop`` the dense steps compute only those components' distances and scatter.

    ``pool``: optional traced :data:`emjax.gmm.steps.POOL` code, full and diagonal
    covariances: the M-step (and the re-seeding) computes the covariance type it names
    (:func:`emjax.gmm.steps.params_from_stats_checked`). ``n_features``: optional traced int,
    full covariances on the dense steps: the features after the first ``n_features`` are zero
    padding, whose covariance block the M-step keeps at the identity (same function) and which
    the E-step's constant leaves out (:func:`emjax.gmm.steps.component_log_prob`).
    """
    blocked = None if plan is None else plan.blocked_inverse
    cond = True if plan is None else plan.reseed_cond
    small = plan is not None and plan.unrolled
    # With plan.pool_branches each pooled type's distances, moments and factors are its own.
    branches = plan is not None and plan.pool_branches and pool is not None
    m_kw = dict(covariance_type=covariance_type, reg_covar=reg_covar, blocked_inverse=blocked,
                lapack=True if plan is None else plan.lapack, unrolled=small, pool=pool,
                n_features=n_features, pool_branches=branches)
    step_pool = pool if branches else None
    r_kw = dict(covariance_type=covariance_type, empty_threshold=empty_threshold, cond=cond,
                active=active, pool=pool)

    def masked(flagged):
        if active is None:
            return flagged
        return em.Flagged(steps.mask_params(flagged.params, active), flagged.flags)

    def candidates(stats, ll, w, rank):
        # The repair's candidates, not the (N,) log-likelihoods: N floats in the loop state
        # cost 2-3 copies of the statistics in temporaries.
        k = stats.nk.shape[0]
        if plan.reseed_cond:
            # Under vmap, ranked only when a fit of the batch has an empty component.
            empty = empty_components(stats.nk, w, empty_threshold)
            return rare_cond(
                jnp.any(empty if active is None else empty & active),
                lambda op: rank(op[0], op[1], k), lambda op: jnp.zeros((k,), jnp.int32),
                (ll, w))
        return rank(ll, w, k)

    def repair(params, estats, data):
        return reseed_empty(params, None, None, *data[:2], nk=estats[0].nk,
                            candidates=estats[1], **r_kw)

    def m_step(estats, data):
        return masked(m_step_from_stats(estats[0], **m_kw))

    if small and not plan.fused:
        def small_e_step(params, data):
            X, w = data[:2]
            xt = data[2] if len(data) > 2 else X.T if inputs is None else inputs
            st, ll = unrolled.e_step_stats(params, xt, w)
            return (st, candidates(st, ll, w, worst_explained)), steps._mean(ll, w)

        return small_e_step, m_step, repair
    if plan is None or not plan.fused:
        # Padded components skip the per-component GEMMs (plan.active_loop).
        loop_active = n_active if plan is not None and plan.active_loop else None

        def dense_e_step(params, data):
            log_resp, ll = steps.e_step_full(params, data[0], n_features, loop_active,
                                             step_pool)
            return (log_resp, ll), steps._mean(ll, data[1])

        def dense_m_step(estats, data):
            X, w = data
            stats = steps.m_step_stats(jnp.exp(estats[0]), X, covariance_type=covariance_type,
                                       sample_weight=w, n_active=loop_active, pool=step_pool)
            return masked(m_step_from_stats(stats, **m_kw))

        def dense_repair(params, estats, data):
            return reseed_empty(params, estats[0], estats[1], *data, **r_kw)

        return dense_e_step, dense_m_step, dense_repair

    def e_step(params, data):
        X, w = data
        stats, ll = kernels.e_step_stats(params, X, w, plan=plan, center=center, inputs=inputs)
        return (stats, candidates(stats, ll, w, worst_explained)), steps._mean(ll, w)

    return e_step, m_step, repair


#: XLA options of the distributed fit (the others choose theirs by size, emjax._xla): LLVM's
#: optimisation level 1 compiles faster than 2 with the same run time (docs/performance.md).
FIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


def _per_restart(f, keys, *more):
    """``jax.vmap(f)(keys, *more)``; one key is called unbatched (a batch of one traces,
    compiles and runs the batched forms of every operation for nothing)."""
    if keys.shape[0] == 1:
        return jax.tree_util.tree_map(lambda a: a[None], f(keys[0], *(m[0] for m in more)))
    return jax.vmap(f)(keys, *more)


def weighted_mean(X, w):
    """The (``w``-weighted) mean of the rows of ``X``: the centre a fit's passes work about."""
    return jnp.mean(X, 0) if w is None else (w @ X) / jnp.sum(w)


def hard_init(init_method: str) -> bool:
    """Whether ``init_method`` starts from centres (every method but ``"random"``)."""
    return init_method != "random"


def _centers_program(X, key, sample_weight, n_active=None, *, n_components, n_init,
                     init_method, n_lloyd, unrolled_steps, shifted):
    """The centres ``(n_init, n_components, n_features)`` of the hard initialisation of each
    restart, in the coordinates of ``X`` minus its mean (the draws of :func:`_fit_program`'s
    own). A program of its own, so the fits of every covariance type on the same data (a
    model-selection sweep) share it: it does not depend on the covariance type.

    ``key``: the fit's key, or its ``n_init`` keys split on the host (``(n_init, 2)`` raw key
    data, :func:`emjax._threefry.split`: the same values, and no threefry in the program).
    ``unrolled_steps``: computed as the unrolled steps do (on ``X^T``); ``shifted``: on ``X``
    with the mean subtracted inside the passes (the fused pass), else on a centred copy."""
    w = sample_weight
    shift = weighted_mean(X, w)
    keys = _threefry.program_keys(key, n_init)
    kw = dict(sample_weight=w, n_lloyd=n_lloyd, n_active=n_active)
    if unrolled_steps:
        Xc = X - shift
        xt = Xc.T
        return _per_restart(lambda k: unrolled.init_centers(
            k, Xc, xt, n_components, init_params=init_method, **kw), keys)
    Xs, center = (X, shift) if shifted else (X - shift, None)
    return _per_restart(lambda k: _init_centers(
        k, Xs, n_components, init_method, w, n_lloyd, center, None, n_active), keys)


def _fit_program(X, key, sample_weight, initial, tol, ll_prev, n_used=None, max_iter=None,
                 n_active=None, centers0=None, pool=None, n_features=None, *, options, callback,
                 plan):
    # key: the fit's key, or the restarts' keys split on the host ((n_init, 2) raw key data).
    # options.max_iter is the history length; a traced max_iter (<= it) stops the loop.
    # A traced n_active: the first n_active of options.n_components components exist, the
    # others are padding (see make_model). centers0: _centers_program's result for these
    # arguments (else the hard initialisation is computed here). A traced pool: the
    # steps.POOL code of the covariance type this full or diagonal fit computes (plan.pooled_type).
    # A traced n_features: X's columns after the first n_features are zero padding (a tiny fit).
    n_components, covariance_type, init_method, reg_covar, history_size, n_init, n_lloyd = options
    if max_iter is None:
        max_iter = history_size
    weights_init, means_init, precisions_init = initial
    w = sample_weight
    shift = weighted_mean(X, w)
    keys = _threefry.program_keys(key, n_init)
    # Fast path: initialisation and EM both run on X itself, each chunk centred at `shift` inside
    # the passes, so a large X is held once (no centred copy). Small problems centre a copy.
    fast = plan.fused
    small = plan.unrolled and not fast
    active = kmeans.active_centers(n_components, n_active)
    Xc = None if fast else X - shift
    xt = Xc.T if small else None  # what the unrolled steps read, built once
    if n_features is not None and (fast or small or covariance_type != "full"):
        raise ValueError("padded features need full covariances on the dense steps")

    d = X.shape[1]
    if fast:
        # What every iteration's pass reads (X^T, or the features [q, x - shift, 1]), built once.
        e_step, m_step, repair = make_model(covariance_type, reg_covar, plan=plan, center=shift,
                                            inputs=kernels.prepare(plan, X, shift),
                                            active=active, pool=pool, n_features=n_features)
        data = (X, w)
    else:
        e_step, m_step, repair = make_model(covariance_type, reg_covar, plan=plan, active=active,
                                            pool=pool, n_features=n_features, n_active=n_active)
        # X^T in the data, not in a closure: the compacting batch rule sees only arguments.
        data = (Xc, w, xt) if small else (Xc, w)
    run = functools.partial(em.run_restarts, e_step, m_step, data=data, tol=tol,
                            max_iter=max_iter, repair=repair, callback=callback,
                            vmap_chunk=plan.compact if small else 0, history_size=history_size,
                            sequential=plan.sequential_restarts)
    run_from_params = functools.partial(run, ll_prev=ll_prev)
    init_kw = dict(covariance_type=covariance_type, init_params=init_method, sample_weight=w,
                   n_lloyd=n_lloyd)
    if initial.complete:
        # A complete start: no initialisation is computed (nor compiled) only to be replaced.
        given = GMMParams(weights_init, means_init if fast else means_init - shift,
                          precisions_init)
        params0 = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (n_init,) + a.shape),
                                         given)
        res = run_from_params(params0)
    elif initial.given:
        def initial_params(k):
            p = init_params(k, X if fast else Xc, n_components, reg_covar=reg_covar,
                            center=shift if fast else None, **init_kw)
            if weights_init is not None:
                p = p._replace(weights=weights_init)
            if means_init is not None:
                p = p._replace(means=means_init - shift)
            if precisions_init is not None:
                p = p._replace(covariance=precisions_init)
            return p

        params0 = _per_restart(initial_params, keys)
        if fast:
            params0 = params0._replace(means=params0.means + shift)
        res = run_from_params(params0)
    else:
        # The initial parameters are the M-step of the initial responsibilities' statistics,
        # computed by the EM loop's own M-step (one copy of it in the compiled program).
        given = centers0 is not None
        if fast:
            def stats0(k, c=None):
                st = init_stats(k, X, n_components, center=shift, n_active=n_active,
                                centers=c, **init_kw)
                return (st._replace(ref=st.ref + shift), jnp.zeros((n_components,), jnp.int32))
        elif small:
            def stats0(k, c=None):
                if init_method == "random":
                    g = uniform_responsibilities(k, 0, X.shape[0], n_components, X.dtype,
                                                 active).T
                    st = unrolled.stats(g, xt, w, covariance_type=covariance_type)
                else:
                    st = unrolled.init_stats(k, Xc, xt, n_components, n_active=n_active,
                                             centers=c, **init_kw)
                return (st, jnp.zeros((n_components,), jnp.int32))
        else:
            def stats0(k, c=None):
                r = responsibilities_init(k, Xc, n_components, init_method, w, n_lloyd,
                                          n_active=n_active, centers=c)
                return (jnp.log(r), jnp.zeros(X.shape[:1], X.dtype))
        cls = cov_lib.COVARIANCE_CLASSES[covariance_type]
        shape = cov_lib.covariance_shape(covariance_type, n_components, d)
        template = GMMParams(jnp.zeros((n_components,), X.dtype),
                             jnp.zeros((n_components, d), X.dtype),
                             cls(jnp.zeros(shape, X.dtype), jnp.zeros(shape, X.dtype)))
        params0 = jax.tree_util.tree_map(
            lambda a: jnp.broadcast_to(a, (n_init,) + a.shape), template)
        res = run(params0, estats0_batched=_per_restart(stats0, keys, *([centers0] * given)))
    if not fast:
        res = steps.uncentre(res, shift)
    if n_used is not None:  # restarts padded to a size class: the extra ones never win
        used = jnp.arange(n_init) < n_used
        best = em.best_index(jnp.where(used, res.log_likelihood, -jnp.inf))
        b = em.select(res, best)
        return FitResult(b.params, b.log_likelihood, b.n_iter, b.converged, b.status, b.history,
                         best, res)
    return em.best_restart(res)


_FIT_STATIC = ("options", "callback", "plan")
#: The compiled fit for each set of XLA options (:meth:`PassPlan.compiler_options`): level 1
#: compiles faster than 2 with the same run time; small problems compile faster still at
#: level 0 and without the fusion emitters, and run slower (docs/performance.md).
_FIT_JITTED: dict = {}


def _fit_jitted(plan: plan_lib.PassPlan):
    """The jitted fit with ``plan``'s compiler options."""
    options = plan.compiler_options()
    key = tuple(sorted(options.items()))
    if key not in _FIT_JITTED:
        _FIT_JITTED[key] = jax.jit(_fit_program, static_argnames=_FIT_STATIC,
                                   compiler_options=options)
    return _FIT_JITTED[key]


_fit_compiled = _fit_jitted(plan_lib.PassPlan("diag"))  # level 1, fusion emitters: large fits


#: The initialisation's centres (:func:`_centers_program`), for each set of XLA options.
_centers_compiled = _xla.JitByOptions(
    _centers_program, static_argnames=("n_components", "n_init", "init_method", "n_lloyd",
                                       "unrolled_steps", "shifted"))


def compiled_programs() -> int:
    """The number of fitting programs held in memory (every option set, and those of the disk
    cache), the initialisations' included."""
    return (sum(f._cache_size() for f in _FIT_JITTED.values()) + len(_EXECUTABLES)
            + _centers_compiled._cache_size())
# Inside a caller's trace: a nested jit may not carry compiler options.
_fit_nested = jax.jit(_fit_program, static_argnames=_FIT_STATIC)


def fit(
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
    weights_init=None,
    means_init=None,
    precisions_init=None,
    params_init: GMMParams | None = None,
    sample_weight=None,
    n_lloyd: int = 10,
    callback: Callable | None = None,
    plan: plan_lib.PassPlan | None = None,
    missing: str = "error",
    previous_log_likelihood: float | None = None,
) -> FitResult:
    """Fit a Gaussian mixture by EM: ``n_init`` restarts in one compiled, vmapped program.

    Computes in ``X``'s precision (float32 stays float32; float64 needs JAX's x64 mode, which
    :class:`emjax.GaussianMixture` switches on for you; a list or integers in JAX's default
    float, as ``jnp.asarray`` reads them). The same ``key`` gives the same result,
    bit for bit, on the same machine.

    Args:
      X: ``(n_samples, n_features)`` data.
      n_components: number of mixture components.
      key: PRNG key for initialisation (``jax.random.key(seed)``), or an int seed in
        ``[0, 2**32)``; default ``jax.random.key(0)``.
      covariance_type: ``"full"``, ``"tied"``, ``"diag"`` or ``"spherical"``.
      tol: stop when the mean log-likelihood changes by less than this (``0``: run ``max_iter``).
      reg_covar: non-negative regularisation added to covariance diagonals.
      max_iter: maximum EM iterations per restart; ``0`` only initialises (``n_iter == 0``;
        the log-likelihood is that of the initial parameters).
      n_init: number of restarts, run in parallel through ``jax.vmap``.
      init_params: ``"kmeans"``, ``"k-means++"``, ``"random"`` or ``"random_from_data"``.
      weights_init, means_init, precisions_init: optional user-given initial values
        (scikit-learn's shapes); any not given comes from ``init_params``.
      params_init: a complete :class:`GMMParams` to start every restart from.
      sample_weight: optional ``(n_samples,)`` non-negative weights.
      n_lloyd: Lloyd steps after k-means++ for ``init_params="kmeans"``.
      callback: optional ``callback(n_iter, log_likelihood, converged)`` traced into the loop.
      plan: optional static :class:`emjax.gmm.plan.PassPlan` of the E-step pass (default
        :func:`emjax.gmm.plan.make_plan` of this problem on the default backend; see
        :func:`emjax.explain_plan`); any plan gives the same fit up to rounding.
      missing: ``"error"`` (default): NaN in ``X`` is an error. ``"marginalize"``: NaN entries
        are missing at random and marginalised exactly (:func:`emjax.gmm.missing.fit`; the
        log-likelihood is the observed-data one); without NaN the fit is the usual one.
      previous_log_likelihood: with ``params_init`` continuing an earlier fit (a warm start):
        that fit's log-likelihood before its last iteration, ``history[n_iter - 1]``; the
        convergence test goes on from it, so that fits of a few iterations each converge as one
        long fit would (see :func:`emjax.em.run`'s ``ll_prev``).

    Returns:
      :class:`FitResult`.

    Raises:
      ValueError: on NaN/inf data, wrong rank, ``n_components > n_samples``, an unknown
        covariance type or initialisation, non-positive hyper-parameters or mis-shaped inits.

    Examples:
      >>> import jax, numpy as np, emjax
      >>> X = np.random.default_rng(0).normal(size=(200, 2)).astype(np.float32)
      >>> res = emjax.fit(X, 2, key=jax.random.key(0), n_init=4)
      >>> res.params.means.shape
      (2, 2)
    """
    if missing != "error":
        from emjax.gmm import missing as missing_lib  # opt-in: NaN entries marginalised

        if missing_lib.marginalizes(X, missing):
            return missing_lib.fit(
                X, n_components, key=key, covariance_type=covariance_type, tol=tol,
                reg_covar=reg_covar, max_iter=max_iter, n_init=n_init, init_params=init_params,
                weights_init=weights_init, means_init=means_init,
                precisions_init=precisions_init, params_init=params_init,
                sample_weight=sample_weight, n_lloyd=n_lloyd, callback=callback)
    traced = v.is_traced(X, key, sample_weight, weights_init, means_init, precisions_init,
                         params_init, previous_log_likelihood)
    if not traced:
        # An int seed as raw key data: no program of its own builds the key.
        key = v.as_key_data(key)
    c = check_fit(X, n_components, key=key, covariance_type=covariance_type, tol=tol,
                  reg_covar=reg_covar, max_iter=max_iter, n_init=n_init, init_params=init_params,
                  n_lloyd=n_lloyd, sample_weight=sample_weight, weights_init=weights_init,
                  means_init=means_init, precisions_init=precisions_init,
                  params_init=params_init, min_iter=0, traced=traced,
                  read=functools.partial(v.as_data, nan_hint=v.MISSING_HINT))
    o = c.options
    Xa, w, dtype = c.X, c.sample_weight, c.X.dtype
    n, d = Xa.shape
    if previous_log_likelihood is None:
        previous_log_likelihood = -np.inf
    elif params_init is None:
        raise ValueError("previous_log_likelihood continues a fit: it needs params_init")
    if traced:
        # Inside a caller's trace: no padding, nothing raised on values; the fit is inlined.
        if plan is None:
            plan = plan_lib.make_plan(o.covariance_type, dtype, n, d, o.n_components)
        return _fit_nested(Xa, c.key, w, c.initial, jnp.asarray(c.tol, dtype),
                           jnp.asarray(previous_log_likelihood, dtype), options=o,
                           callback=callback, plan=plan)
    scale_problem = v.reg_covar_problem(Xa, o.reg_covar)
    if scale_problem:
        warnings.warn(scale_problem, stacklevel=2)
    n_rows = padded_rows(n, Xa.nbytes // n)
    n_features = tiny = k_class = None
    n_components = o.n_components
    padded = n_rows is not None and plan is None and not c.initial.given
    if padded:
        # The rows' size class; tiny data: zero columns whose covariance block the M-step keeps
        # at the identity (so they change no log-density), one program for every tiny data set;
        # components up to their class, the extra ones padding (weight 0, never re-seeded).
        shape = plan_lib.run_shape(
            o.covariance_type, n, d, n_components, Xa.nbytes // n,
            n if w is None else int(np.count_nonzero(w)),
            pad_components=callback is None and draws_per_index())
        n_rows, k_class = shape.rows, shape.component_class
        if shape.tiny:
            tiny, n_features = shape.features, np.int32(d)
    if n_rows is not None:
        # Zero-weight rows up to the size class: fits of nearby sizes share one program.
        Xa, w = pad_rows(Xa, w, n_rows)
    if tiny is not None and d < tiny:
        Xa = np.concatenate([Xa, np.zeros((n_rows, tiny - d), Xa.dtype)], axis=1)
        d = tiny
    n_active = None if k_class is None else np.int32(n_components)
    k_class = k_class or n_components
    requested, pool = o.covariance_type, None
    if plan is None:  # planned for the rows and components the program runs on
        plan, pools = plan_lib.run_plan(o.covariance_type, dtype, Xa.shape[0], d, k_class,
                                        padded=padded, tiny=n_features is not None)
        if pools:  # the program of the type the M-step pools from (the same values)
            pool = np.int32(steps.POOL[requested])
            o = o._replace(covariance_type=plan.covariance_type)
    elif not isinstance(plan, plan_lib.PassPlan) or plan.covariance_type != o.covariance_type:
        raise ValueError(f"plan must be a PassPlan for covariance_type={o.covariance_type!r}, "
                         f"got {plan!r}")
    # NumPy arguments go to the device with the call: converting them first would compile
    # (and, in a new process, load) a small program each.
    args = (c.key, w, c.initial, np.asarray(c.tol, dtype),
            np.asarray(previous_log_likelihood, dtype))
    n_init, max_iter = o.n_init, o.max_iter
    pad_restarts = (n_rows is not None and callback is None
                    and draws_per_index())
    # Restarts up to their size class (the first n_init keys of a longer split are the same):
    # nearby n_init share one program; the extra restarts are dropped.
    n_used = np.int32(n_init) if pad_restarts else None
    # max_iter is an argument and the history as long as its class: one program for many.
    args = (*args, n_used, np.int32(max_iter), n_active)
    o = o._replace(n_init=restart_class(n_init) if pad_restarts else n_init,
                   max_iter=history_class(max_iter), n_components=k_class)
    # the restarts' keys split here when they can be, so that neither program splits them
    args = (_threefry.restart_keys(c.key, o.n_init), *args[1:])
    static = dict(options=o, callback=callback, plan=plan)
    init = None
    if not c.initial.given and hard_init(o.init_params):
        # The initialisation's centres come from a program of their own, which the fits of
        # every covariance type on these data share (a model-selection sweep compiles it once).
        init = (tuple(sorted(plan.compiler_options().items())), (args[0], w, n_active),
                dict(n_components=k_class, n_init=o.n_init, init_method=o.init_params,
                     n_lloyd=o.n_lloyd, unrolled_steps=plan.unrolled and not plan.fused,
                     # a centred copy of small data: the fused fits share the program too
                     shifted=plan.fused and n_rows is None))
    centers_spec = None if init is None else jax.ShapeDtypeStruct((o.n_init, k_class, d), dtype)
    args = (*args, centers_spec, pool, n_features)
    jitted = _fit_jitted(plan)
    _bound_programs(Xa.shape, dtype, args, static)
    compiled = init_compiled = None
    slot = None
    if n_rows is not None:
        # With the disk cache on, a new process loads a small fit's programs without tracing.
        slot = _compile_cache.lookup(jitted, (Xa, *args), static, _EXECUTABLES, "fit")
    if slot is not None:
        compiled, init_compiled = _compile_overlapped(
            (functools.partial(jitted.lower, Xa, *args, **static), slot),
            _init_job(init, jax.ShapeDtypeStruct(Xa.shape, dtype), stored=True))
    else:
        # Before the data goes to the device (large data), and the initialisation's compile
        # meanwhile (a first fit's two programs at once).
        _compile_first(Xa, args, static, init)
    # On CPU, device_put uses a 64-byte-aligned NumPy buffer in place (no copy; JAX never writes
    # to it) and copies any other one, so aligned data near the memory limit is held once.
    Xd = jax.device_put(Xa)
    if init is not None:
        options, init_args, init_static = init
        centers0 = (_centers_compiled.call(options, (Xd, *init_args), init_static, "fit_init")
                    if init_compiled is None else init_compiled(Xd, *init_args))
        args = (*args[:-3], centers0, pool, n_features)
    if compiled is None:
        with _compile_cache.gc_paused():  # a first call traces
            res = jitted(Xd, *args, **static)
    else:
        res = compiled(Xd, *args)
    pooled = o.covariance_type != requested
    if (o.n_init != n_init or o.max_iter != max_iter or k_class != n_components or pooled
            or n_features is not None):
        # Drop the padded restarts, history entries, components and features on the host
        # (slicing device arrays would compile a small program per shape); pooled covariances
        # in their form.
        res = jax.tree_util.tree_map(np.asarray, res)
        res = res._replace(restarts=jax.tree_util.tree_map(lambda a: a[:n_init], res.restarts))
        res = res.first_iterations(max_iter)
        if n_features is not None:
            res = _real_features(res, int(n_features))
        if pooled:
            res = each_params(res, lambda p, lead: steps.from_pooled(p, requested, lead=lead))
        res = jax.device_put(first_components(res, n_components))
    if _shares_memory(Xd, Xa):
        # The fit runs asynchronously: finish it before returning, so that a later change to the
        # caller's array cannot reach a running fit.
        jax.block_until_ready(res)
    return res


def _real_features(res: FitResult, d: int) -> FitResult:
    """``res`` (NumPy leaves) of a full fit on ``d`` features padded with zero columns: its
    parameters on those ``d`` (the padded block of every covariance and factor is the
    identity, so the rest is exact)."""

    def cut(p, lead):
        cov = type(p.covariance)(*(a[..., :d, :d] for a in p.covariance))
        return GMMParams(p.weights, p.means[..., :d], cov)

    return each_params(res, cut)


def each_params(res: FitResult, fn) -> FitResult:
    """``res`` with ``fn(params, lead)`` applied to the best restart's parameters (``lead`` 0)
    and to every restart's (``lead`` 1, the restart axis)."""
    return res._replace(params=fn(res.params, 0),
                        restarts=res.restarts._replace(params=fn(res.restarts.params, 1)))


def first_components(res: FitResult, k: int) -> FitResult:
    """``res`` without the padding components after the first ``k``
    (:func:`emjax.gmm.steps.first_components`; NumPy leaves: slicing device arrays would
    compile a small program per shape)."""
    return each_params(res, lambda p, lead: steps.first_components(p, k, lead=lead))


#: Compiled fitting programs kept in memory; beyond it the cache is cleared (the disk cache,
#: when on, still has them).
MAX_PROGRAMS = 64

_PROGRAMS: dict = {}
#: Compiled fits loaded from (or written to) the disk cache, by fingerprint (see
#: :func:`emjax._compile_cache.load_or_compile`); bounded with the others.
_EXECUTABLES: dict = {}


def _bound_programs(shape, dtype, args: tuple, static: dict) -> None:
    """Clear the fitting programs' in-memory cache when a new one would exceed
    :data:`MAX_PROGRAMS`, so a long-running process holds a bounded number of them."""
    try:
        sig = (shape, np.dtype(dtype).str, jax.tree_util.tree_structure(args),
               tuple(sorted(static.items(), key=lambda kv: kv[0])))
        hash(sig)
    except TypeError:
        return
    if sig in _PROGRAMS:
        return
    if len(_PROGRAMS) >= MAX_PROGRAMS:
        for jitted in _FIT_JITTED.values():
            jitted.clear_cache()
        _centers_compiled.clear()
        _PROGRAMS.clear()
        _PRECOMPILED.clear()
        _EXECUTABLES.clear()
    _PROGRAMS[sig] = None


#: Data of at least this many bytes is fitted by a program compiled before the data is put on the
#: device (see :func:`_compile_first`).
LARGE_DATA_BYTES = 2**26

_PRECOMPILED: set = set()


@functools.cache
def _second_thread() -> concurrent.futures.ThreadPoolExecutor:
    """The thread a fit's initialisation compiles (or loads) on, made once."""
    return concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="emjax-compile")


def _compile_overlapped(*jobs):
    """The compiled program of each ``job = (lower, slot)`` (None for a None job):
    ``slot.compiled`` when the disk cache's :class:`emjax._compile_cache.Slot` holds it, else
    ``lower()`` compiled (and kept in ``slot`` when there is one).

    Tracing and lowering are Python, under its lock: two threads doing them at once only wait
    for each other. So this thread lowers the programs one after the other, and each but the
    last compiles on :func:`_second_thread` while this one lowers the next (XLA compiles
    without the lock, and a small program's LLVM passes use one core); the caller's JAX
    settings (``jax.enable_x64``, the estimator's float64 context) apply to every lowering.
    """
    results = [None if job is None else job[1] and job[1].compiled for job in jobs]
    todo = [i for i, job in enumerate(jobs) if job is not None and results[i] is None]
    done = {}  # i -> a call giving (compiled, fresh)
    with _compile_cache.gc_paused():
        for n, i in enumerate(todo):
            compile_ = functools.partial(_compile_cache.compile_lowered, jobs[i][0](),
                                         jobs[i][1] is not None)
            if n < len(todo) - 1:
                done[i] = _second_thread().submit(compile_).result
            else:
                out = compile_()
                done[i] = lambda out=out: out
        for i, result in done.items():
            compiled, fresh = result()
            slot = jobs[i][1]
            # the file written on the second thread: the fit needs only the program
            results[i] = (compiled if slot is None
                          else slot.keep(compiled, fresh, _second_thread().submit))
    return results


def _init_job(init, X_spec, stored: bool):
    """The :func:`_compile_overlapped` job of the initialisation ``init`` (its ``(options,
    args, static)``, or None: no job) for data ``X_spec``, with its disk-cache slot when
    ``stored``."""
    if init is None:
        return None
    options, init_args, init_static = init
    init_in = (X_spec, *init_args)
    slot = (_centers_compiled.lookup(options, init_in, init_static, "fit_init") if stored
            else None)
    return functools.partial(_centers_compiled[options].lower, *init_in, **init_static), slot


def _compile_first(Xa: np.ndarray, args: tuple, static: dict, init=None) -> None:
    """Compile the fitting program for ``Xa``'s shape (and ``init``, its initialisation's
    ``(options, args, static)``) before ``Xa`` is put on the device.

    The two programs compile at once (:func:`_compile_overlapped`). Compiling takes a few
    hundred MiB of heap for a moment; done while only the host copy of large data exists, and
    with the freed heap handed back to the OS (glibc's ``malloc_trim``), that memory is not
    stacked on the device copy. The calls that follow find both programs in JAX's caches (no
    second trace or compile; with the disk cache on, JAX's keeps them for a new process).
    """
    sig = (Xa.shape, Xa.dtype.str, jax.tree_util.tree_structure(args),
           tuple(getattr(a, "shape", None) for a in jax.tree_util.tree_leaves(args)),
           tuple(sorted(static.items(), key=lambda kv: kv[0])),
           None if init is None else (init[0], tuple(sorted(init[2].items()))))
    try:
        hash(sig)
    except TypeError:
        return
    if sig in _PRECOMPILED:
        return
    X_spec = jax.ShapeDtypeStruct(Xa.shape, Xa.dtype)
    _compile_overlapped(
        (functools.partial(_fit_jitted(static["plan"]).lower, X_spec, *args, **static), None),
        _init_job(init, X_spec, stored=False))
    _PRECOMPILED.add(sig)
    if Xa.nbytes < LARGE_DATA_BYTES:
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the freed heap stays with the process
        pass


def _shares_memory(x: Array, a: np.ndarray) -> bool:
    """Whether the device array ``x`` is ``a``'s own buffer (zero-copy ``device_put`` on CPU)."""
    try:
        return x.unsafe_buffer_pointer() == a.__array_interface__["data"][0]
    except Exception:  # not a single-device buffer, or no pointer on this backend
        return False
