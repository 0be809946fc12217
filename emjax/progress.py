"""Progress of compiled EM loops: a host callback fed from inside the ``while_loop``, throttled.

Pass :data:`callback` as ``callback=`` to :func:`emjax.fit`, :func:`emjax.gmm.selection.fit_grid` or
:func:`emjax.em.run`, and run the fit inside a :class:`ProgressBar`::

    with emjax.progress.ProgressBar("fit", n_lanes=8, max_iter=100):
        emjax.fit(X, 3, n_init=8, callback=emjax.progress.callback)

Under ``vmap`` (restarts, grid points) the callback reaches the host with the state of every lane
at once (a ``custom_vmap`` rule batches it), not once per lane, and only every ``every``
iterations (a ``lax.cond`` on the device: the first throttle) and the bar redraws at most every
``interval`` seconds (the second). It only reads the loop state, so results are unchanged;
outside a :class:`ProgressBar` it does nothing on the host. :func:`make_callback` returns one
object per ``every``, so compiled programs that use it are cached in memory; on CPU the host call
is a registered XLA FFI target rather than a Python callback, so they are also kept in JAX's
persistent (disk) cache when that is on (:func:`emjax.enable_disk_cache`).
"""

from __future__ import annotations

import ctypes
import functools
import sys
import time
from typing import TextIO

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_batching import custom_vmap

__all__ = ["ProgressBar", "callback", "every_for", "make_callback"]

_ACTIVE: list = []  # the ProgressBar(s) currently shown; the innermost receives updates


def _host_update(n_iter, log_likelihood, converged) -> None:
    if _ACTIVE:
        _ACTIVE[-1].update(np.asarray(n_iter), np.asarray(log_likelihood), np.asarray(converged))


# -- the host call as an XLA FFI target ------------------------------------------------------
# A Python callback (jax.debug.callback, io_callback) is baked into the executable, which then
# cannot be kept in JAX's persistent (disk) cache. On CPU the report is instead a custom call to
# a named FFI target registered in every process (a ctypes function reading the XLA FFI call
# frame), so the compiled program names only the target and is cacheable like any other.


class _ExtensionBase(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("type", ctypes.c_int),
                ("next", ctypes.c_void_p)]


class _ApiVersion(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p),
                ("major_version", ctypes.c_int), ("minor_version", ctypes.c_int)]


class _Metadata(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("api_version", _ApiVersion),
                ("traits", ctypes.c_uint32)]


class _MetadataExtension(ctypes.Structure):
    _fields_ = [("extension_base", _ExtensionBase), ("metadata", ctypes.POINTER(_Metadata))]


class _Args(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p),
                ("size", ctypes.c_int64), ("types", ctypes.c_void_p),
                ("args", ctypes.POINTER(ctypes.c_void_p))]


class _CallFrame(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t),
                ("extension_start", ctypes.POINTER(_ExtensionBase)),
                ("api", ctypes.c_void_p), ("ctx", ctypes.c_void_p), ("stage", ctypes.c_int),
                ("args", _Args)]


class _Buffer(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p),
                ("dtype", ctypes.c_int), ("data", ctypes.c_void_p), ("rank", ctypes.c_int64),
                ("dims", ctypes.POINTER(ctypes.c_int64))]


_FFI_TARGET = "emjax_progress_report"
_FFI_API_VERSION = (0, 3)  # the XLA FFI C API this handler's structures follow
_METADATA_EXTENSION = 1


_CTYPES = {4: ctypes.c_int32, 11: ctypes.c_float, 12: ctypes.c_double}  # XLA's S32, F32, F64


def _buffer(ptr) -> np.ndarray:
    b = ctypes.cast(ptr, ctypes.POINTER(_Buffer)).contents
    ctype = _CTYPES[b.dtype]
    shape = tuple(int(b.dims[i]) for i in range(b.rank))
    size = int(np.prod(shape)) if shape else 1
    flat = np.ctypeslib.as_array(ctypes.cast(b.data, ctypes.POINTER(ctype)), (size,))
    return flat.reshape(shape).copy()


def _ffi_handler(frame_ptr):
    frame = ctypes.cast(frame_ptr, ctypes.POINTER(_CallFrame)).contents
    if frame.extension_start and frame.extension_start.contents.type == _METADATA_EXTENSION:
        # XLA asks which FFI version the handler speaks (at registration and compilation).
        ext = ctypes.cast(frame.extension_start, ctypes.POINTER(_MetadataExtension)).contents
        meta = ext.metadata.contents
        meta.api_version.major_version, meta.api_version.minor_version = _FFI_API_VERSION
        meta.traits = 0
        return None
    try:
        args = frame.args.args
        _host_update(_buffer(args[0]), _buffer(args[1]), _buffer(args[2]).astype(bool))
    except Exception:  # a progress bar must never break a fit
        pass
    return None


_HANDLER = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)(_ffi_handler)
_FFI_REGISTERED: list = []


def _ffi_target() -> bool:
    """Register the CPU target once per process; False where it cannot be (then the report is
    a ``jax.debug.callback``, whose programs are not kept on disk)."""
    if not _FFI_REGISTERED:
        try:
            jax.ffi.register_ffi_target(_FFI_TARGET, jax.ffi.pycapsule(_HANDLER), platform="cpu")
            _FFI_REGISTERED.append(True)
        except Exception:
            _FFI_REGISTERED.append(False)
    return _FFI_REGISTERED[0]


def _host_call(n_iter, log_likelihood, converged) -> None:
    if jax.default_backend() == "cpu" and _ffi_target():
        jax.ffi.ffi_call(_FFI_TARGET, (), has_side_effect=True)(
            jnp.asarray(n_iter, jnp.int32), jnp.asarray(log_likelihood),
            jnp.asarray(converged, jnp.int32))
    else:
        jax.debug.callback(_host_update, n_iter, log_likelihood, converged)


def _make_report(every: int):
    @custom_vmap
    def report(n_iter, log_likelihood, converged):
        # Reached with the whole batch (see the vmap rule), so the predicate is one scalar and
        # the cond really skips the host call: one call every `every` iterations, plus the last.
        # (n_iter 0 is the loop's initial M-step, when it starts from statistics: not reported.)
        due = (jnp.max(n_iter) > 0) & ((jnp.max(n_iter) % every == 0) | jnp.all(converged))

        def call():
            _host_call(n_iter, log_likelihood, converged)

        jax.lax.cond(due, call, lambda: None)
        return jnp.int32(0)  # custom_vmap needs an output; nobody reads it

    @report.def_vmap
    def report_batched(axis_size, in_batched, n_iter, log_likelihood, converged):
        # Re-issue the report on the whole batch: one host call for all lanes.
        args = [a if b else jnp.broadcast_to(a, (axis_size,) + jnp.shape(a))
                for a, b in zip((n_iter, log_likelihood, converged), in_batched)]
        return report(*args), False

    return report


@functools.cache
def make_callback(every: int = 10):
    """The in-loop callback ``callback(n_iter, log_likelihood, converged)`` reaching the host
    every ``every`` iterations (of the furthest lane) and when every lane has converged.

    The same ``every`` returns the same object, so jitted programs taking it as a static argument
    are reused. A host call is not free (``experiments/progress_overhead.py`` measures it), so
    :func:`every_for` picks ``every`` from the problem size.
    """
    every = int(every)
    if every < 1:
        raise ValueError(f"every must be >= 1; got {every}")
    return _Callback(every)


class _Callback:
    """What :func:`make_callback` returns. Its text names ``every`` (no address), so the disk
    cache's store of whole programs can key a program that takes it as a static argument."""

    def __init__(self, every: int):
        self.every = every
        self._report = _make_report(every)

    def __call__(self, n_iter, log_likelihood, converged) -> None:
        self._report(n_iter, log_likelihood, converged)

    def __repr__(self) -> str:
        return f"emjax.progress.make_callback({self.every})"


def every_for(n_samples: int, n_features: int, n_components: int, n_lanes: int) -> int:
    """Iterations between host calls so that a host call (a fixed cost, measured by
    ``experiments/progress_overhead.py``) stays well under 5% of the EM work between two calls
    (about ``n * K * D (D + 1) / 2`` multiply-adds per lane and iteration, with a floor for the
    fixed per-iteration cost): between 1 and 50."""
    work = n_samples * n_components * n_features * (n_features + 1) / 2 * n_lanes
    return int(min(50, max(1, round(2e7 / max(work, 1.0)))))


#: The default in-loop callback: a host call every 10 iterations and at convergence.
callback = make_callback(10)


class ProgressBar:
    """A text progress bar on a stream (stderr by default), redrawn at most every ``interval``.

    Shows the iteration (the furthest lane), the best current mean log-likelihood over lanes, and
    how many lanes (restarts x grid points) have converged. Use it as a context manager around a
    fit that was given :data:`callback`.

    Args:
      label: text before the bar.
      n_lanes: total restarts (x grid points) of the fit, for the bar.
      max_iter: the fit's ``max_iter``, for the bar.
      stream: where to draw (default ``sys.stderr``).
      interval: minimum seconds between redraws (the host throttle).
      width: characters of the bar.
    """

    def __init__(self, label: str = "EM", n_lanes: int = 1, max_iter: int = 100, *,
                 stream: TextIO | None = None, interval: float = 0.1, width: int = 24):
        self.label = label
        self.n_lanes = int(n_lanes)
        self.max_iter = int(max_iter)
        self.stream = sys.stderr if stream is None else stream
        self.interval = float(interval)
        self.width = int(width)
        self.n_updates = 0
        self.n_draws = 0
        self.last = None  # (iteration, best log-likelihood, converged, finished)
        self._t_last = -np.inf
        self._t0 = time.perf_counter()
        self._gone = False  # the stream failed: draw nothing more

    def __enter__(self) -> ProgressBar:
        self._t0 = time.perf_counter()
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        try:
            jax.effects_barrier()  # let callbacks still in flight arrive
        finally:  # also when Ctrl-C lands in that wait: a later fit must not feed this bar
            _ACTIVE.remove(self)
            if self.last is not None:
                self._draw(final=True)
            self._write("\n")

    def update(self, n_iter: np.ndarray, log_likelihood: np.ndarray,
               converged: np.ndarray) -> None:
        """Record one in-loop report (arrays of any shape, one entry per lane)."""
        self.n_updates += 1
        n_iter = n_iter.ravel()
        ll = log_likelihood.ravel()
        conv = converged.ravel().astype(bool)
        finite = ll[np.isfinite(ll)]
        best = float(finite.max()) if finite.size else float("nan")
        finished = conv | (n_iter >= self.max_iter)
        self.last = (int(n_iter.max()), best, int(conv.sum()), int(finished.sum()))
        now = time.perf_counter()
        if now - self._t_last >= self.interval:
            self._t_last = now
            self._draw()

    def finish(self, n_iter, log_likelihood, converged) -> None:
        """Show the final state (e.g. from the fit's result), whatever the throttles skipped."""
        self._t_last = -np.inf
        self.update(np.asarray(n_iter), np.asarray(log_likelihood), np.asarray(converged))

    def text(self) -> str:
        """The current line (without carriage return)."""
        it, ll, conv, finished = self.last if self.last is not None else (0, np.nan, 0, 0)
        frac = finished / max(self.n_lanes, 1)
        fill = int(round(frac * self.width))
        bar = "#" * fill + "-" * (self.width - fill)
        return (f"{self.label} [{bar}] iter {it:>4}/{self.max_iter} | loglik {ll:>10.4f} | "
                f"converged {conv}/{self.n_lanes} | {time.perf_counter() - self._t0:5.1f} s")

    def _draw(self, final: bool = False) -> None:
        self.n_draws += 1
        self._write("\r" + self.text())

    def _write(self, text: str) -> None:
        if self._gone:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # reader gone (2>&1 | head), full or closed: the fit goes on
            self._gone = True
