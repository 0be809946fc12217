"""Where a vmapped batch of small fits spends its time: a per-operation profile of
``jax.jit(jax.vmap(lambda X, k: emjax.fit(X, 3, key=k)))`` over 1000 data sets of 200 x 2.

    OMP_NUM_THREADS=1 PYTHONPATH=. python experiments/profile_vmap.py            # the default plan
    OMP_NUM_THREADS=1 PYTHONPATH=. python experiments/profile_vmap.py --dense    # the dense steps
    # -> experiments/results/profile_vmap[_dense].json and a Markdown table

Sums the duration of every XLA operation (thunk) of the compiled program over a few calls under
``jax.profiler`` and maps each name to its op in the optimised HLO (as
``experiments/profile_fast_path.py`` does). Times are per call; ``calls`` is how often the
operation ran per call (27 for the loop body of a batch whose slowest fit takes 26 iterations).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from profile_fast_path import hlo_ops, leaf_events  # noqa: E402

import emjax  # noqa: E402
from emjax.gmm.plan import make_plan  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-sets", type=int, default=1000)
    ap.add_argument("--dense", action="store_true", help="the dense reference steps")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--out")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
    n = args.n_sets
    Xs = (rng.normal(size=(n, 200, 2)) + centres[rng.integers(0, 3, (n, 200))]).astype(
        np.float32)
    keys = jax.random.split(jax.random.key(0), n)
    plan = make_plan("full", np.float32, 200, 2, 3)
    if args.dense:
        plan = plan.replace(unrolled=False, compact=0)
    f = jax.jit(jax.vmap(lambda X, k: emjax.fit(X, 3, key=k, plan=plan)))
    compiled = f.lower(Xs, keys).compile()
    ops = hlo_ops(compiled.as_text())
    res = jax.block_until_ready(compiled(Xs, keys))
    t0 = time.perf_counter()
    for _ in range(args.rounds):
        jax.block_until_ready(compiled(Xs, keys))
    wall = (time.perf_counter() - t0) / args.rounds
    agg = collections.defaultdict(lambda: [0, 0.0])
    for e in leaf_events(lambda: compiled(Xs, keys), args.rounds, ops):
        agg[e["name"]][0] += 1
        agg[e["name"]][1] += e.get("dur", 0.0)
    rows = sorted(({"name": nm, "op": ops[nm], "calls": c / args.rounds,
                    "ms": d / 1e3 / args.rounds} for nm, (c, d) in agg.items()),
                  key=lambda r: -r["ms"])
    total = sum(r["ms"] for r in rows)
    out = {"n_sets": n, "plan": str(plan), "wall_ms": 1e3 * wall, "ops_ms": total,
           "n_iter_mean": float(np.mean(res.n_iter)), "n_iter_max": int(np.max(res.n_iter)),
           "load_average": os.getloadavg(), "ops": rows,
           "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "jax": jax.__version__}
    name = "profile_vmap_dense.json" if args.dense else "profile_vmap.json"
    path = Path(args.out) if args.out else HERE / "results" / name
    path.write_text(json.dumps(out, indent=1))
    print(f"{n} fits, {'dense' if args.dense else 'default'} plan: {1e3 * wall:.1f} ms per call "
          f"(wall), operations sum to {total:.1f} ms; n_iter mean {out['n_iter_mean']:.1f}, "
          f"max {out['n_iter_max']}; load {out['load_average'][0]:.1f}")
    print("\n| operation | HLO op, shape (JAX op) | calls | ms | share |\n|---|---|---|---|---|")
    for r in rows[: args.top]:
        print(f"| {r['name']} | {r['op'][:110]} | {r['calls']:.0f} | {r['ms']:.2f} | "
              f"{100 * r['ms'] / total:.0f} % |")
    print(f"\n-> {path}")


if __name__ == "__main__":
    main()
