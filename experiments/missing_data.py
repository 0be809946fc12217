"""Gaussian mixtures with entries missing at random: exact marginalisation against the usual
workarounds, and the cost of an iteration.

    PYTHONPATH=. python experiments/missing_data.py            # everything (~10-20 min, 2 cores)
    PYTHONPATH=. python experiments/missing_data.py --skip-speed

Recovery (synthetic, N = 20 000 train + 5 000 held out, D = 8, K = 4, full covariances, 10 / 30 /
50 % of entries removed at random) and a real table (scikit-learn's wine, standardised, 20 %
removed), for five methods:

* complete: the fit on the data before removal (the reference);
* marginalize: ``emjax.fit(X, K, missing="marginalize")``;
* listwise: ``emjax.fit`` on the complete rows only;
* mean + EM: ``emjax.fit`` on the column-mean-imputed data;
* iterative + sklearn: ``IterativeImputer`` then ``sklearn.mixture.GaussianMixture``.

Metrics: error of the means (matched to the truth, RMS over components and features), the
held-out log-likelihood per row (complete held-out rows), and the RMS error of the imputed
entries (each model imputes by its conditional mean, :func:`emjax.impute`; the imputers by their
own values). Speed: N = 1e5, D = 16, K = 16, full, 20 % missing, float64: ms per EM iteration of
``emjax.fit(missing="marginalize")``, of ``emjax.fit`` on the complete data and of scikit-learn's
complete-data EM, as the difference of two iteration counts (compiled programs cached).

Writes experiments/results/missing_data.json (speed runs appended to ``speed_runs``) and
docs/figures/missing_data.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import jax
import numpy as np
from scipy.optimize import linear_sum_assignment

jax.config.update("jax_enable_x64", True)

import emjax  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def truth(rng, k, d, sep=4.0):
    means = rng.normal(size=(k, d)) * sep
    covs = []
    for _ in range(k):
        a = rng.normal(size=(d, d))
        covs.append(a @ a.T / d + 0.3 * np.eye(d))
    return np.full(k, 1.0 / k), means, np.stack(covs)


def draw(rng, w, means, covs, n):
    z = rng.choice(len(w), n, p=w)
    L = np.linalg.cholesky(covs)
    return means[z] + np.einsum("nij,nj->ni", L[z], rng.normal(size=(n, means.shape[1])))


def remove(rng, X, frac):
    Xn = X.copy()
    Xn[rng.uniform(size=X.shape) < frac] = np.nan
    empty = np.isnan(Xn).all(1)
    Xn[empty, rng.integers(0, X.shape[1], empty.sum())] = X[empty, 0]  # keep one entry
    return Xn


def mean_error(found, true):
    cost = ((found[:, None, :] - true[None]) ** 2).sum(-1)
    r, c = linear_sum_assignment(cost)
    return float(np.sqrt(cost[r, c].sum() / true.size))


def heldout(params, X):
    return float(np.mean(np.asarray(emjax.score_samples(params, X))))


def rmse(filled, X, mask):
    return float(np.sqrt(np.mean((filled[mask] - X[mask]) ** 2)))


def methods(Xtr, Xn, k, seed, n_init):
    """Fitted parameters (an emjax GMMParams) and imputations of Xn, per method."""
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer
    from sklearn.mixture import GaussianMixture

    out = {}
    kw = dict(key=jax.random.key(seed), n_init=n_init, max_iter=300, tol=1e-4)
    t = time.perf_counter()
    out["complete"] = (emjax.fit(Xtr, k, **kw).params, None, time.perf_counter() - t)
    t = time.perf_counter()
    p = emjax.fit(Xn, k, missing="marginalize", **kw).params
    out["marginalize"] = (p, np.asarray(emjax.impute(p, Xn)), time.perf_counter() - t)
    rows = ~np.isnan(Xn).any(1)
    if rows.sum() >= 5 * k:
        t = time.perf_counter()
        p = emjax.fit(Xn[rows], k, **kw).params
        out["listwise"] = (p, np.asarray(emjax.impute(p, Xn)), time.perf_counter() - t)
    t = time.perf_counter()
    filled = np.where(np.isnan(Xn), np.nanmean(Xn, 0), Xn)
    out["mean + EM"] = (emjax.fit(filled, k, **kw).params, filled, time.perf_counter() - t)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        filled = IterativeImputer(max_iter=10, random_state=seed).fit_transform(Xn)
        sk = GaussianMixture(k, n_init=n_init, max_iter=300, tol=1e-4, random_state=seed)
        sk.fit(filled)
    p = emjax.make_params(sk.weights_, sk.means_, sk.covariances_, "full")
    out["iterative + sklearn"] = (p, filled, time.perf_counter() - t)
    return out


def recovery(args):
    rows = []
    rng = np.random.default_rng(0)
    k, d = 4, 8
    w, means, covs = truth(rng, k, d)
    Xtr = draw(rng, w, means, covs, args.n)
    Xte = draw(rng, w, means, covs, 5000)
    for frac in (0.1, 0.3, 0.5):
        Xn = remove(np.random.default_rng(int(frac * 100)), Xtr, frac)
        mask = np.isnan(Xn)
        res = methods(Xtr, Xn, k, 0, args.n_init)
        for name, (p, filled, secs) in res.items():
            rows.append(dict(data="synthetic", missing=frac, method=name,
                             mean_error=mean_error(np.asarray(p.means), means),
                             heldout_loglik=heldout(p, Xte),
                             impute_rmse=None if filled is None else rmse(filled, Xtr, mask),
                             seconds=secs, complete_rows=int((~mask.any(1)).sum())))
            print(rows[-1], flush=True)
    from sklearn.datasets import load_wine

    X = load_wine().data
    X = (X - X.mean(0)) / X.std(0)
    Xn = remove(np.random.default_rng(1), X, 0.2)
    res = methods(X, Xn, 3, 0, args.n_init)
    ref = np.asarray(res["complete"][0].means)
    for name, (p, filled, secs) in res.items():
        rows.append(dict(data="wine (standardised)", missing=0.2, method=name,
                         mean_error=mean_error(np.asarray(p.means), ref),
                         heldout_loglik=heldout(p, X),
                         impute_rmse=None if filled is None else rmse(filled, X, np.isnan(Xn)),
                         seconds=secs, complete_rows=int((~np.isnan(Xn).any(1)).sum())))
        print(rows[-1], flush=True)
    return rows


def per_iteration(fit_once, lo=3, hi=13, reps=3):
    """ms per iteration: median time at ``hi`` minus at ``lo`` iterations, over the difference
    (each program compiled by a first call)."""
    fit_once(lo)
    fit_once(hi)
    t_lo, t_hi = [], []
    for _ in range(reps):
        for it, acc in ((lo, t_lo), (hi, t_hi)):
            t = time.perf_counter()
            fit_once(it)
            acc.append(time.perf_counter() - t)
    return 1e3 * (np.median(t_hi) - np.median(t_lo)) / (hi - lo)


def speed_case(n=100_000, d=16, k=16, frac=0.2):
    """The speed case: ``(X, X with frac of its entries removed, start)``, ``start`` the
    parameters of 5 EM iterations on the first 20 000 complete rows (every timing starts there).
    The experiments that time the missing-data pass use it too."""
    rng = np.random.default_rng(0)
    w, means, covs = truth(rng, k, d)
    X = draw(rng, w, means, covs, n)
    return X, remove(rng, X, frac), emjax.fit(X[:20000], k, max_iter=5).params


def speed(args):
    from sklearn.mixture import GaussianMixture

    n, d, k = args.speed_n, 16, 16
    X, Xn, sk_init = speed_case(n, d, k)
    dt = np.dtype(args.speed_dtype)
    X, Xn = X.astype(dt), Xn.astype(dt)
    wi, mi = np.asarray(sk_init.weights, dt), np.asarray(sk_init.means, dt)
    pi = np.linalg.inv(np.asarray(sk_init.covariance.covariances)).astype(dt)

    def run_missing(it):
        r = emjax.fit(Xn, k, missing="marginalize", tol=0.0, max_iter=it, weights_init=wi,
                      means_init=mi, precisions_init=pi)
        r.params.means.block_until_ready()

    def run_complete(it):
        r = emjax.fit(X, k, tol=0.0, max_iter=it, weights_init=wi, means_init=mi,
                      precisions_init=pi)
        r.params.means.block_until_ready()

    def run_sklearn(it):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            GaussianMixture(k, tol=0.0, max_iter=it, weights_init=wi, means_init=mi,
                            precisions_init=pi).fit(X)

    out = {}
    for name, fn in (("complete", run_complete), ("missing", run_missing),
                     ("sklearn_complete", run_sklearn)):
        out[name] = per_iteration(fn)
        print(name, f"{out[name]:.1f} ms per iteration", flush=True)
    counts = np.isnan(Xn).sum(1)
    return dict(n=n, d=d, k=k, missing=0.2, dtype=dt.name, ms_per_iter=out,
                ratio_missing_over_complete=out["missing"] / out["complete"],
                ratio_missing_over_sklearn=out["missing"] / out["sklearn_complete"],
                missing_per_row_histogram=np.bincount(counts).tolist())


def figure(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    syn = [r for r in rows if r["data"] == "synthetic"]
    names = list(dict.fromkeys(r["method"] for r in syn))
    colour = {n: f"C{i}" for i, n in enumerate(names)}
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, label in zip(axes, ("mean_error", "heldout_loglik", "impute_rmse"),
                              ("RMS error of the means", "held-out log-likelihood per row",
                               "RMS error of imputed entries")):
        for name in names:
            pts = [(r["missing"], r[key]) for r in syn if r["method"] == name
                   and r[key] is not None]
            if pts:
                ax.plot(*zip(*pts), "o-", label=name, color=colour[name])
        ax.set_xlabel("fraction of entries missing")
        ax.set_title(label, fontsize=10)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle("N = 20 000, D = 8, K = 4, full covariances, missing at random", fontsize=10)
    fig.tight_layout()
    tmp = tempfile.NamedTemporaryFile(dir=path.parent, suffix=".png", delete=False)
    fig.savefig(tmp.name, dpi=110)
    os.replace(tmp.name, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--n-init", type=int, default=2)
    ap.add_argument("--speed-n", type=int, default=100000)
    ap.add_argument("--speed-dtype", choices=("float64", "float32"), default="float64",
                    help="dtype of the speed case (every library gets the same arrays)")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-recovery", action="store_true")
    ap.add_argument("--figure-only", action="store_true", help="redraw from the results JSON")
    args = ap.parse_args()
    if args.figure_only:
        rows = json.loads((HERE / "results" / "missing_data.json").read_text())["recovery"]
        figure(rows, ROOT / "docs" / "figures" / "missing_data.png")
        return
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip()
    out = dict(command="PYTHONPATH=. python experiments/missing_data.py " + " ".join(
        sys.argv[1:]), commit=commit,
        measured=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), jax=jax.__version__)
    path = HERE / "results" / "missing_data.json"
    if path.exists():
        out = {**json.loads(path.read_text()), **out}
    if not args.skip_recovery:
        out["recovery"] = recovery(args)
        figure(out["recovery"], ROOT / "docs" / "figures" / "missing_data.png")
    if not args.skip_speed:  # runs accumulate: the shared machine's load moves the peers
        load_before = os.getloadavg()
        run = speed(args)
        out.setdefault("speed_runs", []).append(
            dict(run, command=out["command"], commit=commit, measured=out["measured"],
                 load_average_before=[round(x, 2) for x in load_before],
                 load_average_after=[round(x, 2) for x in os.getloadavg()]))
    tmp = tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".json", delete=False)
    json.dump(out, tmp, indent=1)
    tmp.close()
    os.replace(tmp.name, path)
    print("->", path)


if __name__ == "__main__":
    main()
