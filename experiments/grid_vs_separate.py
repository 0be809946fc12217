"""The model-selection grid (one compiled call, padded and masked components) against separate
``emjax.fit`` calls for each K with the same key: largest differences over every restart.

    PYTHONPATH=. python experiments/grid_vs_separate.py
"""

import time

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

import emjax
from emjax.gmm import selection

rng = np.random.default_rng(0)
X64 = np.concatenate([rng.normal(size=(200, 3)), rng.normal(size=(150, 3)) * 0.7 + [5, 5, 0],
                      rng.normal(size=(100, 3)) * 0.5 + [-4, 3, 2]])
KS = (1, 2, 3, 4)
print(f"{'cov':>9} {'dtype':>7} {'max |d loglik|':>14} {'max |d mean|':>12} {'max |d cov|':>11} "
      f"{'same n_iter':>11} {'grid s':>7} {'separate s':>10}")
for dtype in (np.float64, np.float32):
    X = X64.astype(dtype)
    for cov in emjax.gmm.covariance.COVARIANCE_TYPES:
        kw = dict(covariance_type=cov, n_init=3, tol=1e-6, max_iter=200, key=jax.random.key(1))
        t = time.perf_counter()
        grid = selection.fit_grid(X, KS, **kw)
        t_grid = time.perf_counter() - t
        dll = dm = dc = 0.0
        same = True
        t = time.perf_counter()
        for i, k in enumerate(KS):
            r = emjax.fit(X, k, **kw).restarts
            dll = max(dll, float(np.max(np.abs(grid.log_likelihood[i] - r.log_likelihood))))
            same &= bool(np.array_equal(grid.n_iter[i], r.n_iter))
            for j in range(3):
                p = selection.grid_params(grid, i, restart=j)
                q = emjax.em.select(r.params, j)
                dm = max(dm, float(np.max(np.abs(np.asarray(p.means) - np.asarray(q.means)))))
                dc = max(dc, float(np.max(np.abs(np.asarray(p.covariance.covariances)
                                                 - np.asarray(q.covariance.covariances)))))
        t_sep = time.perf_counter() - t
        print(f"{cov:>9} {np.dtype(dtype).name:>7} {dll:14.2e} {dm:12.2e} {dc:11.2e} "
              f"{str(same):>11} {t_grid:7.1f} {t_sep:10.1f}")
