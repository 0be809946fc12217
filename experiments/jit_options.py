"""A fit inside the caller's ``jax.jit``: XLA's default options against the cheapest ones.

``emjax.fit`` called on concrete arrays compiles with its plan's compiler options (level 0 and
the older emitters for small problems); inside a caller's ``jax.jit`` the caller's options
apply, since a nested jit cannot carry its own. This times the docs' example (1000 data sets of
150-200 x 2, K = 3, one ``jax.jit(jax.vmap(emjax.fit))`` call) in fresh processes, interleaved:
the first call (tracing and compiling included) and later calls, under XLA's defaults and under
``compiler_options={"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}``.

    PYTHONPATH=. python experiments/jit_options.py [--repeats 2]

Writes ``experiments/results/jit_options.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

_RUN = """
import json, sys, time
import jax, numpy as np, emjax
rng = np.random.default_rng(0)
sizes = rng.integers(150, 201, size=1000)
Xs = np.zeros((1000, 200, 2), np.float32)
W = np.zeros((1000, 200), np.float32)
for b, n in enumerate(sizes):
    Xs[b, :n] = rng.normal(size=(n, 2)) + rng.integers(0, 3, size=(n, 1)) * 3.0
    W[b, :n] = 1.0
keys = jax.random.split(jax.random.key(0), 1000)
opts = ({"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
        if sys.argv[1] == "cheapest" else None)
fit_all = jax.jit(jax.vmap(lambda X, w, k: emjax.fit(X, 3, key=k, sample_weight=w)),
                  compiler_options=opts)
t = time.perf_counter()
res = jax.block_until_ready(fit_all(Xs, W, keys))
first = time.perf_counter() - t
later = []
for _ in range(5):
    t = time.perf_counter()
    jax.block_until_ready(fit_all(Xs, W, keys))
    later.append(time.perf_counter() - t)
print(json.dumps(dict(first_s=first, later_s=sorted(later)[2],
                      mean_log_likelihood=float(np.mean(res.log_likelihood)))))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="experiments/results/jit_options.json")
    args = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    load_before = os.getloadavg()
    runs = {"default": [], "cheapest": []}
    for _ in range(args.repeats):
        for options in runs:
            out = subprocess.run([sys.executable, "-c", _RUN, options], capture_output=True,
                                 text=True, check=True)
            runs[options].append(json.loads(out.stdout.strip().splitlines()[-1]))
    summary = {o: dict(first_s=statistics.median(r["first_s"] for r in rs),
                       later_s=statistics.median(r["later_s"] for r in rs),
                       mean_log_likelihood=rs[0]["mean_log_likelihood"], runs=rs)
               for o, rs in runs.items()}
    same = len({s["mean_log_likelihood"] for s in summary.values()}) == 1
    result = dict(command="PYTHONPATH=. python experiments/jit_options.py"
                  + ("" if args.repeats == 2 else f" --repeats {args.repeats}"),
                  commit=commit, date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  load_average_before=load_before, load_average_after=os.getloadavg(),
                  same_results=same, **summary)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, args.out)
    for o in runs:
        print(f"{o:9s} first call {summary[o]['first_s']:.2f} s, later calls "
              f"{summary[o]['later_s'] * 1e3:.0f} ms")
    print("same results:", same)


if __name__ == "__main__":
    main()
