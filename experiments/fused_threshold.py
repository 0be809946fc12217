"""Where the fused pass starts paying for itself: the dense reference steps against the fused
chunked pass, for a fit that is the first of its shape (compilation included) and for fits
that follow it (warm), per covariance type and problem size ``N * D * K``.

The plan's ``Tuning.fused_min_size`` (per covariance type) and ``dense_max_samples`` decide
which runs; this measures both sides of them. Each case runs in a fresh process:
``emjax.fit(X, K)`` with ``n_init = 5`` (as a model-selection sweep runs it), once with
compilation, then twice warm.

Usage:
  PYTHONPATH=. python experiments/fused_threshold.py [--sizes 4096,8192,16384,32768]
      [--features 32] [--components 8] [--dtype float64] [--out FILE] [--merge]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compile_options import first_and_warm, run_child, run_record, write_results  # noqa: E402


def child(case: dict, fused: bool) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    if case["dtype"] == "float64":
        jax.config.update("jax_enable_x64", True)
    from benchmark import make_data

    import emjax
    from emjax._sizes import size_class
    from emjax.gmm import plan as plan_lib

    t = plan_lib.CPU
    big = 2**62
    plan_lib.TUNING["cpu"] = t._replace(
        fused_min_size=dict.fromkeys(t.fused_min_size, 0 if fused else big),
        dense_max_samples=0 if fused else big)
    X = make_data(case["n"], case["d"], case["k"], dtype=np.dtype(case["dtype"]))
    jax.block_until_ready(jnp.ones(3) + 1)  # the backend is up before the clock starts
    plan = plan_lib.make_plan(case["covariance_type"], X.dtype, size_class(case["n"]),
                              case["d"], case["k"])
    res, first, warm = first_and_warm(lambda s: emjax.fit(
        X, case["k"], key=s, covariance_type=case["covariance_type"], n_init=5))
    return dict(first_s=first, warm_s=warm, fused=plan.fused,
                log_likelihood=float(res.log_likelihood), n_iter=int(res.n_iter))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="4096,8192,16384,32768", help="row counts N")
    ap.add_argument("--features", type=int, default=32)
    ap.add_argument("--components", type=int, default=8)
    ap.add_argument("--dtype", default="float64")
    ap.add_argument("--covariance-types", default="full,tied,diag,spherical")
    ap.add_argument("--out", default="experiments/results/fused_threshold.json")
    ap.add_argument("--merge", action="store_true",
                    help="add this run's rows to an existing --out file")
    ap.add_argument("--child", nargs=2, metavar=("CASE", "FUSED"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child[0]), args.child[1] == "1")))
        return
    run = run_record(" ".join(["PYTHONPATH=. python experiments/fused_threshold.py",
                               *sys.argv[1:]]))
    out = dict(runs=[], rows=[])
    if args.merge and os.path.exists(args.out):
        with open(args.out) as f:
            out = json.load(f)
    out["runs"].append(run)
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    for n in (int(s) for s in args.sizes.split(",")):
        for ct in args.covariance_types.split(","):
            case = dict(n=n, d=args.features, k=args.components, dtype=args.dtype,
                        covariance_type=ct)
            row = dict(case, size=n * args.features * args.components, run=len(out["runs"]) - 1)
            for fused in (False, True):  # alternated within the case: the same machine state
                r = run_child(__file__, [json.dumps(case), "1" if fused else "0"], env)
                row["fused" if fused else "dense"] = r
            d, f = row["dense"], row["fused"]
            print(f"N={n:6d} {ct:9s} first dense {d['first_s']:.2f} fused {f['first_s']:.2f} "
                  f"| warm dense {min(d['warm_s']):.3f} fused {min(f['warm_s']):.3f}",
                  flush=True)
            out["rows"].append(row)
    run["load_average_after"] = os.getloadavg()
    write_results(args.out, out)


if __name__ == "__main__":
    main()
