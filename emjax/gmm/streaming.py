"""Streaming EM for data larger than memory: exact EM over chunks read from disk, and stepwise
online EM (Cappé and Moulines, 2009) over mini-batches.

Both are Python loops over chunks around small jitted functions (a file cannot be read inside
``jit``): per chunk, one compiled call computes the E-step and the additive sufficient statistics
(:func:`emjax.gmm.blocks.block_stats`, built on :func:`emjax.gmm.e_step_full` and
:func:`emjax.gmm.suff_stats`); chunks are padded to one shape with zero-weight rows, so each
covariance type and dtype compiles once.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from emjax import _validation as v
from emjax import em
from emjax.gmm import GMMParams, SuffStats, fitting, steps
from emjax.gmm.blocks import BlockStats, block_stats
from emjax.gmm.options import check_initial_values, check_options
from emjax.gmm.reseed import reseed

Array = jax.Array

__all__ = ["NpyChunks", "OnlineResult", "chunks", "fit", "fit_online", "stats_from_params"]


class NpyChunks:
    """Row chunks of a 2-D C-ordered ``.npy`` file, read with plain file reads.

    Unlike ``np.load(path, mmap_mode="r")``, which maps the whole file into the address space,
    only one chunk is mapped at a time, so this works under a virtual-memory limit
    (``ulimit -v``) smaller than the file. Iterating again starts a new pass.

    Args:
      path: the ``.npy`` file, shape ``(n_samples, n_features)``.
      chunk_size: rows per chunk (the last one may be shorter).
    """

    def __init__(self, path, chunk_size: int = 65536):
        self.path = os.fspath(path)
        self.chunk_size = v.check_positive_int(chunk_size, "chunk_size")
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read(f)
            self.offset = f.tell()
        if len(shape) != 2 or fortran or dtype.hasobject:
            raise ValueError(f"{self.path}: need a 2-D C-ordered numeric array; got shape {shape}, "
                             f"fortran_order={fortran}, dtype {dtype}")
        self.shape, self.dtype = tuple(shape), dtype

    def __len__(self) -> int:
        return math.ceil(self.shape[0] / self.chunk_size)

    def __iter__(self) -> Iterator[np.ndarray]:
        n, d = self.shape
        row_bytes = d * self.dtype.itemsize
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            for start in range(0, n, self.chunk_size):
                rows = min(self.chunk_size, n - start)
                buf = np.empty((rows, d), self.dtype)
                got = f.readinto(memoryview(buf).cast("B"))
                if got != rows * row_bytes:
                    raise ValueError(f"{self.path}: truncated at row {start}")
                yield buf


def chunks(source, chunk_size: int = 65536) -> Iterable[np.ndarray]:
    """A re-iterable sequence of ``(rows, n_features)`` arrays from ``source``.

    ``source`` may be a path to a ``.npy`` file (read with :class:`NpyChunks`), a 2-D array or
    ``np.memmap`` (sliced), a list/tuple of 2-D arrays, or a zero-argument callable returning a
    fresh iterable of 2-D arrays for each pass (e.g. a generator function reading a database),
    or what this function returned. A generator or other one-shot iterator is an error: EM
    reads the data once per iteration.
    """
    if isinstance(source, (NpyChunks, _ArrayChunks, _CallableChunks)):
        return source  # chunked already (e.g. by this function)
    chunk_size = v.check_positive_int(chunk_size, "chunk_size")
    if isinstance(source, (str, os.PathLike)):
        return NpyChunks(source, chunk_size)
    if isinstance(source, Iterator):
        raise ValueError(f"source is a {type(source).__name__}, which can be read once; EM reads "
                         "the data once per iteration: pass a zero-argument callable returning "
                         "a fresh one for each pass (e.g. lambda: read_rows())")
    if callable(source):
        return _CallableChunks(source)
    if isinstance(source, (list, tuple)):
        return source
    if hasattr(source, "shape") and len(source.shape) == 2:
        return _ArrayChunks(source, chunk_size)
    raise ValueError("source must be a .npy path, a 2-D array, a list of 2-D arrays or a "
                     f"callable returning an iterable of them; got {type(source).__name__}")


class _ArrayChunks:
    def __init__(self, a, chunk_size):
        self.a, self.chunk_size = a, chunk_size

    def __iter__(self):
        for start in range(0, self.a.shape[0], self.chunk_size):
            yield np.asarray(self.a[start:start + self.chunk_size])


class _CallableChunks:
    def __init__(self, fn):
        self.fn = fn

    def __iter__(self):
        return iter(self.fn())


def _blocks(source: Iterable, size: int, dtype) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """Re-cut ``source`` into ``(X, w, n_real)`` blocks of exactly ``size`` rows (zero-weight
    padding, copying a real row so every log-likelihood stays finite)."""
    for a in source:
        a = np.asarray(a)
        if a.ndim != 2:
            raise ValueError(f"every chunk must be 2-D (rows, n_features); got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"a chunk of shape {a.shape} contains NaN or infinity")
        for start in range(0, a.shape[0], size):
            x = a[start:start + size].astype(dtype, copy=False)
            m = x.shape[0]
            w = np.ones((size,), dtype)
            if m < size:
                x = np.concatenate([x, np.repeat(x[:1], size - m, 0)])
                w[m:] = 0
            yield x, w, m


def _empty_block(k: int, d: int, cov_type: str, dtype) -> BlockStats:
    sxx_shape = (k, d, d) if cov_type in ("full", "tied") else (k, d)
    z = jnp.zeros((), dtype)
    return BlockStats(jnp.zeros((k,), dtype), jnp.zeros((k, d), dtype),
                      jnp.zeros(sxx_shape, dtype), z, z, jnp.zeros((k, d), dtype),
                      jnp.full((k,), jnp.inf, dtype))


@functools.partial(jax.jit, static_argnames=("covariance_type",))
def _accumulate(acc: BlockStats, params: GMMParams, X, w, shift, *, covariance_type):
    k = params.means.shape[0]
    b = block_stats(params, X - shift, w, covariance_type=covariance_type, n_candidates=k)
    # Re-seeding candidates: the k worst over everything seen so far (earlier chunks first on
    # ties, as top_k over the whole data set would order them).
    pool_s = jnp.concatenate([acc.cand_score, b.cand_score])
    pool_x = jnp.concatenate([acc.cand_x, b.cand_x])
    neg, idx = jax.lax.top_k(-pool_s, k)
    return BlockStats(acc.nk + b.nk, acc.sx + b.sx, acc.sxx + b.sxx, acc.ll_sum + b.ll_sum,
                      acc.w_sum + b.w_sum, pool_x[idx], -neg)


@functools.partial(jax.jit, static_argnames=("covariance_type", "reg_covar", "empty_threshold"))
def _update(acc: BlockStats, params: GMMParams, n_samples, *, covariance_type, reg_covar,
            empty_threshold):
    """The M-step and repair of :func:`fitting.make_model`, from accumulated statistics."""
    stats = SuffStats(acc.nk, acc.sx, acc.sxx, params.means)
    new = steps.params_from_stats(stats, covariance_type=covariance_type, reg_covar=reg_covar)
    mean_w = acc.w_sum / n_samples
    new, flags = reseed(new, acc.nk < empty_threshold * mean_w, acc.cand_x,
                                acc.cand_score, covariance_type=covariance_type)
    ll = acc.ll_sum / acc.w_sum
    finite = jnp.isfinite(ll) & em._all_finite(new)
    return new, ll, flags, finite


class _Pass(NamedTuple):
    acc: BlockStats
    n_samples: int


def _one_pass(params, source, *, chunk_size, dtype, shift, covariance_type) -> _Pass:
    k, d = params.means.shape
    acc = _empty_block(k, d, covariance_type, dtype)
    n = 0
    for x, w, m in _blocks(source, chunk_size, dtype):
        if x.shape[1] != d:
            raise ValueError(f"chunk has {x.shape[1]} features; the model has {d}")
        prev = acc
        acc = _accumulate(acc, params, x, w, shift, covariance_type=covariance_type)
        # Dispatch is asynchronous: without this, reading outruns computing and every chunk
        # read stays in memory. Waiting for the previous chunk keeps two in flight (reading the
        # next chunk overlaps computing this one) and memory bounded.
        jax.block_until_ready(prev)
        n += m
    if n == 0:
        raise ValueError("source yielded no rows")
    return _Pass(acc, n)


def _first_rows(source, n_rows: int) -> np.ndarray:
    got, total = [], 0
    for i, a in enumerate(source):
        a = np.asarray(a)
        if a.ndim != 2 or (got and a.shape[1] != got[0].shape[1]):
            # (concatenating them would fail with NumPy's words, not the source's)
            first = f"; the first has {got[0].shape[1]} features" if got else ""
            raise ValueError(f"every chunk of source must be 2-D (rows, n_features) with the "
                             f"same n_features; chunk {i} has shape {a.shape}{first}")
        got.append(a[: n_rows - total])
        total += got[-1].shape[0]
        if total >= n_rows:
            break
    if not got:
        raise ValueError("source yielded no rows")
    return np.concatenate(got)


def _initial(source, options, *, params_init, key, init_size, dtype_hint=None):
    """Initial parameters and the data's dtype: ``params_init`` or k-means on the first rows."""
    if params_init is not None:
        dtype = np.dtype(dtype_hint) if dtype_hint is not None else None
        if dtype is None:
            first = np.asarray(next(iter(source)))
            dtype = v.jax_float(first) or first.dtype
        p = check_initial_values(options, np.shape(params_init.means)[-1], dtype,
                                 params_init=params_init).params()
        return p, np.dtype(dtype)
    first = _first_rows(source, init_size)
    # lists and integers in JAX's default float, as emjax.fit reads them
    sample = v.as_data(first, "the first rows of source", dtype=v.jax_float(first))
    k = v.check_n_components(options.n_components, sample.shape[0], sample.shape)
    init = jax.jit(fitting.init_params, static_argnames=(
        "n_components", "covariance_type", "reg_covar", "init_params", "n_lloyd"))
    shift = sample.mean(0)
    p = init(v.as_key(key), jnp.asarray(sample - shift), k,
             covariance_type=options.covariance_type, reg_covar=options.reg_covar,
             init_params=options.init_params, n_lloyd=options.n_lloyd)
    return p._replace(means=p.means + jnp.asarray(shift, sample.dtype)), sample.dtype


def fit(
    source,
    n_components: int,
    *,
    params_init: GMMParams | None = None,
    key: Array | None = None,
    covariance_type: str = "full",
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    max_iter: int = 100,
    chunk_size: int = 65536,
    init_params: str = "kmeans",
    init_size: int = 20000,
    empty_threshold: float = 1e-3,
    decrease_tol: float = 1e-6,
    callback: Callable | None = None,
) -> em.EMResult:
    """Exact EM over chunks: each iteration is one pass over ``source`` accumulating the
    sufficient statistics, then one M-step; equal to the in-memory :func:`emjax.fit` from the
    same start (up to floating-point summation order).

    The convergence rule, re-seeding of empty components, status bits and result are those of
    :func:`emjax.em.run`: iteration ``t`` computes the mean log-likelihood at the current
    parameters and the statistics in the same pass; the fit stops when the log-likelihood changes
    by less than ``tol``, after ``max_iter`` iterations, or at a non-finite step. One more pass
    evaluates the log-likelihood of the final parameters (``EMResult.log_likelihood``).

    Args:
      source: a ``.npy`` path, a 2-D array/memmap, a list of 2-D arrays, or a zero-argument
        callable returning a fresh iterable of 2-D arrays per pass (see :func:`chunks`).
      n_components: number of mixture components.
      params_init: a complete starting :class:`~emjax.gmm.GMMParams`; otherwise ``init_params``
        (k-means by default) on the first ``init_size`` rows (shuffle the file, or pass
        ``params_init``, if its first rows are not representative).
      key: PRNG key for the initialisation.
      covariance_type, tol, reg_covar, max_iter: as in :func:`emjax.fit`.
      chunk_size: rows per compiled call (chunks from ``source`` are re-cut and padded to it).
      empty_threshold: re-seed a component whose mass falls below this times the mean weight.
      decrease_tol: relative fall of the log-likelihood that sets ``STATUS_DECREASED``.
      callback: optional Python ``callback(n_iter, log_likelihood, params)`` after each pass.

    Returns:
      :class:`emjax.em.EMResult` (``history`` has length ``max_iter``, NaN after ``n_iter``).
    """
    tol, options = check_options(n_components, covariance_type=covariance_type,
                                 init_params=init_params, tol=tol, reg_covar=reg_covar,
                                 max_iter=max_iter)
    covariance_type, reg_covar, max_iter = (options.covariance_type, options.reg_covar,
                                            options.max_iter)
    chunk_size = v.check_positive_int(chunk_size, "chunk_size")
    src = chunks(source, chunk_size)
    dtype_hint = getattr(src, "dtype", None)
    if dtype_hint is not None:  # integers: JAX's default float (float32 with x64 off)
        dtype_hint = dtype_hint if dtype_hint in (np.float32, np.float64) else \
            jnp.result_type(float)
    params, dtype = _initial(src, options, params_init=params_init, key=key,
                             init_size=init_size, dtype_hint=dtype_hint)
    v.check_x64(dtype)
    k = params.means.shape[0]
    size = max(chunk_size, k)
    # Any fixed point near the data does for the E-step's distance expansion (float32 digits).
    shift = params.weights @ params.means
    run_pass = functools.partial(_one_pass, source=src, chunk_size=size, dtype=dtype,
                                 shift=shift, covariance_type=covariance_type)
    update = functools.partial(_update, covariance_type=covariance_type, reg_covar=reg_covar,
                               empty_threshold=empty_threshold)

    def centred(p):
        return p._replace(means=p.means - shift)

    history = np.full((max_iter,), np.nan, dtype)
    ll_prev, n_iter, converged, status, reseeded_last = -np.inf, 0, False, em.STATUS_OK, False
    while not converged and n_iter < max_iter and not status & em.STATUS_NONFINITE:
        ps = run_pass(centred(params))
        new, ll, flags, finite = update(ps.acc, centred(params), ps.n_samples)
        ll, flags, finite = float(ll), int(flags), bool(finite)
        change = ll - ll_prev
        reseeded = bool(flags & em.STATUS_RESEEDED)
        converged = finite and abs(change) < tol and not reseeded
        if finite and not reseeded_last and change < -decrease_tol * max(1.0, abs(ll)):
            flags |= em.STATUS_DECREASED
        if not finite:
            flags |= em.STATUS_NONFINITE
        history[n_iter] = ll if finite else np.nan
        status |= flags
        reseeded_last = reseeded
        if finite:
            params = new._replace(means=new.means + shift)
            ll_prev = ll
            n_iter += 1
            if callback is not None:
                callback(n_iter, ll, params)
    ps = run_pass(centred(params))
    ll_final = float(ps.acc.ll_sum / ps.acc.w_sum)
    if not math.isfinite(ll_final):
        status |= em.STATUS_NONFINITE
        ll_final = ll_prev
    return em.EMResult(params=params, log_likelihood=jnp.asarray(ll_final, dtype),
                       n_iter=jnp.int32(n_iter), converged=jnp.asarray(converged),
                       status=jnp.int32(status), history=jnp.asarray(history))


# ---------------------------------------------------------------------------------------------
# Stepwise online EM


def _recentre(s: SuffStats, ref: Array) -> SuffStats:
    """The same statistics about a new reference point ``ref`` (exact algebra)."""
    delta = s.ref - ref  # x - ref = (x - s.ref) + delta
    sx = s.sx + s.nk[:, None] * delta
    if s.sxx.ndim == 3:
        sxx = (s.sxx + s.sx[:, :, None] * delta[:, None, :] + delta[:, :, None] * s.sx[:, None, :]
               + s.nk[:, None, None] * delta[:, :, None] * delta[:, None, :])
    else:
        sxx = s.sxx + 2 * s.sx * delta + s.nk[:, None] * delta * delta
    return SuffStats(s.nk, sx, sxx, ref)


def stats_from_params(params: GMMParams, reg_covar: float = 0.0) -> SuffStats:
    """Per-sample-normalised statistics that ``params_from_stats`` maps back to ``params``.

    ``nk = weights``, ``sx = 0`` about ``ref = means``, ``sxx = weights * (Sigma - reg I)``;
    the starting point ``s_0`` of online EM.
    """
    k, d = params.means.shape
    cov_type = params.covariance_type
    c = params.covariance.covariances
    w = params.weights
    if cov_type == "full":
        sxx = w[:, None, None] * (c - reg_covar * jnp.eye(d, dtype=c.dtype))
    elif cov_type == "tied":
        sxx = w[:, None, None] * (c - reg_covar * jnp.eye(d, dtype=c.dtype))[None]
    elif cov_type == "diag":
        sxx = w[:, None] * (c - reg_covar)
    else:
        sxx = w[:, None] * jnp.broadcast_to((c - reg_covar)[:, None], (k, d))
    return SuffStats(w, jnp.zeros_like(params.means), sxx, params.means)


@functools.partial(jax.jit, static_argnames=("covariance_type", "reg_covar"))
def _online_step(s: SuffStats, params: GMMParams, X, w, shift, eta, *, covariance_type,
                 reg_covar):
    """``s <- (1 - eta) s + eta * sbar(batch; params)``; ``params <- argmax Q(s)``."""
    cp = params._replace(means=params.means - shift)
    b = block_stats(cp, X - shift, w, covariance_type=covariance_type, n_candidates=1)
    # Deviations about cp.means in centred coordinates are deviations about params.means.
    batch = SuffStats(b.nk, b.sx, b.sxx, params.means)
    s = _recentre(s, params.means)
    s = jax.tree_util.tree_map(lambda a, c: (1 - eta) * a + eta * c / b.w_sum, s, batch)
    s = s._replace(ref=params.means)
    new = steps.params_from_stats(s, covariance_type=covariance_type, reg_covar=reg_covar)
    ok = em._all_finite(new)
    new = jax.tree_util.tree_map(lambda a, c: jnp.where(ok, a, c), new, params)
    return s, new, b.ll_sum / b.w_sum, ok


class OnlineResult(NamedTuple):
    """Outcome of :func:`fit_online`.

    Attributes:
      params: the final :class:`~emjax.gmm.GMMParams`.
      stats: the final normalised :class:`~emjax.gmm.SuffStats` (resume from here).
      n_steps: mini-batch updates performed.
      batch_log_likelihood: ``(n_steps,)`` each mini-batch's mean log-likelihood under the
        parameters *before* its update (a noisy, out-of-sample progress measure).
      status: ``STATUS_NONFINITE`` if some update was not finite (it was skipped), else 0.
    """

    params: GMMParams
    stats: SuffStats
    n_steps: int
    batch_log_likelihood: np.ndarray
    status: int


def fit_online(
    source,
    n_components: int,
    *,
    params_init: GMMParams | None = None,
    key: Array | None = None,
    covariance_type: str = "full",
    reg_covar: float = 1e-6,
    batch_size: int = 1024,
    n_passes: int = 1,
    alpha: float = 0.6,
    t0: float = 2.0,
    init_params: str = "kmeans",
    init_size: int = 2000,
    callback: Callable[[int, GMMParams], Any] | None = None,
) -> OnlineResult:
    """Stepwise online EM (Cappé and Moulines, 2009) over mini-batches.

    .. math::
       \\eta_t = (t + t_0)^{-\\alpha},\\qquad
       s_t = (1 - \\eta_t)\\, s_{t-1} + \\eta_t\\, \\bar s(B_t;\\theta_{t-1}),\\qquad
       \\theta_t = \\bar\\theta(s_t)

    where :math:`\\bar s(B;\\theta)` is the mini-batch average of the expected complete-data
    sufficient statistics (:func:`emjax.gmm.suff_stats` divided by the batch weight) and
    :math:`\\bar\\theta` the closed-form M-step (:func:`emjax.gmm.params_from_stats`). With
    :math:`\\alpha\\in(0.5, 1]` the step sizes satisfy :math:`\\sum\\eta_t=\\infty`,
    :math:`\\sum\\eta_t^2<\\infty`; smaller :math:`\\alpha` forgets the start faster. Statistics
    are kept about the current means (re-centred exactly before each update).

    Args:
      source: as in :func:`fit`; read ``n_passes`` times, in order (shuffle it beforehand).
      n_components: number of components.
      params_init: starting parameters (``s_0 = stats_from_params(params_init)``); otherwise
        ``init_params`` on the first ``init_size`` rows.
      key, covariance_type, reg_covar, init_params: as in :func:`emjax.fit`.
      batch_size: rows per update (mini-batch).
      n_passes: passes over ``source``.
      alpha: step-size exponent in ``(0.5, 1]``.
      t0: step-size offset ``>= 1`` (``eta_1 = (1 + t0)^-alpha``): larger keeps the start longer.
      callback: optional Python ``callback(step, params)`` after every update.

    Returns:
      :class:`OnlineResult`.
    """
    _, options = check_options(n_components, covariance_type=covariance_type,
                               init_params=init_params, reg_covar=reg_covar)
    covariance_type, reg_covar = options.covariance_type, options.reg_covar
    batch_size = v.check_positive_int(batch_size, "batch_size")
    n_passes = v.check_positive_int(n_passes, "n_passes")
    if not (isinstance(alpha, (int, float)) and 0.5 < alpha <= 1.0):
        raise ValueError(f"alpha must be in (0.5, 1]; got {alpha!r}")
    if not (isinstance(t0, (int, float)) and t0 >= 1.0):
        raise ValueError(f"t0 must be >= 1; got {t0!r}")
    src = chunks(source, batch_size)
    params, dtype = _initial(src, options, params_init=params_init, key=key,
                             init_size=init_size)
    v.check_x64(dtype)
    size = max(batch_size, params.means.shape[0])
    shift = params.weights @ params.means
    s = stats_from_params(params, reg_covar)
    step, lls, oks = 0, [], []
    for _ in range(n_passes):
        for x, w, _m in _blocks(src, size, dtype):
            step += 1
            eta = jnp.asarray((step + t0) ** (-alpha), dtype)
            prev = s
            s, params, ll, ok = _online_step(s, params, x, w, shift, eta,
                                             covariance_type=covariance_type,
                                             reg_covar=reg_covar)
            jax.block_until_ready(prev)  # bounded memory (see _one_pass)
            lls.append(ll)
            oks.append(ok)
            if callback is not None:
                callback(step, params)
    if not lls:
        raise ValueError("source yielded no rows")
    status = 0 if bool(jnp.all(jnp.stack(oks))) else em.STATUS_NONFINITE
    return OnlineResult(params, s, step, np.asarray(jnp.stack(lls)), status)
