"""Interleaved in-process A/B of the fused EM driver under different pass plans.

    PYTHONPATH=. python experiments/ab_driver.py float64 base,layout=\"transposed\" \
        100000,16,16,diag 10000,16,16,spherical
    PYTHONPATH=. python experiments/ab_driver.py float32 base,tuning.feature_rows_full_max_bytes=0 \
        100000,16,16,full

Each variant is ``base`` (the plan :func:`emjax.make_plan` gives on this machine) or changes
joined by ``+``: ``FIELD=value`` sets a :class:`emjax.PassPlan` field on the base plan (e.g.
``chunk_size=4096``, ``materialise_transposes=False``, ``layout="rows"``), and
``tuning.NAME=value`` plans the problem again from the backend's tuning table with one entry
changed (e.g. ``tuning.feature_blocks_max_bytes=0``). Values are Python expressions. Every
variant's program is compiled first, with its plan's XLA options (``opt_level``,
``fusion_emitters``) as ``emjax.fit`` compiles it; the compiled programs then run in turn,
``rounds`` times, on the same data and start (the benchmark's). Prints each variant's plan,
its ms per iteration (a run of ``T`` iterations plus the first E-step, divided by ``T + 1``)
and the final log-likelihood. The per-iteration A/B figures in docs/performance.md were
measured with this script (then with module settings that the plan fields and tuning entries
replace, and compiled with XLA's default options).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark as b  # noqa: E402

from emjax import em, gmm  # noqa: E402
from emjax.gmm import fitting, kernels  # noqa: E402
from emjax.gmm import plan as plan_lib  # noqa: E402


def variant_plan(spec: dict, ct: str, dtype, n: int, d: int, k: int) -> plan_lib.PassPlan:
    """The plan of one variant: the machine's plan, re-planned with changed tuning entries
    (under a private backend name of the table), then with changed plan fields."""
    backend = jax.default_backend()
    tuned = {key[len("tuning."):]: eval(val) for key, val in spec.items()
             if key.startswith("tuning.")}
    if tuned:
        name = f"{backend}+" + "+".join(f"{a}={b}" for a, b in sorted(tuned.items()))
        plan_lib.TUNING[name] = plan_lib.tuning(backend)._replace(**tuned)
        backend = name
    plan = plan_lib.make_plan(ct, dtype, n, d, k, backend=backend)
    fields = {key: eval(val) for key, val in spec.items() if not key.startswith("tuning.")}
    return plan.replace(fused=True, **fields)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dtype", choices=["float32", "float64"])
    ap.add_argument("variants", help="comma-separated: base or NAME=value[+NAME=value]")
    ap.add_argument("configs", nargs="+", help="N,D,K,covariance_type")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--iters2", type=int, default=None,
                    help="also run this many iterations and report the steady state "
                         "(t2 - t1) / (iters2 - iters), as the benchmark does, which leaves "
                         "out what a fit does once (building the features, the first E-step)")
    args = ap.parse_args()
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    names = args.variants.split(",")
    variants = [{} if v == "base" else dict(kv.split("=", 1) for kv in v.split("+"))
                for v in names]
    fields = {f.name for f in dataclasses.fields(plan_lib.PassPlan)}
    for v in variants:
        for key in v:
            if not key.startswith("tuning.") and key not in fields:
                raise SystemExit(f"unknown plan field {key!r}; fields: {sorted(fields)}")

    def loop(p, X, T, plan):
        # As emjax.fit's fused pass: chunks centred at the data's mean, the plan's inputs
        # (features, or X^T) built once per fit.
        c = jnp.mean(X, 0)
        e, m, r = fitting.make_model(plan.covariance_type, 1e-6, plan=plan, center=c,
                                     inputs=kernels.prepare(plan, X, c))
        return em.run(e, m, p, (X, None), tol=0.0, max_iter=T, repair=r).log_likelihood

    T = args.iters
    for cfg in args.configs:
        n, d, k, ct = cfg.split(",")
        n, d, k = int(n), int(d), int(k)
        X = jnp.asarray(b.make_data(n, d, k, dtype=np.dtype(args.dtype)))
        start = b.initial_params(np.asarray(X[:20000]), k, ct)
        p0 = gmm.make_params(*(jnp.asarray(a, args.dtype) for a in start), ct)

        fns = {}
        for name, v in zip(names, variants):
            plan = variant_plan(v, ct, np.dtype(args.dtype), n, d, k)
            print(f"{name}: {plan}", flush=True)
            # compiled with the plan's XLA options, as emjax.fit compiles it
            jitted = jax.jit(loop, static_argnames=("T", "plan"),
                             compiler_options=plan.compiler_options())
            for t in (T, args.iters2) if args.iters2 else (T,):
                fns[name, t] = jitted.lower(p0, X, t, plan).compile()
                fns[name, t](p0, X).block_until_ready()
        ts = {key: [] for key in fns}
        lls = {}
        for _ in range(args.rounds):
            for key in fns:
                t = time.perf_counter()
                lls[key] = float(fns[key](p0, X))
                ts[key].append(time.perf_counter() - t)

        def per_iter(name):
            if not args.iters2:
                return np.median(ts[name, T]) / (T + 1)
            return ((np.median(ts[name, args.iters2]) - np.median(ts[name, T]))
                    / (args.iters2 - T))

        print(args.dtype, cfg, "steady" if args.iters2 else "", "  ".join(
            f"{name}: {per_iter(name) * 1e3:.2f} ms ({lls[name, T]:.10f})"
            for name in names), flush=True)


if __name__ == "__main__":
    main()
