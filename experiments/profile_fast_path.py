"""Where an EM iteration's time goes: a per-operation profile of the compiled driver.

    PYTHONPATH=. python experiments/profile_fast_path.py    # N=1e5, D=16, K=16, full, float32
    PYTHONPATH=. python experiments/profile_fast_path.py --cov-type diag --dtype float64
    # -> experiments/results/profile_<cov>_<dtype>.json (or --out) and a Markdown table

Runs ``T`` EM iterations of the fused model (``fitting.make_model(..., plan=make_plan(...))``
inside ``em.run``, as ``emjax.fit`` does; the plan is printed and saved) a few times under
``jax.profiler`` with a Perfetto trace, sums the duration of every XLA operation (thunk) by
name, and maps each name to its op in the optimised HLO (so ``ynn_fusion.10`` reads as "dot
f32[16384,136] = x @ E1"). The idle time between operations is charged to the one that ended
last: an operation that hands its work to another thread pool (an Eigen GEMM, a LAPACK call)
can end its event early, and the rest of its cost is that idle time. Times are per EM
iteration: ``total / (rounds * (T + 1))`` (``T`` iterations, plus the E-step of the initial
parameters before the loop).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import gzip
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import benchmark as b  # noqa: E402

from emjax import em, gmm  # noqa: E402
from emjax.gmm import fitting, kernels  # noqa: E402
from emjax.gmm.plan import describe, make_plan  # noqa: E402


def hlo_ops(text: str) -> dict[str, str]:
    """``name -> "opcode shape (op_name metadata)"`` for every instruction of an HLO dump."""
    out = {}
    # shapes may be tuples, "(f32[16]{0}, s32[16]{0})" (custom calls such as LAPACK's, TopK)
    pat = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\(.*?\)|\S+) (\w[\w\-]*)\(")
    for line in text.splitlines():
        m = pat.match(line)
        if not m:
            continue
        name, shape, opcode = m.groups()
        meta = re.search(r'op_name="([^"]*)"', line)
        op = meta.group(1).rsplit("/", 1)[-1] if meta else ""
        kind = re.search(r'"kind":"(\w+)"', line)
        kind = f" [{kind.group(1)}]" if kind else ""
        out[name] = f"{opcode}{kind} {shape} ({op})"
    return out


def leaf_events(run, rounds: int, ops: dict) -> list:
    """The Perfetto events of the leaf XLA operations (named in ``ops``, from :func:`hlo_ops`;
    not the control flow, which contains the others) of ``rounds`` calls of ``run()`` under
    ``jax.profiler``, in time order."""
    tmp = tempfile.mkdtemp()
    try:
        jax.profiler.start_trace(tmp, create_perfetto_trace=True)
        for _ in range(rounds):
            jax.block_until_ready(run())
        jax.profiler.stop_trace()
        trace = glob.glob(f"{tmp}/**/*.trace.json.gz", recursive=True)[0]
        events = json.load(gzip.open(trace))["traceEvents"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return sorted((e for e in events if e.get("ph") == "X" and e["name"] in ops
                   and not ops[e["name"]].startswith(("while", "call", "conditional"))),
                  key=lambda e: e["ts"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=16)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--cov-type", default="full")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--out", help="JSON path (default results/profile_<cov>_<dtype>.json)")
    args = ap.parse_args()
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    dt = np.dtype(args.dtype)
    n, d, k, ct, T = args.n, args.d, args.k, args.cov_type, args.iters
    X = jnp.asarray(b.make_data(n, d, k, dtype=dt))
    w, m, c = b.initial_params(np.asarray(X[: min(n, 20000)]), k, ct)
    p0 = gmm.make_params(*(jnp.asarray(a, dt) for a in (w, m, c)), ct)
    plan = make_plan(ct, dt, n, d, k).replace(fused=True)
    print(describe(plan, n, d, k, dt))

    @jax.jit
    def loop(p, X):
        # As emjax.fit's fused pass: chunks centred at the data's mean, the plan's inputs
        # (features, or X^T) built once per fit.
        c = jnp.mean(X, 0)
        e, mm, r = fitting.make_model(ct, 1e-6, plan=plan, center=c,
                                      inputs=kernels.prepare(plan, X, c))
        return em.run(e, mm, p, (X, None), tol=0.0, max_iter=T, repair=r).log_likelihood

    compiled = loop.lower(p0, X).compile()
    ops = hlo_ops(compiled.as_text())
    compiled(p0, X).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(args.rounds):
        compiled(p0, X).block_until_ready()
    wall = (time.perf_counter() - t0) / (args.rounds * (T + 1))

    agg = collections.defaultdict(lambda: [0, 0.0, 0.0])
    events = leaf_events(lambda: compiled(p0, X), args.rounds, ops)
    # Idle time: from the end of everything so far to the next operation's start, charged to
    # the operation that ended last. An operation that hands its work to another thread pool
    # (Eigen's GEMMs, LAPACK) ends its event early, and its real cost shows up here.
    end, last = None, None
    for e in events:
        agg[e["name"]][0] += 1
        agg[e["name"]][1] += e.get("dur", 0.0)
        if end is not None and e["ts"] > end:
            agg[last][2] += e["ts"] - end
        if end is None or e["ts"] + e.get("dur", 0.0) >= end:
            end, last = e["ts"] + e.get("dur", 0.0), e["name"]
    per = args.rounds * (T + 1)
    leaves = sorted(({"name": nm, "op": ops[nm], "calls_per_iter": cnt / per,
                      "ms_per_iter": dur / 1e3 / per, "idle_after_ms_per_iter": idle / 1e3 / per}
                     for nm, (cnt, dur, idle) in agg.items()),
                    key=lambda r: -(r["ms_per_iter"] + r["idle_after_ms_per_iter"]))
    accounted = sum(r["ms_per_iter"] for r in leaves)
    idle = sum(r["idle_after_ms_per_iter"] for r in leaves)
    chunk = plan.chunk_size
    out = {"n": n, "d": d, "k": k, "cov_type": ct, "dtype": args.dtype, "chunk_size": chunk,
           "plan": dataclasses.asdict(plan),
           "wall_ms_per_iter": 1e3 * wall, "profiled_ops_ms_per_iter": accounted,
           "idle_ms_per_iter": idle,
           "ops": leaves, "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "commit": b._commit(),
           "jax": jax.__version__}
    path = Path(args.out) if args.out else HERE / "results" / f"profile_{ct}_{args.dtype}.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"N={n} D={d} K={k} {ct} {args.dtype}, chunk {chunk}: {1e3 * wall:.2f} ms per "
          f"iteration (wall, unprofiled); the operations below sum to {accounted:.2f} ms, "
          f"plus {idle:.2f} ms idle between them")
    print("\n| operation (XLA name) | HLO op, shape (JAX op) | calls/iter | ms/iter | idle after "
          "| share |")
    print("|---|---|---|---|---|---|")
    for r in leaves[: args.top]:
        share = 100 * (r["ms_per_iter"] + r["idle_after_ms_per_iter"]) / (accounted + idle)
        print(f"| {r['name']} | {r['op']} | {r['calls_per_iter']:.1f} | {r['ms_per_iter']:.2f} |"
              f" {r['idle_after_ms_per_iter']:.2f} | {share:.0f} % |")
    print(f"\n-> {path}")


if __name__ == "__main__":
    main()
