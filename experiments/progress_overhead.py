"""Overhead of the in-loop progress callback (emjax.progress) on fit time.

Fits the same problem with and without ``callback=emjax.progress.callback`` (inside an active
ProgressBar writing to an in-memory stream, so every host update is processed), after compiling
both, with tol=0 so every run does exactly max_iter iterations. Runs alternate; reports the
best (minimum) of the runs, and the ratio of medians.

    PYTHONPATH=. python experiments/progress_overhead.py
"""

import io
import statistics
import sys
import time

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

import emjax
from emjax import progress
from emjax.gmm import selection


def timed(fn, repeats, every):
    plain, with_cb = [], []
    cb_used = progress.make_callback(every)
    fn(None), fn(cb_used)  # compile both
    for _ in range(repeats):
        for cb, out in ((None, plain), (cb_used, with_cb)):
            stream = io.StringIO()
            t = time.perf_counter()
            with progress.ProgressBar("bench", 1, 1, stream=stream):
                jax.block_until_ready(fn(cb))
            out.append(time.perf_counter() - t)
    # The minimum over runs is the least disturbed by other processes on a shared machine.
    return min(plain), min(with_cb), statistics.median(plain), statistics.median(with_cb)


def report(name, every, plain, with_cb, plain_med, with_cb_med, iters):
    print(f"{name:<44} {every:>5} {plain * 1e3:9.1f} ms {with_cb * 1e3:9.1f} ms "
          f"{with_cb / plain - 1:+7.1%} | medians {with_cb_med / plain_med - 1:+7.1%}")


def main(repeats=7):
    rng = np.random.default_rng(0)
    print(f"{'case (100 iterations each; best of runs)':<44} {'every':>5} {'no callback':>12} "
          f"{'callback':>12} {'overhead':>8}")
    cases = [
        ("fit: N=20000, D=5, K=5, full, 4 restarts", 20000, 5, 5, 4),
        ("fit: N=2000, D=2, K=3, full, 4 restarts", 2000, 2, 3, 4),
    ]
    for name, n, d, k, r in cases:
        X = rng.normal(size=(n, d)) + rng.integers(0, 4, size=(n, 1)) * 3.0

        def fn(cb, X=X, k=k, r=r):
            return emjax.fit(X, k, n_init=r, tol=0.0, max_iter=100, key=jax.random.key(0),
                             callback=cb).log_likelihood

        for every in sorted({1, progress.every_for(n, d, k, r)}):
            report(name, every, *timed(fn, repeats, every), 100)
    X = emjax.datasets.load_default()

    def grid(cb):
        return selection.fit_grid(X, 6, n_init=4, tol=0.0, max_iter=100, callback=cb).bic

    for every in sorted({1, progress.every_for(600, 2, 6, 24)}):
        report("grid: demo 600x2, K=1..6 x 4 restarts, full", every,
               *timed(grid, repeats, every), 100)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7)
