"""Padded components: the dense full-covariance steps batched over every component (padding
included) against a loop over the active ones only (``PassPlan.active_loop``, switched by
``emjax.gmm.plan.Tuning.active_loop_min_features``).

Small fits run with their components padded to 8 (``emjax._sizes.component_class``), so
that K = 2..8 share one program; batched, a fit of K = 2 pays for 8 components. Each case: one
process, both programs compiled first, then warm fits (``n_init = 5``, 30 iterations, float64)
interleaved, median of ``--repeats``. Cases span the feature counts around the threshold, each
with few and with nearly all components active, and the real data sets of
``experiments/latency.py`` (digits 1797 x 64, breast cancer 569 x 30, each as scikit-learn
ships it; tiny data such as iris run on 16 padded features).

Writes ``experiments/results/padded_components.json`` with the command, commit, date and load
average. Usage::

    PYTHONPATH=. python experiments/padded_components.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from compile_options import run_record, write_results

#: (label, rows, features, components): synthetic 4-cluster data unless a data set is named.
CASES = [("synthetic", 4000, 8, 3), ("synthetic", 4000, 8, 7), ("synthetic", 3000, 10, 3),
         ("synthetic", 3000, 10, 8), ("synthetic", 2000, 12, 2), ("synthetic", 2000, 12, 6),
         ("synthetic", 3000, 16, 3), ("synthetic", 3000, 16, 8), ("synthetic", 1000, 24, 3),
         ("synthetic", 1000, 24, 7), ("iris", 150, 4, 3), ("iris", 150, 4, 8),
         ("breast_cancer", 569, 30, 2), ("breast_cancer", 569, 30, 8),
         ("digits", 1797, 64, 2), ("digits", 1797, 64, 5), ("digits", 1797, 64, 8)]


def data(label: str, n: int, d: int):
    import numpy as np

    if label != "synthetic":
        from sklearn import datasets

        return getattr(datasets, f"load_{label}")().data.astype(np.float64)
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, d)) + np.repeat(rng.normal(size=(4, d)) * 3, -(-n // 4), 0)[:n]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="experiments/results/padded_components.json")
    args = ap.parse_args()
    record = run_record(" ".join(["PYTHONPATH=. python experiments/padded_components.py",
                                  *sys.argv[1:]]))
    import warnings

    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    import emjax
    from emjax.gmm import plan as plan_lib

    def fit(X, k, loop):
        plan_lib.TUNING["cpu"] = plan_lib.CPU._replace(
            active_loop_min_features=0 if loop else 2**31)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # reg_covar against digits' constant pixels
            return jax.block_until_ready(emjax.fit(X, k, n_init=5, max_iter=30, tol=0.0))

    rows = []
    for label, n, d, k in CASES:
        X = data(label, n, d)
        ll = {loop: float(fit(X, k, loop).log_likelihood) for loop in (False, True)}
        times = {False: [], True: []}
        for _ in range(args.repeats):
            for loop in (False, True):
                t = time.perf_counter()
                fit(X, k, loop)
                times[loop].append(time.perf_counter() - t)
        b, lp = float(np.median(times[False])), float(np.median(times[True]))
        rows.append(dict(data=label, n=X.shape[0], d=X.shape[1], k=k, batched_ms=1e3 * b,
                         loop_ms=1e3 * lp, loop_over_batched=lp / b,
                         log_likelihood_difference=ll[True] - ll[False]))
        print(f"{label} {X.shape[0]} x {X.shape[1]}, K = {k}: batched {1e3 * b:.1f} ms, "
              f"loop {1e3 * lp:.1f} ms ({lp / b:.2f}x)", flush=True)
    plan_lib.TUNING["cpu"] = plan_lib.CPU
    record["load_average_after"] = os.getloadavg()
    write_results(args.out, dict(run=record, cases=rows))


if __name__ == "__main__":
    main()
