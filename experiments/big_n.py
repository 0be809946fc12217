"""A large fit and its peak memory: N = 1e7, D = 16, K = 16, full covariance, float32.

    PYTHONPATH=. python experiments/big_n.py [--n 10000000] [--max-iter 10]
        [--init kmeans subsample] [--alloc numpy aligned]

Each measurement runs in a fresh subprocess that makes the data, fits it with ``emjax.fit`` and
reports its peak resident set size (``ru_maxrss``, which includes the interpreter, JAX and the
data itself) against the data's size. A sampling thread reads ``/proc/self/statm`` every 10 ms
and reports the resident size at each stage (after the imports, after the data, the peak during
the fit), and the compiled fitting program's own buffers are read from XLA's
``memory_analysis()`` (arguments, outputs, temporaries), so the peak can be accounted for.

``--init kmeans`` (default) is the default k-means initialisation on all rows;
``--init subsample`` starts EM from a fit on a 100 000-row subsample (``params_init``).
``--alloc numpy`` (default) holds the data in an ordinary NumPy array, which ``jax.device_put``
copies; ``--alloc aligned`` in a 64-byte-aligned one, which JAX on CPU uses in place.
Results are appended to ``experiments/results/big_n.json``.
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
import json, resource, sys, threading, time
sys.path.insert(0, {root!r}); sys.path.insert(0, {exp!r})
import numpy as np
n, d, k, max_iter, init, alloc = {args!r}
PAGE = 4096
samples = []
def rss_now():
    return int(open("/proc/self/statm").read().split()[1]) * PAGE / 2**20
def sampler():
    while True:
        samples.append((time.perf_counter(), rss_now()))
        time.sleep(0.01)
threading.Thread(target=sampler, daemon=True).start()
rss_start = rss_now()
import jax, jax.numpy as jnp
import emjax
from emjax.gmm import fitting, options
from emjax.gmm.plan import make_plan
from benchmark import make_data
jax.numpy.zeros(1).block_until_ready()  # the CPU client exists
rss_imports = rss_now()
def aligned_empty(n, d):
    # A 64-byte-aligned float32 (n, d) array: JAX on CPU uses such a buffer in place.
    buf = np.empty(n * d * 4 + 64, np.uint8)
    off = (-buf.ctypes.data) % 64
    return buf[off:off + n * d * 4].view(np.float32).reshape(n, d)
out = aligned_empty(n, d) if alloc == "aligned" else None
X = make_data(n, d, k, dtype=np.float32, out=out)
t_data = rss_now()
kw = {{}}
if init == "subsample":
    sub = X[np.random.default_rng(0).choice(n, 100_000, replace=False)]
    kw["params_init"] = emjax.fit(sub, k, max_iter=20, key=jax.random.key(1)).params
rss_before_fit = rss_now()
t0 = time.perf_counter()
res = emjax.fit(X, k, tol=0.0, max_iter=max_iter, key=jax.random.key(0), **kw)
res.log_likelihood.block_until_ready()
t1 = time.perf_counter()
dt = t1 - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
during = [r for t, r in samples if t0 <= t <= t1]
# The compiled program's own buffers (XLA's accounting), from a second compile of the same call.
Xd = jax.device_put(X)
aliased = fitting._shares_memory(Xd, X)
p = kw.get("params_init")
initial = options.InitialValues() if p is None else options.InitialValues(*p)
ma = fitting._fit_compiled.lower(
    Xd, jax.random.key(0), None, initial, jnp.asarray(0.0, X.dtype),
    jnp.asarray(-jnp.inf, X.dtype),
    options=options.FitOptions(k, "full", "kmeans", 1e-6, max_iter, 1, 10), callback=None,
    plan=make_plan("full", X.dtype, n, d, k)).compile().memory_analysis()
mib = lambda b: b / 2**20
print(json.dumps({{"n": n, "d": d, "k": k, "max_iter": max_iter, "init": init, "alloc": alloc,
                  "device_put_aliases": bool(aliased),
                  "data_mib": X.nbytes / 2**20, "rss_start_mib": rss_start,
                  "rss_after_imports_mib": rss_imports, "rss_after_data_mib": t_data,
                  "rss_before_fit_mib": rss_before_fit,
                  "rss_peak_during_fit_mib": max(during) if during else None,
                  "peak_rss_mib": peak, "peak_over_data": peak / (X.nbytes / 2**20),
                  "xla_argument_mib": mib(ma.argument_size_in_bytes),
                  "xla_output_mib": mib(ma.output_size_in_bytes),
                  "xla_temp_mib": mib(ma.temp_size_in_bytes),
                  "xla_alias_mib": mib(ma.alias_size_in_bytes),
                  "fit_s_incl_compile": dt, "n_iter": int(res.n_iter),
                  "log_likelihood": float(res.log_likelihood), "status": int(res.status)}}))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--d", type=int, default=16)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--max-iter", type=int, default=10)
    ap.add_argument("--init", nargs="*", default=["kmeans"], choices=["kmeans", "subsample"])
    ap.add_argument("--alloc", nargs="*", default=["numpy"], choices=["numpy", "aligned"])
    ap.add_argument("--out", default=str(ROOT / "experiments/results/big_n.json"))
    args = ap.parse_args()
    rows = []
    for alloc in args.alloc:
        for init in args.init:
            code = CHILD.format(root=str(ROOT), exp=str(ROOT / "experiments"),
                                args=(args.n, args.d, args.k, args.max_iter, init, alloc))
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            if r.returncode != 0:
                row = {"n": args.n, "init": init, "alloc": alloc,
                       "error": r.stderr.strip()[-2000:], "wall_s": time.perf_counter() - t0}
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
