"""A large fit and its peak memory: N = 1e7, D = 16, K = 16, full covariance, float32.

    PYTHONPATH=. python experiments/big_n.py [--n 10000000] [--max-iter 10] [--init subsample]

Each measurement runs in a fresh subprocess that makes the data, fits it with ``emjax.fit`` and
reports its peak resident set size (``ru_maxrss``, which includes the interpreter, JAX and the
data itself) against the data's size. ``--init subsample`` starts EM from a fit on a 100 000-row
subsample (``params_init``); ``--init kmeans`` uses the default k-means initialisation on all
rows. Results are appended to ``experiments/results/big_n.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r}); sys.path.insert(0, {exp!r})
import numpy as np
n, d, k, max_iter, init = {args!r}
def rss_now():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
import jax, jax.numpy as jnp
import emjax
from benchmark import make_data
X = make_data(n, d, k, dtype=np.float32)
t_data = rss_now()
kw = {{}}
if init == "subsample":
    sub = X[np.random.default_rng(0).choice(n, 100_000, replace=False)]
    kw["params_init"] = emjax.fit(sub, k, max_iter=20, key=jax.random.key(1)).params
t0 = time.perf_counter()
res = emjax.fit(X, k, tol=0.0, max_iter=max_iter, key=jax.random.key(0), **kw)
res.log_likelihood.block_until_ready()
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"n": n, "d": d, "k": k, "max_iter": max_iter, "init": init,
                  "data_mib": X.nbytes / 2**20, "rss_after_data_mib": t_data,
                  "peak_rss_mib": peak, "peak_over_data": peak / (X.nbytes / 2**20),
                  "fit_s_incl_compile": dt, "n_iter": int(res.n_iter),
                  "log_likelihood": float(res.log_likelihood), "status": int(res.status)}}))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--d", type=int, default=16)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--max-iter", type=int, default=10)
    ap.add_argument("--init", nargs="*", default=["subsample"], choices=["subsample", "kmeans"])
    ap.add_argument("--out", default=str(ROOT / "experiments/results/big_n.json"))
    args = ap.parse_args()
    rows = []
    for init in args.init:
        code = CHILD.format(root=str(ROOT), exp=str(ROOT / "experiments"),
                            args=(args.n, args.d, args.k, args.max_iter, init))
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if r.returncode != 0:
            row = {"n": args.n, "init": init, "error": r.stderr.strip()[-2000:],
                   "wall_s": time.perf_counter() - t0}
        else:
            row = json.loads(r.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        rows.append(row)
    out = Path(args.out)
    old = json.loads(out.read_text()) if out.exists() else []
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(old + rows, indent=1))


if __name__ == "__main__":
    main()
