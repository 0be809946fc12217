"""Model selection: a grid of ``n_components`` x restarts fitted in one compiled program.

Every grid point's components are padded to ``K_max`` and masked (zero weight, excluded from every
statistic, never re-seeded), so one ``vmap`` over grid points of a ``vmap`` over restarts runs
the whole grid as a single ``lax.while_loop``. Each covariance type is one compiled call.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from emjax import _sizes, _xla, em
from emjax import _validation as v
from emjax.gmm import GMMParams, fitting, steps
from emjax.gmm import covariance as cov_lib
from emjax.gmm import plan as plan_lib
from emjax.gmm import reseed as reseed_lib
from emjax.gmm.options import check_fit
from emjax.gmm.steps import mask_params

Array = jax.Array

CRITERIA = ("bic", "aic")


class GridResult(NamedTuple):
    """All fits of one covariance type over a grid of ``n_components`` (one compiled call).

    ``G`` grid points, ``R`` restarts, ``K_max = max(n_components)``. Parameters are padded: the
    components ``k >= n_components[g]`` of grid point ``g`` have weight 0 (use
    :func:`grid_params` to get an unpadded :class:`~emjax.gmm.GMMParams`). A pytree whose
    ``covariance_type`` is static (:class:`SelectionResult`: ``criterion`` and
    ``covariance_type`` too).

    Attributes:
      covariance_type: the covariance type of every fit.
      n_components: ``(G,)`` int, the grid.
      params: :class:`GMMParams` with leading axes ``(G, R)`` and ``K_max`` components.
      active: ``(G, K_max)`` bool, which components exist at each grid point.
      log_likelihood: ``(G, R)`` mean log-likelihood per sample at the fitted parameters.
      n_iter, converged, status: ``(G, R)`` (see :class:`emjax.em.EMResult`).
      history: ``(G, R, max_iter)`` log-likelihood traces (NaN after ``n_iter``).
      bic, aic: ``(G, R)`` information criteria of every restart (lower is better).
      n_parameters: ``(G,)`` free parameters of each grid point's model.
      best_index: ``(G,)`` the best restart (highest log-likelihood) of each grid point.
      compile_seconds: wall time to trace and compile the programs (or to find them in the
        in-memory or disk cache).
      run_seconds: wall time of the compiled calls (the initialisation, then EM for all grid
        points and restarts together).
    """

    covariance_type: str
    n_components: np.ndarray
    params: GMMParams
    active: np.ndarray
    log_likelihood: np.ndarray
    n_iter: np.ndarray
    converged: np.ndarray
    status: np.ndarray
    history: np.ndarray
    bic: np.ndarray
    aic: np.ndarray
    n_parameters: np.ndarray
    best_index: np.ndarray
    compile_seconds: float
    run_seconds: float


# A pytree whose covariance type is static (a str leaf broke tree_map, device_put and jit).
jax.tree_util.register_dataclass(
    GridResult, data_fields=[f for f in GridResult._fields if f != "covariance_type"],
    meta_fields=["covariance_type"])


class SelectionResult(NamedTuple):
    """Grids over one or more covariance types and the model chosen by a criterion.

    Attributes:
      grids: one :class:`GridResult` per covariance type, in the order given.
      criterion: ``"bic"`` or ``"aic"``.
      covariance_type, n_components: the chosen grid point.
      params: the chosen model (best restart of the chosen grid point), unpadded.
    """

    grids: tuple
    criterion: str
    covariance_type: str
    n_components: int
    params: GMMParams


jax.tree_util.register_dataclass(SelectionResult, data_fields=["grids", "n_components", "params"],
                                 meta_fields=["criterion", "covariance_type"])


def make_masked_model(covariance_type: str, reg_covar: float, empty_threshold: float = 1e-3,
                      pool: Array | None = None, pool_branches: bool = False):
    """The padded, masked GMM as the driver sees it, over ``data = (X, w, active)``.

    The same steps as :func:`fitting.make_model`, except that inactive components get
    log-weight ``-inf`` in the E-step (so responsibility exactly 0 and no part in any statistic),
    are reset to the padding values after the M-step, and are never re-seeded. ``pool``: as in
    :func:`fitting.make_model` (a full or diagonal grid computing another covariance type);
    ``pool_branches`` (static): as :attr:`emjax.gmm.plan.PassPlan.pool_branches`.
    """
    step_pool = pool if pool_branches else None

    def e_step(params, data):
        X, w, active = data
        log_w = jnp.log(jnp.where(active, params.weights, 1.0))
        wlp = jnp.where(active[None, :],
                        steps.component_log_prob(params, X, pool=step_pool) + log_w[None, :],
                        -jnp.inf)
        ll = logsumexp(wlp, axis=1)
        return (wlp - ll[:, None], ll), steps._mean(ll, w)

    def m_step(estats, data):
        return masked_m_step(jnp.exp(estats[0]), data, covariance_type=covariance_type,
                             reg_covar=reg_covar, pool=pool, pool_branches=pool_branches)

    def repair(params, estats, data):
        X, w, active = data
        log_resp, ll = estats
        return reseed_lib.reseed_empty(params, log_resp, ll, X, w, covariance_type=covariance_type,
                                    empty_threshold=empty_threshold, active=active, pool=pool)

    return e_step, m_step, repair


def masked_m_step(gamma: Array, data, *, covariance_type: str, reg_covar: float,
                  pool: Array | None = None, pool_branches: bool = False) -> GMMParams:
    """The M-step of the padded model from responsibilities ``gamma`` ``(n_samples, K_max)``
    (zero in inactive columns) over ``data = (X, w, active)`` (``pool``, ``pool_branches``: see
    :func:`emjax.gmm.steps.params_from_stats_checked`)."""
    X, w, active = data
    stats = steps.m_step_stats(gamma, X, covariance_type=covariance_type, sample_weight=w,
                               pool=pool if pool_branches else None)
    p = steps.params_from_stats_checked(stats, covariance_type=covariance_type,
                                        reg_covar=reg_covar, pool=pool,
                                        pool_branches=pool_branches)[0]
    return mask_params(p, active)


class _GridArrays(NamedTuple):
    params: GMMParams
    active: Array
    res: em.EMResult
    bic: Array
    aic: Array
    best_index: Array


def _centre(X, w):
    shift = fitting.weighted_mean(X, w)
    return X - shift, shift


def _initial_responsibilities_program(X, key, sample_weight, ks, *, k_max, n_init,
                                      init_method, n_lloyd):
    """``(G, R, n_samples, K_max)`` initial responsibilities, zero in padded columns: for each K
    of the grid ``ks`` ``(G,)`` (traced), :func:`fitting.responsibilities_init` of ``K_max``
    components with the first K active (the draws of K components) on the centred data, with
    the restart keys of :func:`fitting.fit`. One k-means, vmapped over the grid and the
    restarts: grids of the same length and ``K_max`` share the program, and so does every
    covariance type."""
    w = sample_weight
    Xc, _ = _centre(X, w)
    keys = jax.random.split(key, n_init)  # the same restart keys for every K, as in fit()

    def initial_resp(k):
        def one(rk):
            return fitting.responsibilities_init(rk, Xc, k_max, init_method, w, n_lloyd,
                                                 n_active=k)
        return jax.vmap(one)(keys)

    return jax.vmap(initial_resp)(ks)


#: One per set of XLA options (:func:`emjax._xla.compiler_options`), as :data:`_grid_compiled`.
_initial_responsibilities = _xla.JitByOptions(
    _initial_responsibilities_program, static_argnames=("k_max", "n_init", "init_method",
                                                        "n_lloyd"))


def _grid_program(X, resp0, sample_weight, tol, ks, n_parameters, pool=None, *,
                  covariance_type, reg_covar, max_iter, callback, pool_branches=False):
    # ks (G,) and n_parameters (G,) are traced: grids of one length and K_max share a program.
    # A traced pool: the steps.POOL code of the covariance type this full or diagonal grid
    # computes (plan.pooled_type: a sweep over covariance types shares the program).
    w = sample_weight
    n, d = X.shape
    Xc, shift = _centre(X, w)
    k_max = resp0.shape[-1]
    active = jnp.arange(k_max)[None, :] < ks[:, None]
    e_step, m_step, repair = make_masked_model(covariance_type, reg_covar, pool=pool,
                                               pool_branches=pool_branches)

    # fitting.init_params = responsibilities + one M-step; here one vmapped masked M-step.
    def init_m_step(g, act):
        return masked_m_step(g, (Xc, w, act), covariance_type=covariance_type,
                             reg_covar=reg_covar, pool=pool, pool_branches=pool_branches)

    params0 = jax.vmap(jax.vmap(init_m_step, in_axes=(0, None)))(resp0, active)

    def per_grid_point(p0, act):
        return em.run_restarts(e_step, m_step, p0, (Xc, w, act), tol=tol, max_iter=max_iter,
                               repair=repair, callback=callback)

    res = jax.vmap(per_grid_point)(params0, active)
    res = steps.uncentre(res, shift)
    n_eff = n if w is None else jnp.sum(w)
    p = n_parameters
    total = n_eff * res.log_likelihood
    bic = -2.0 * total + p[:, None] * jnp.log(jnp.asarray(n_eff, X.dtype))
    aic = -2.0 * total + 2.0 * p[:, None]
    best = jax.vmap(em.best_index)(res.log_likelihood)
    return _GridArrays(res.params, active, res, bic, aic, best)


#: The compiled grid, one per set of XLA options (:func:`emjax._xla.compiler_options`).
_grid_compiled = _xla.JitByOptions(
    _grid_program, static_argnames=("covariance_type", "reg_covar", "max_iter", "callback",
                                    "pool_branches"))


def _check_grid(n_components) -> tuple:
    if isinstance(n_components, (int, np.integer)) and not isinstance(n_components, bool):
        ks = tuple(range(1, int(n_components) + 1))
    else:
        ks = tuple(n_components)
    if not ks:
        raise ValueError("n_components must be a positive int or a non-empty sequence of them")
    for k in ks:
        v.check_positive_int(k, "every n_components")
    if len(set(ks)) != len(ks):
        raise ValueError(f"n_components has repeated values: {list(ks)}")
    return tuple(int(k) for k in ks)


def fit_grid(
    X,
    n_components: int | Sequence[int],
    *,
    key: Array | None = None,
    covariance_type: str = "full",
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    max_iter: int = 100,
    n_init: int = 1,
    init_params: str = "kmeans",
    sample_weight=None,
    n_lloyd: int = 10,
    callback: Callable | None = None,
    missing: str = "error",
) -> GridResult:
    """Fit every ``n_components`` of a grid x ``n_init`` restarts in one compiled EM call.

    Grid point ``K`` with key ``key`` gives, to rounding, what ``emjax.fit(X, K, key=key,
    n_init=n_init, ...)`` gives (the same initialisations, the same EM steps): its components are
    padded to ``max(n_components)`` and masked. The cost is that of ``len(grid) * n_init`` fits
    with ``K_max`` components, all in one vmapped ``while_loop`` (it runs until the slowest lane
    has finished; finished lanes are frozen). The initial responsibilities (one k-means vmapped
    over the grid) are a separate compiled call that does not depend on the covariance type, so
    a second covariance type on the same data and grid reuses it; the grid's values are
    arguments, so grids of one length and ``K_max`` share both programs.

    Args:
      X: ``(n_samples, n_features)`` data (float32, or float64 with JAX's x64 mode on).
      n_components: an int ``K_max`` (the grid ``1..K_max``) or a sequence of ints.
      key: PRNG key (default ``jax.random.key(0)``); every grid point uses the same restart keys.
      covariance_type, tol, reg_covar, max_iter, n_init, init_params, sample_weight, n_lloyd:
        as in :func:`fitting.fit`.
      callback: optional ``callback(n_iter, log_likelihood, converged)`` traced into the loop
        (e.g. :func:`emjax.progress.make_callback`); it must be hashable (a static argument).
      missing: ``"marginalize"``: NaN entries are marginalised (one
        :func:`emjax.gmm.missing.fit` per ``K``; BIC/AIC from the observed-data
        log-likelihood); default ``"error"``.

    Returns:
      :class:`GridResult` (NumPy arrays, except ``params``).

    Raises:
      ValueError: on invalid data or hyper-parameters (see :func:`fitting.fit`) or when
        ``max(n_components) > n_samples``.
    """
    if missing != "error":
        from emjax.gmm import missing as missing_lib  # opt-in: NaN entries marginalised

        if missing_lib.marginalizes(X, missing):
            return missing_lib.fit_grid(
                X, n_components, key=key, covariance_type=covariance_type, tol=tol,
                reg_covar=reg_covar, max_iter=max_iter, n_init=n_init, init_params=init_params,
                sample_weight=sample_weight, n_lloyd=n_lloyd, callback=callback)
    ks = _check_grid(n_components)
    c = check_fit(X, max(ks), key=key, covariance_type=covariance_type, tol=tol,
                  reg_covar=reg_covar, max_iter=max_iter, n_init=n_init, init_params=init_params,
                  n_lloyd=n_lloyd, sample_weight=sample_weight,
                  read=functools.partial(v.as_data, nan_hint=v.MISSING_HINT))
    Xa, w, key, tol = c.X, c.sample_weight, c.key, c.tol
    _, covariance_type, init_method, reg_covar, max_iter, n_init, n_lloyd = c.options
    n, dtype = Xa.shape[0], Xa.dtype
    n_rows = _sizes.padded_rows(n, Xa.nbytes // n)
    if n_rows is not None:  # as emjax.fit: one program per size class
        Xa, w = _sizes.pad_rows(Xa, w, n_rows)
        n = n_rows
    Xj = jnp.asarray(Xa)
    wj = None if w is None else jnp.asarray(w)
    t0 = time.perf_counter()
    ks_arr = np.asarray(ks, np.int32)
    n_par = np.asarray([steps.n_parameters(covariance_type, k, Xa.shape[1]) for k in ks],
                       dtype)
    init_static = dict(k_max=max(ks), n_init=n_init, init_method=init_method, n_lloyd=n_lloyd)
    init_args = (Xj, key, wj, ks_arr)
    options = _xla.compiler_options("grid", n * Xa.shape[1] * max(ks) * len(ks))
    init_fn = _initial_responsibilities.compile(options, init_args, init_static, "grid_init")
    run_as, pool, branches = covariance_type, None, False
    if n_rows is not None:
        # As emjax.fit: a small grid runs the program of the type its M-step pools from (tied
        # as full, spherical as diagonal; with few features every type as full), the same
        # values, so a sweep over covariance types compiles one or two programs.
        run_as = plan_lib.pooled_type(covariance_type, Xa.shape[1])
        pool = np.int32(steps.POOL[covariance_type])
        # from this many features each pooled type's steps are a branch of the full program
        branches = run_as == "full" and plan_lib.pool_branches(Xa.shape[1])
    args = (Xj, jax.ShapeDtypeStruct((len(ks), n_init, n, max(ks)), dtype), wj,
            jnp.asarray(tol, dtype), ks_arr, n_par, pool)
    static = dict(covariance_type=run_as, reg_covar=reg_covar, max_iter=max_iter,
                  callback=callback, pool_branches=branches)
    grid_fn = _grid_compiled.compile(options, args, static, "grid")
    t1 = time.perf_counter()
    resp0 = init_fn(*init_args)
    out = jax.block_until_ready(grid_fn(Xj, resp0, wj, *args[3:]))
    t2 = time.perf_counter()
    r = out.res
    params = out.params
    if run_as != covariance_type:  # on the host: slicing device arrays compiles a program each
        params = jax.device_put(steps.from_pooled(jax.tree_util.tree_map(np.asarray, params),
                                                covariance_type, lead=2))
    return GridResult(
        covariance_type=covariance_type,
        n_components=np.asarray(ks),
        params=params,
        active=np.asarray(out.active),
        log_likelihood=np.asarray(r.log_likelihood),
        n_iter=np.asarray(r.n_iter),
        converged=np.asarray(r.converged),
        status=np.asarray(r.status),
        history=np.asarray(r.history),
        bic=np.asarray(out.bic),
        aic=np.asarray(out.aic),
        n_parameters=np.asarray([steps.n_parameters(covariance_type, k, Xa.shape[1]) for k in ks]),
        best_index=np.asarray(out.best_index),
        compile_seconds=t1 - t0,
        run_seconds=t2 - t1,
    )


def grid_params(grid: GridResult, index: int, restart: int | None = None) -> GMMParams:
    """The unpadded :class:`GMMParams` of grid point ``index`` (its best restart by default)."""
    r = int(grid.best_index[index]) if restart is None else int(restart)
    k = int(grid.n_components[index])
    return steps.first_components(jax.tree_util.tree_map(lambda a: a[index, r], grid.params), k)


def best_scores(grid: GridResult, criterion: str = "bic") -> np.ndarray:
    """``(G,)`` the criterion of each grid point's best restart."""
    values = getattr(grid, criterion)
    return values[np.arange(len(grid.n_components)), grid.best_index]


def select_model(
    X,
    n_components: int | Sequence[int],
    *,
    covariance_types: str | Sequence[str] = ("full",),
    criterion: str = "bic",
    progress: bool = False,
    **kwargs,
) -> SelectionResult:
    """Fit a grid over ``n_components`` for each covariance type and choose by BIC or AIC.

    Each covariance type is one compiled call of :func:`fit_grid` (its parameter pytree has a
    different structure, so it is a different program); the types run one after the other.

    Args:
      X: ``(n_samples, n_features)``.
      n_components: ``K_max`` or a sequence of ints.
      covariance_types: one type or a sequence of them (``"all"`` for the four); also taken
        as ``covariance_type``, the name :func:`emjax.fit` and the estimator use.
      criterion: ``"bic"`` or ``"aic"``; the chosen model minimises it over every grid point's
        best restart (ties: the first, i.e. fewer components / earlier type).
      progress: show a progress bar on stderr (see :mod:`emjax.progress`).
      **kwargs: passed to :func:`fit_grid` (``key``, ``n_init``, ``tol``, ``max_iter``, ...).

    Returns:
      :class:`SelectionResult`.

    Examples:
      >>> import numpy as np, emjax
      >>> X = np.random.default_rng(0).normal(size=(100, 2)).astype(np.float32)
      >>> sel = emjax.select_model(X, 3, covariance_types=("full", "diag"), n_init=2)
      >>> sel.n_components, sel.covariance_type
      (1, 'diag')
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}; got {criterion!r}")
    if "covariance_type" in kwargs:
        # the singular name of emjax.fit reached fit_grid twice (a TypeError from Python)
        if covariance_types != ("full",):
            raise ValueError("pass covariance_types or covariance_type, not both; got "
                             f"{covariance_types!r} and {kwargs['covariance_type']!r}")
        covariance_types = kwargs.pop("covariance_type")
    types = check_covariance_types(covariance_types)
    grids = []
    for ctype in types:
        if progress:
            from emjax import progress as progress_lib

            ks = _check_grid(n_components)
            lanes = len(ks) * kwargs.get("n_init", 1)
            shape = np.shape(X)
            cb = progress_lib.make_callback(progress_lib.every_for(
                shape[0], shape[-1], max(ks), lanes))
            with progress_lib.ProgressBar(f"{ctype:>9} K={_grid_label(ks)}", lanes,
                                          kwargs.get("max_iter", 100)) as bar:
                g = fit_grid(X, n_components, covariance_type=ctype, callback=cb, **kwargs)
                bar.finish(g.n_iter, g.log_likelihood, g.converged)
            grids.append(g)
        else:
            grids.append(fit_grid(X, n_components, covariance_type=ctype, **kwargs))
    return choose(grids, criterion)


def choose(grids: Sequence[GridResult], criterion: str = "bic") -> SelectionResult:
    """The :class:`SelectionResult` of already fitted grids."""
    best = None
    for gi, grid in enumerate(grids):
        scores = best_scores(grid, criterion)
        for i, s in enumerate(scores):
            if np.isfinite(s) and (best is None or s < best[0]):
                best = (s, gi, i)
    if best is None:
        raise ValueError("no grid point produced a finite criterion")
    _, gi, i = best
    grid = grids[gi]
    return SelectionResult(tuple(grids), criterion, grid.covariance_type,
                           int(grid.n_components[i]), grid_params(grid, i))


def check_covariance_types(covariance_types) -> tuple:
    """A tuple of valid covariance types from one name, ``"all"`` or a sequence."""
    if isinstance(covariance_types, str):
        covariance_types = (cov_lib.COVARIANCE_TYPES if covariance_types == "all"
                            else (covariance_types,))
    types = tuple(covariance_types)
    if not types:
        raise ValueError("covariance_types must name at least one covariance type")
    for t in types:
        v.check_covariance_type(t)
    return types


def _grid_label(ks: Sequence[int]) -> str:
    ks = list(ks)
    if len(ks) > 2 and ks == list(range(ks[0], ks[-1] + 1)):
        return f"{ks[0]}-{ks[-1]}"
    return ",".join(map(str, ks))


def summary_rows(selection: SelectionResult) -> list:
    """One dict per grid point: covariance type, K, the best restart's BIC, AIC and mean
    log-likelihood, the restarts' BIC range, converged restarts, iterations, call time."""
    rows = []
    for grid in selection.grids:
        r = grid.bic.shape[1]
        for i, k in enumerate(grid.n_components):
            b = int(grid.best_index[i])
            bics = grid.bic[i][np.isfinite(grid.bic[i])]
            rows.append(dict(
                covariance_type=grid.covariance_type,
                n_components=int(k),
                bic=float(grid.bic[i, b]),
                aic=float(grid.aic[i, b]),
                log_likelihood=float(grid.log_likelihood[i, b]),
                bic_min=float(bics.min()) if bics.size else math.nan,
                bic_max=float(bics.max()) if bics.size else math.nan,
                converged=int(np.sum(grid.converged[i])),
                n_init=r,
                n_iter=int(np.max(grid.n_iter[i])),
                status=int(np.bitwise_or.reduce(grid.status[i])),
                chosen=(grid.covariance_type == selection.covariance_type
                        and int(k) == selection.n_components),
                seconds=grid.run_seconds + grid.compile_seconds,
            ))
    return rows
