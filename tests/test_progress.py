"""The progress callback: one host call per iteration with every lane, results unchanged."""

import io

import jax
import jax.numpy as jnp
import numpy as np

from emjax import em, progress
from tests.conftest import FRESH_PROCESS_PRELUDE


def _toy_model():
    # EM-like fixed-point iteration m <- (m + mean(x)) / 2: converges geometrically.
    def e_step(params, data):
        return params, -jnp.square(params - jnp.mean(data))

    def m_step(estats, data):
        return 0.5 * (estats + jnp.mean(data))

    return e_step, m_step


def _grid_run(starts, data, callback):
    e_step, m_step = _toy_model()

    def per_grid(p0):
        return em.run_restarts(e_step, m_step, p0, data, tol=1e-6, max_iter=50,
                               callback=callback)

    return jax.vmap(per_grid)(starts)


def test_callback_reports_every_lane_once_per_iteration_and_changes_nothing():
    starts = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3)) * 10)
    data = jnp.linspace(0.0, 2.0, 11)
    plain = jax.jit(lambda s: _grid_run(s, data, None))(starts)
    seen = []

    class Recorder(progress.ProgressBar):
        def update(self, n_iter, ll, converged):
            seen.append((n_iter.copy(), converged.copy()))
            super().update(n_iter, ll, converged)

    stream = io.StringIO()
    with Recorder("toy", 6, 50, stream=stream, interval=0.0) as bar:
        reported = jax.jit(lambda s: _grid_run(s, data, progress.make_callback(1)))(starts)
    for a, b in zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(reported)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # bit for bit
    n_iter = np.asarray(plain.n_iter)
    # One host call per loop iteration, each with the whole (grid, restart) batch.
    assert len(seen) == n_iter.max()
    assert all(s[0].shape == (2, 3) for s in seen)
    np.testing.assert_array_equal(seen[-1][0], n_iter)  # finished lanes report their state
    np.testing.assert_array_equal(seen[-1][1], np.asarray(plain.converged))
    assert bar.last[2] == 6 and "converged 6/6" in stream.getvalue()
    # Throttled on the device: every 4th iteration of the furthest lane, and the last.
    seen.clear()
    with Recorder("toy", 6, 50, stream=io.StringIO(), interval=0.0):
        again = jax.jit(lambda s: _grid_run(s, data, progress.make_callback(4)))(starts)
    np.testing.assert_array_equal(np.asarray(again.n_iter), n_iter)
    expected = [i for i in range(1, n_iter.max() + 1) if i % 4 == 0 or i == n_iter.max()]
    assert [int(s[0].max()) for s in seen] == expected
    # Outside a ProgressBar the host side does nothing (and nothing fails).
    jax.block_until_ready(jax.jit(lambda s: _grid_run(s, data, progress.make_callback(4)))(starts))
    assert progress.make_callback(4) is progress.make_callback(4)  # cached: no recompilation


def test_sequential_restarts_report_every_restart_at_once():
    """Restarts run one after the other still reach the bar as one batch: the running restart's
    iteration, every restart's log-likelihood and convergence so far; results unchanged."""
    e_step, m_step = _toy_model()
    starts = jnp.asarray([10.0, -3.0, 0.5, 40.0])
    data = jnp.linspace(0.0, 2.0, 11)

    def run(callback):
        return em.run_restarts(e_step, m_step, starts, data, tol=1e-6, max_iter=50,
                               callback=callback, sequential=True)

    plain = jax.jit(lambda: run(None))()
    seen = []

    class Recorder(progress.ProgressBar):
        def update(self, n_iter, ll, converged):
            seen.append((n_iter.copy(), ll.copy(), converged.copy()))
            super().update(n_iter, ll, converged)

    stream = io.StringIO()
    with Recorder("toy", 4, 50, stream=stream, interval=0.0) as bar:
        reported = jax.jit(lambda: run(progress.make_callback(1)))()
    for a, b in zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(reported)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    n_iter = np.asarray(plain.n_iter)
    assert all(s[0].shape == (4,) for s in seen)
    assert len(seen) == n_iter.sum()  # one host call per iteration of each restart
    assert [int(s[0].max()) for s in seen[:n_iter[0]]] == list(range(1, n_iter[0] + 1))
    last = seen[-1]
    np.testing.assert_array_equal(last[2], np.asarray(plain.converged))
    np.testing.assert_allclose(last[1], np.asarray(plain.log_likelihood))
    assert bar.last[2] == 4 and "converged 4/4" in stream.getvalue()


def test_progress_bar_text_and_throttle():
    stream = io.StringIO()
    with progress.ProgressBar("K=1-3", 4, 100, stream=stream, interval=1e9, width=10) as bar:
        bar.update(np.array([5, 7, 100, 3]), np.array([-2.0, -1.5, np.nan, -3.0]),
                   np.array([True, False, False, True]))
        bar.update(np.array([6, 8, 100, 3]), np.array([-2.0, -1.25, np.nan, -3.0]),
                   np.array([True, True, False, True]))
    assert bar.n_updates == 2 and bar.n_draws == 2  # one throttled redraw + the final one
    text = bar.text()
    assert "iter  100/100" in text and "loglik    -1.2500" in text
    assert "converged 3/4" in text and "[##########]" in text  # 3 converged + 1 at max_iter


_WARM_RUN = FRESH_PROCESS_PRELUDE + """
import io, sys
import jax, numpy as np
jax.config.update("jax_enable_x64", True)
import emjax
from emjax.gmm import fitting, selection
emjax.enable_disk_cache(sys.argv[1])
# 17 features: the program calls LAPACK, whose kernels a loaded program must find initialised
X = np.random.default_rng(0).normal(size=(50, 17))
res = emjax.fit(X, 2, n_init=2, max_iter=20)
print(repr(float(res.log_likelihood)), int(res.n_iter), fitting.compiled_programs())
# a selection grid and a missing-value fit too
rng = np.random.default_rng(0)
X = np.concatenate([rng.normal(size=(30, 2)), rng.normal(size=(30, 2)) + 4])
g = selection.fit_grid(X, [1, 2], covariance_type="diag", n_init=2, max_iter=30)
Xm = X.copy()
Xm[::7, 0] = np.nan
m = emjax.fit(Xm, 2, covariance_type="diag", missing="marginalize", max_iter=30)
print(np.asarray(g.bic).tolist(), repr(float(m.log_likelihood)))
# and a fit with the progress report: its program is kept too, and the bar is fed from
# the fresh program and from the one read from disk
from emjax import progress
X = X.astype(np.float32)
bar = progress.ProgressBar("fit", n_lanes=2, max_iter=12, stream=io.StringIO())
with bar:
    res = emjax.fit(X, 2, n_init=2, max_iter=12, tol=0.0, callback=progress.make_callback(4))
    jax.block_until_ready(res)
print(bar.n_updates, bar.last[0])
"""


def test_small_selection_and_missing_value_fits_are_loaded_from_disk_without_tracing(tmp_path):
    """With the disk cache on, a new process loads a small fit's program from
    ``emjax-executables`` (found by shapes and options, not traced) and fits the same (a program
    with LAPACK calls crashed there before jaxlib's LAPACK kernels were initialised on loading);
    the selection grid, the missing-value fit and a fit with the progress report (whose
    callback once made its program uncacheable) are kept whole there too."""
    import os
    import subprocess
    import sys

    cache = str(tmp_path / "xla")
    env = dict(os.environ, PYTHONPATH=os.getcwd(), JAX_LOG_COMPILES="1")
    runs = [subprocess.run([sys.executable, "-c", _WARM_RUN, cache], capture_output=True,
                           text=True, env=env, check=True) for _ in range(2)]
    store = os.path.join(cache, "emjax-executables")
    names = {f.split("-")[0] for f in os.listdir(store)}
    assert {"fit", "grid", "grid_init", "missing"} <= names
    assert runs[0].stdout.splitlines()[:-1] == runs[1].stdout.splitlines()[:-1]
    for r in runs:  # the bar is fed from the fresh program and from the one read from disk
        updates, last = map(int, r.stdout.splitlines()[-1].split())
        assert updates >= 3 and last == 12
    for program in ("_fit_program", "_grid_program", "_initial_responsibilities_program"):
        assert program in runs[0].stderr  # compiled by the first process
        assert program not in runs[1].stderr  # neither traced nor compiled by the second
    # kept whole in the store only: JAX's own cache has no second copy of a fitting program
    # (a program it supplies is not written to the store: tests/test_xla.py)
    assert not any(f.startswith("jit__fit_program") for f in os.listdir(cache))


def test_an_interrupt_while_the_bar_waits_for_the_fit_leaves_no_bar_behind(monkeypatch):
    """Ctrl-C while leaving the bar (waiting for a fit dispatched asynchronously) left it among
    the bars shown: a later fit given the callback, with no bar, fed and redrew it."""
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(jax, "effects_barrier", interrupted)
    stream = io.StringIO()
    try:
        with progress.ProgressBar("fit", 1, 10, stream=stream, interval=0.0) as bar:
            bar.update(np.array([3]), np.array([-1.0]), np.array([False]))
    except KeyboardInterrupt:
        pass
    assert progress._ACTIVE == []
    assert stream.getvalue().endswith("\n")  # the terminal's line ended
    progress._host_update(np.array([4]), np.array([-0.5]), np.array([True]))
    assert bar.n_updates == 1


def test_a_stream_that_fails_does_not_fail_the_fit():
    """'emjax fit ... 2>&1 | head': the bar's reader gone (or a full disk) raised from the bar
    (the command failed with status 1 and wrote nothing); the bar now stops drawing."""
    class Gone(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    with progress.ProgressBar("fit", 1, 10, stream=Gone(), interval=0.0) as bar:
        bar.update(np.array([3]), np.array([-1.0]), np.array([False]))
        bar.finish(np.array([4]), np.array([-0.5]), np.array([True]))
    assert bar.last[2] == 1 and progress._ACTIVE == []
