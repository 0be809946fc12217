"""XLA compiler options of the fits outside the Gaussian-mixture pass plan (``emjax._xla``):
first call (compilation and run) and warm run time with XLA:CPU's fusion emitters and with its
LLVM IR emitters, by kind and problem size. Each measurement runs in a fresh process.

Cases: the failure-mode fit (synthetic fleets of 300 and 3000 units, K = 3), the missing-data
fit (20 % missing, full covariances), a mixed family (Gaussian + Poisson columns, K = 4) and a
selection grid (full covariances, K = 1..K_max, 4 restarts) and a generalised-EM fit (full,
2 restarts), each at a small and a large size.

Writes ``experiments/results/compile_options.json`` with the command, commit, date and load
average. Usage::

    PYTHONPATH=. python experiments/compile_options.py \
        [--kinds failure_mode,missing,families,grid,gem] [--merge]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CASES = {
    "failure_mode": [dict(n=300), dict(n=3000)],
    "missing": [dict(n=3000, d=8, k=4), dict(n=16000, d=8, k=4), dict(n=100000, d=16, k=16)],
    "families": [dict(n=20000), dict(n=200000)],
    "grid": [dict(n=600, d=2, k=6), dict(n=6000, d=8, k=6), dict(n=30000, d=16, k=8)],
    "gem": [dict(n=600, d=2, k=3), dict(n=20000, d=8, k=4), dict(n=100000, d=16, k=8)],
}


def child(kind: str, case: dict, ir: bool) -> dict:
    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    from emjax import _xla

    big = 2**62 if ir else -1
    _xla.TUNING["cpu"] = _xla.CPU._replace(ir_emitters_max_values=dict.fromkeys(_xla.KINDS, big))
    rng = np.random.default_rng(0)
    if kind == "failure_mode":
        from emjax.failure_mode import data as fd
        from emjax.failure_mode import model as fm

        data = fd.make_synthetic(0, setting="easy", n_units=case["n"]).to_data()
        size = case["n"] * data.x.shape[1] * 3 * data.design.shape[-1] ** 2

        def once(seed):
            return fm.fit(data, 3, key=jax.random.key(seed), n_init=4, max_iter=400).bic
    elif kind == "missing":
        import emjax

        n, d, k = case["n"], case["d"], case["k"]
        X = np.concatenate([rng.normal(size=(n // k, d)) + 3 * i for i in range(k)])
        X[rng.uniform(size=X.shape) < 0.2] = np.nan
        X = X[~np.isnan(X).all(1)]
        size = len(X) * d * k

        def once(seed):
            return emjax.fit(X, k, missing="marginalize", key=seed, n_init=2).log_likelihood
    elif kind == "families":
        import emjax.families as fam

        n = case["n"]
        X = np.concatenate([rng.normal(size=(n, 3)) + 2 * (np.arange(n) % 3)[:, None],
                            rng.poisson(3, size=(n, 2)).astype(float)], 1)
        family = fam.Product({"g": fam.Gaussian("full", n_features=3),
                              "p": fam.Poisson(n_features=2)})
        size = n * 5 * 4

        def once(seed):
            return fam.fit(X, family, 4, n_init=3, key=seed).log_likelihood
    elif kind == "gem":
        import emjax

        n, d, k = case["n"], case["d"], case["k"]
        X = np.concatenate([rng.normal(size=(n // k, d)) + 3 * i for i in range(k)])
        size = len(X) * d * k

        def once(seed):
            return emjax.fit_gem(X, k, key=seed, n_init=2).log_likelihood
    else:
        from emjax.gmm import selection

        n, d, k = case["n"], case["d"], case["k"]
        X = np.concatenate([rng.normal(size=(n // 3, d)) + 3 * i for i in range(3)])
        size = len(X) * d * k * k

        def once(seed):
            return selection.fit_grid(X, k, n_init=4, key=seed).bic
    _, first, runs = first_and_warm(once)
    return dict(size=size, first_s=first, run_s=min(runs))


def first_and_warm(once, warm_seeds=(1, 2)):
    """``once(0)`` timed in this (fresh) process, compilation included, then ``once(seed)``
    for each warm seed: (the first call's result, its seconds, the warm calls' seconds)."""
    import warnings

    import jax

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        result = jax.block_until_ready(once(0))
        first = time.perf_counter() - t
        runs = []
        for seed in warm_seeds:
            t = time.perf_counter()
            jax.block_until_ready(once(seed))
            runs.append(time.perf_counter() - t)
    return result, first, runs


def run_child(script: str, args: list, env: dict) -> dict:
    """``script --child *args`` in a fresh process: the JSON of its last line of output."""
    r = subprocess.run([sys.executable, script, "--child", *args], capture_output=True,
                       text=True, env=env, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_record(command: str) -> dict:
    """This run's record: its command, the commit, the date and the load average before it."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    return dict(command=command, commit=commit,
                date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                load_average_before=os.getloadavg())


def write_results(path: str, results: dict) -> None:
    """``results`` as JSON at ``path``, written atomically (imported after the measurements:
    nothing of emjax is loaded before them)."""
    from emjax._files import atomic_write

    with atomic_write(path, "w") as f:
        json.dump(results, f, indent=1)
    print("->", path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kinds", default=",".join(CASES))
    ap.add_argument("--out", default="experiments/results/compile_options.json")
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows of the other kinds in an existing --out file")
    ap.add_argument("--child", nargs=3, metavar=("KIND", "CASE", "IR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, case, ir = args.child
        print(json.dumps(child(kind, json.loads(case), ir == "1")))
        return
    run = run_record("PYTHONPATH=. python experiments/compile_options.py --kinds " + args.kinds
                     + (" --merge" if args.merge else ""))
    out = dict(run, rows=[])
    kinds = args.kinds.split(",")
    if args.merge and os.path.exists(args.out):
        with open(args.out) as f:
            out = json.load(f)
        out["rows"] = [r for r in out["rows"] if r["kind"] not in kinds]
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    for kind in kinds:
        for case in CASES[kind]:
            row = dict(kind=kind, **case, run=run)
            for name, ir in (("fusion_emitters", "0"), ("ir_emitters", "1")):
                res = run_child(__file__, [kind, json.dumps(case), ir], env)
                row["size"] = res.pop("size")
                row[name] = res
            out["rows"].append(row)
            print(json.dumps(row), flush=True)
    run["load_average_after"] = os.getloadavg()
    if not args.merge:
        out["load_average_after"] = run["load_average_after"]
    write_results(args.out, out)


if __name__ == "__main__":
    main()
