"""Restarts vmapped against one after the other in the same program (``lax.map``, each to its
own convergence): first call (compilation and run) in a fresh process and the warm run time.

Gaussian mixtures switch by ``emjax.gmm.plan.Tuning.sequential_restarts_min_work`` (the E-step
size per restart); the missing-data and family fits by
``emjax._xla.CompileTuning.sequential_restarts``.
Each case runs both ways, each in its own fresh process, the order alternated between cases.

Cases: digits (1797 x 64) and breast cancer (569 x 30) from scikit-learn, ``n_init = 5``,
components padded to 8 as usual; missing-data fits with 30 % of the entries missing,
``n_init = 4``; families (vmapped: in shrinking stages, ``compact=True``): 3 full-covariance
Gaussian and 2 Poisson columns, K = 4, ``n_init = 4``, and experiments/families.py's latent
class model (10 items of 3 categories, K = 4, 16 restarts).

Writes ``experiments/results/restarts.json`` with the command, commit, date and load average.
Usage::

    PYTHONPATH=. python experiments/restarts.py [--kinds gmm,missing,families]
"""

from __future__ import annotations

import argparse
import json
import os

from compile_options import first_and_warm, run_child, run_record, write_results

CASES = {
    "gmm": [dict(data="digits", covariance_type="full", k=5),
            dict(data="digits", covariance_type="diag", k=5),
            dict(data="breast_cancer", covariance_type="full", k=5),
            dict(data="breast_cancer", covariance_type="diag", k=5)],
    "missing": [dict(n=300, d=4, k=3), dict(n=3000, d=8, k=4), dict(n=20000, d=8, k=4),
                dict(n=100000, d=16, k=16)],
    "families": [dict(data="mixed", n=2000), dict(data="mixed", n=20000),
                 dict(data="latent_class", n=5000)],
}


def child(kind: str, case: dict, sequential: bool) -> dict:
    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    import emjax
    from emjax import _xla
    from emjax.gmm import plan as plan_lib

    if kind == "gmm":
        from sklearn import datasets

        plan_lib.TUNING["cpu"] = plan_lib.CPU._replace(
            sequential_restarts_min_work=0 if sequential else 2**62)
        X = getattr(datasets, f"load_{case['data']}")().data.astype(np.float64)

        def once(seed):
            return emjax.fit(X, case["k"], covariance_type=case["covariance_type"], n_init=5,
                             key=seed)
    elif kind == "families":
        import emjax.families as fam

        _xla.TUNING["cpu"] = _xla.CPU._replace(
            sequential_restarts=frozenset({"families"} if sequential else ()))
        rng = np.random.default_rng(0)
        n = case["n"]
        if case["data"] == "mixed":
            X = np.concatenate([rng.normal(size=(n, 3)) + 2 * (np.arange(n) % 3)[:, None],
                                rng.poisson(3, size=(n, 2)).astype(float)], 1)
            family = fam.Product({"g": fam.Gaussian("full", n_features=3),
                                  "p": fam.Poisson(n_features=2)})
            fit_kw = dict(n_init=4)
        else:  # experiments/families.py's latent class model: 10 items of 3 categories
            z = rng.integers(0, 4, n)
            probs = rng.dirichlet(np.ones(3), size=(4, 10))
            u = rng.uniform(size=(n, 10, 1))
            X = (u > np.cumsum(probs[z], -1)).sum(-1).astype(float)
            family = fam.Categorical(floor=1e-15)
            fit_kw = dict(n_init=16, tol=1e-8, max_iter=1000)

        def once(seed):
            return fam.fit(X, family, 4, key=seed, **fit_kw)
    else:
        _xla.TUNING["cpu"] = _xla.CPU._replace(
            sequential_restarts=frozenset({"missing"} if sequential else ()))
        rng = np.random.default_rng(0)
        n, d, k = case["n"], case["d"], case["k"]
        z = rng.integers(0, k, n)
        X = rng.normal(size=(k, d))[z] * 1.2 + rng.normal(size=(n, d))
        X[rng.uniform(size=X.shape) < 0.3] = np.nan
        X = X[~np.isnan(X).all(1)]

        def once(seed):
            return emjax.fit(X, k, missing="marginalize", n_init=4, max_iter=200, key=seed)
    r, first, runs = first_and_warm(once)
    return dict(first_s=first, run_s=min(runs), runs_s=runs,
                n_iter=np.asarray(r.restarts.n_iter).tolist(),
                log_likelihood=float(r.log_likelihood))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kinds", default=",".join(CASES))
    ap.add_argument("--out", default="experiments/results/restarts.json")
    ap.add_argument("--child", nargs=3, metavar=("KIND", "CASE", "SEQUENTIAL"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, case, seq = args.child
        print(json.dumps(child(kind, json.loads(case), seq == "1")))
        return
    out = dict(run_record("PYTHONPATH=. python experiments/restarts.py --kinds " + args.kinds),
               rows=[])
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    i = 0
    for kind in args.kinds.split(","):
        for case in CASES[kind]:
            row = dict(kind=kind, **case)
            order = (("vmapped", "0"), ("sequential", "1"))
            for name, seq in order if i % 2 == 0 else order[::-1]:
                row[name] = run_child(__file__, [kind, json.dumps(case), seq], env)
            row["run_ratio"] = row["sequential"]["run_s"] / row["vmapped"]["run_s"]
            row["first_ratio"] = row["sequential"]["first_s"] / row["vmapped"]["first_s"]
            out["rows"].append(row)
            print(json.dumps(row), flush=True)
            i += 1
    out["load_average_after"] = os.getloadavg()
    write_results(args.out, out)


if __name__ == "__main__":
    main()
