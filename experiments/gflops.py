"""Achieved GFLOP/s of emjax's EM iteration (N=1e5, D=16, K=16, full, float32; the compiled
driver's fast model, 20 iterations) and of a 2048^3 matmul, measured back to back under the
same load, 7 rounds.

    PYTHONPATH=. python experiments/gflops.py   # -> experiments/results/gflops.json
"""

import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import benchmark as b

from emjax import em, gmm
from emjax.gmm import fitting, make_plan

N, D, K, T = 100_000, 16, 16, 20


def main():
    X = jnp.asarray(b.make_data(N, D, K, dtype=np.float32))
    w, m, c = b.initial_params(np.asarray(X[:20000]), K, "full")
    p0 = gmm.make_params(*(jnp.asarray(a, jnp.float32) for a in (w, m, c)), "full")

    @jax.jit
    def loop(p, X):
        plan = make_plan("full", X.dtype, N, D, K).replace(fused=True)
        e, mm, r = fitting.make_model("full", 1e-6, plan=plan)
        return em.run(e, mm, p, (X, None), tol=0.0, max_iter=T, repair=r).log_likelihood

    A = jnp.asarray(np.random.default_rng(0).normal(size=(2048, 2048)).astype(np.float32))
    matmul = jax.jit(lambda a: a @ a)
    loop(p0, X).block_until_ready()
    matmul(A).block_until_ready()
    te, tm = [], []
    for _ in range(7):
        t = time.perf_counter()
        loop(p0, X).block_until_ready()
        te.append((time.perf_counter() - t) / (T + 1))  # T iterations + the first E-step
        t = time.perf_counter()
        matmul(A).block_until_ready()
        tm.append(time.perf_counter() - t)
    fl = b.flops_per_iteration("full", N, D, K)
    r = {"per_iter_ms_median": 1e3 * np.median(te), "per_iter_ms_min": 1e3 * min(te),
         "emjax_gflops_median": fl / np.median(te) / 1e9, "emjax_gflops_best": fl / min(te) / 1e9,
         "matmul_gflops_median": 2 * 2048**3 / np.median(tm) / 1e9,
         "matmul_gflops_best": 2 * 2048**3 / min(tm) / 1e9,
         "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(json.dumps(r))
    (HERE / "results" / "gflops.json").write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
