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
object per ``every``, so compiled programs that use it are cached.
"""

from __future__ import annotations

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


def _make_report(every: int):
    @custom_vmap
    def report(n_iter, log_likelihood, converged):
        # Reached with the whole batch (see the vmap rule), so the predicate is one scalar and
        # the cond really skips the host call: one call every `every` iterations, plus the last.
        # (n_iter 0 is the loop's initial M-step, when it starts from statistics: not reported.)
        due = (jnp.max(n_iter) > 0) & ((jnp.max(n_iter) % every == 0) | jnp.all(converged))

        def call():
            jax.debug.callback(_host_update, n_iter, log_likelihood, converged)

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
    are reused. One host call costs about 0.5 ms on a CPU (``experiments/progress_overhead.py``);
    :func:`every_for` picks ``every`` from the problem size.
    """
    every = int(every)
    if every < 1:
        raise ValueError(f"every must be >= 1; got {every}")
    report = _make_report(every)

    def callback(n_iter, log_likelihood, converged) -> None:
        report(n_iter, log_likelihood, converged)

    return callback


def every_for(n_samples: int, n_features: int, n_components: int, n_lanes: int) -> int:
    """Iterations between host calls so that a host call (~0.5 ms) costs well under 5% of the
    EM work between two calls (about ``n * K * D (D + 1) / 2`` multiply-adds per lane and
    iteration, with a floor for the fixed per-iteration cost): between 1 and 50."""
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

    def __enter__(self) -> ProgressBar:
        self._t0 = time.perf_counter()
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        jax.effects_barrier()  # let callbacks still in flight arrive
        _ACTIVE.remove(self)
        if self.last is not None:
            self._draw(final=True)
        self.stream.write("\n")
        self.stream.flush()

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
        self.stream.write("\r" + self.text())
        self.stream.flush()
