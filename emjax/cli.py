"""The ``emjax`` command line (``emjax demo``: the main job on the bundled default data)."""

from __future__ import annotations

import argparse
import sys
import time


def _demo(args) -> int:
    import numpy as np

    from emjax import datasets
    from emjax.em import describe_status
    from emjax.sklearn import GaussianMixture

    X = datasets.load_default()
    print(f"emjax demo: {X.shape[0]} samples x {X.shape[1]} features ({datasets.default_path()})")
    print(f"{'K':>3} {'cov':>9} {'BIC':>10} {'AIC':>10} {'loglik':>9} {'iters':>5}  status")
    best = None
    for k in range(1, 6):
        t = time.perf_counter()
        gm = GaussianMixture(k, covariance_type="full", n_init=4, random_state=0).fit(X)
        bic = gm.bic(X)
        print(f"{k:>3} {'full':>9} {bic:>10.1f} {gm.aic(X):>10.1f} {gm.lower_bound_:>9.4f} "
              f"{gm.n_iter_:>5}  {describe_status(gm.status_)} ({time.perf_counter() - t:.2f} s)")
        if best is None or bic < best[0]:
            best = (bic, gm)
    gm = best[1]
    print(f"chosen: K={gm.n_components} by BIC; weights {np.round(gm.weights_, 3).tolist()}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="emjax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="fit the bundled default data set")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
