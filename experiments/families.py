"""Mixtures of component families against StepMix and NumPy references.

    PYTHONPATH=. python experiments/families.py            # full run
    PYTHONPATH=. python experiments/families.py --quick    # small smoke run

1. Latent class analysis (categorical, N = 5000, 10 items of 3 categories, K = 4) against
   StepMix (``pip install stepmix``; NumPy, one restart at a time): from the same start
   (the same initial responsibilities; both then take one M-step from them), the
   log-likelihood after the same number of EM iterations; then 16 restarts: emjax's one
   vmapped program against StepMix run 16 times, three interleaved repeats in the same run
   (best of each reported, and every pair's ratio).
2. A mixed-type table (Gaussian, binary, categorical columns, 5 % missing) against StepMix's
   nested model with its NaN-aware emissions, from the same start.
3. Poisson and Bernoulli mixtures against a plain NumPy EM from the same start.

Writes experiments/results/families.json and docs/figures/families.png. Float64 throughout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from emjax import families as F  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                       text=True).strip()
    except Exception:
        return "unknown"


def lca_data(rng, n, items=10, cats=3, k=4):
    weights = np.array([0.4, 0.3, 0.2, 0.1])[:k]
    probs = rng.dirichlet(np.full(cats, 0.5), size=(k, items))
    z = rng.choice(k, size=n, p=weights / weights.sum())
    u = rng.random((n, items, 1))
    X = (u > np.cumsum(probs[z], axis=-1)).sum(-1).astype(float)
    return X, z


def start_from(fam, X, resp):
    """emjax parameters after one M-step from responsibilities ``resp`` and uniform weights
    (StepMix's initialisation from the same responsibilities)."""
    data = fam.encode(jnp.asarray(X))
    theta, _ = fam.m_step(fam.stats(None, data, jnp.asarray(resp)), None, data)
    k = resp.shape[1]
    return F.MixtureParams(jnp.full((k,), 1.0 / k), theta)


def stepmix_seeded(resp0, **kwargs):
    """A StepMix whose initialisation is the given responsibilities (then its own M-step)."""
    from stepmix import StepMix

    class Seeded(StepMix):
        def _initialize_parameters(self, X, random_state):
            self.log_resp_ = np.log(np.clip(resp0, 1e-15, 1 - 1e-15))
            self.weights_ = np.ones(self.n_components) / self.n_components
            self._initialize_parameters_measurement(X, random_state)

    return Seeded(**kwargs)


def timed(fn, repeats=1):
    best, out = np.inf, None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        jax.block_until_ready(out)
        best = min(best, time.perf_counter() - t)
    return best, out


def lca(quick: bool, n_init: int = 16) -> dict:
    from stepmix import StepMix

    rng = np.random.default_rng(0)
    n = 1000 if quick else 5000
    k = 4
    X, _ = lca_data(rng, n)
    fam = F.Categorical(floor=1e-15)
    bound = fam.bind(X)
    resp0 = rng.dirichlet(np.ones(k), size=n)
    p0 = start_from(bound, X, resp0)
    out = {"n_samples": n, "n_items": 10, "n_categories": 3, "n_components": k}

    # same start, same number of iterations: StepMix's score after max_iter M-steps
    same = []
    for iters in (10, 100, 1000):
        sm = stepmix_seeded(resp0, n_components=k, measurement="categorical", max_iter=iters,
                            abs_tol=0.0, rel_tol=0.0, n_init=1, verbose=0, progress_bar=0,
                            random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sm.fit(X)
        ll_sm = float(sm.score(X))
        res = F.fit(X, fam, k, params_init=p0, tol=0.0, max_iter=iters)
        ll_em = float(res.log_likelihood)
        same.append({"iterations": iters, "stepmix": ll_sm, "emjax": ll_em,
                     "relative_difference": abs(ll_em - ll_sm) / abs(ll_sm)})
        print(f"  LCA same start, {iters:>4} iterations: StepMix {ll_sm:.12f} emjax "
              f"{ll_em:.12f} rel diff {same[-1]['relative_difference']:.2e}")
    out["same_start"] = same

    # own starts: 16 restarts, tolerance 1e-8 on the mean log-likelihood, at most 1000 its
    tol, max_iter = 1e-8, 1000

    def run_emjax(seed):
        r = F.fit(X, fam, k, n_init=n_init, tol=tol, max_iter=max_iter,
                  key=jax.random.key(seed))
        return r

    t_first, r = timed(lambda: run_emjax(1))
    lls_em = np.asarray(r.restarts.log_likelihood)
    its_em = np.asarray(r.restarts.n_iter)

    def run_stepmix():
        lls, its = [], []
        for seed in range(n_init):
            sm = StepMix(n_components=k, measurement="categorical", max_iter=max_iter,
                         abs_tol=tol, n_init=1, verbose=0, progress_bar=0, random_state=seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sm.fit(X)
            lls.append(float(sm.score(X)))
            its.append(int(sm.n_iter_))
        return np.array(lls), np.array(its)

    # interleaved repeats, so a change of the shared machine's load hits both sides alike
    ts_em, ts_sm = [], []
    for _ in range(3):
        t, r = timed(lambda: run_emjax(2))
        ts_em.append(t)
        t, (lls_sm, its_sm) = timed(run_stepmix)
        ts_sm.append(t)
    t_em, t_sm = min(ts_em), min(ts_sm)
    out["restarts"] = {
        "n_init": n_init, "tol": tol, "max_iter": max_iter,
        "emjax_seconds": t_em, "emjax_first_call_seconds": t_first,
        "stepmix_seconds": t_sm, "speedup": t_sm / t_em,
        "emjax_seconds_each": ts_em, "stepmix_seconds_each": ts_sm,
        "speedup_each": [b / a for a, b in zip(ts_em, ts_sm)],
        "speedup_including_compile": t_sm / t_first,
        "emjax_best_loglik": float(lls_em.max()), "stepmix_best_loglik": float(lls_sm.max()),
        "emjax_logliks": lls_em.tolist(), "stepmix_logliks": lls_sm.tolist(),
        "emjax_iterations": its_em.tolist(), "stepmix_iterations": its_sm.tolist(),
        "emjax_iterations_total": int(its_em.sum()), "stepmix_iterations_total":
            int(its_sm.sum()),
    }
    print(f"  LCA {n_init} restarts: emjax {t_em:.3f} s ({t_first:.2f} s first call with "
          f"compile), StepMix {t_sm:.2f} s: {t_sm / t_em:.1f}x ({t_sm / t_first:.1f}x with "
          f"compile); best loglik emjax {lls_em.max():.6f} StepMix {lls_sm.max():.6f}")
    return out


def mixed(quick: bool) -> dict:
    """Gaussian (2 columns), binary (3) and categorical (2 items of 4) with 5 % missing."""
    rng = np.random.default_rng(1)
    n, k = (1000 if quick else 5000), 3
    z = rng.choice(k, size=n, p=[0.5, 0.3, 0.2])
    mu = np.array([[0.0, 0.0], [2.0, -1.0], [-2.0, 2.0]])
    g = mu[z] + rng.normal(size=(n, 2))
    pb = rng.uniform(0.1, 0.9, size=(k, 3))
    b = (rng.random((n, 3)) < pb[z]).astype(float)
    pc = rng.dirichlet(np.ones(4), size=(k, 2))
    c = (rng.random((n, 2, 1)) > np.cumsum(pc[z], -1)).sum(-1).astype(float)
    X = np.column_stack([g, b, c])
    X[rng.random(X.shape) < 0.05] = np.nan
    X[np.isnan(X).all(1), 0] = 0.0
    fam = F.Product({"g": F.Gaussian("diag", reg_covar=0.0, n_features=2),
                     "b": F.Bernoulli(floor=1e-15, n_features=3),
                     "c": F.Categorical(4, floor=1e-15, n_features=2)})
    bound = fam.bind(X)
    resp0 = rng.dirichlet(np.ones(k), size=n)
    p0 = start_from(bound, X, resp0)
    out = {"n_samples": n, "n_components": k, "missing_fraction": float(np.isnan(X).mean())}
    try:
        descriptor = {
            "g": {"model": "continuous_nan", "n_columns": 2},
            "b": {"model": "binary_nan", "n_columns": 3},
            "c": {"model": "categorical_nan", "n_columns": 2},
        }
        rows = []
        for iters in (10, 200):
            sm = stepmix_seeded(resp0, n_components=k, measurement=descriptor, max_iter=iters,
                                abs_tol=0.0, rel_tol=0.0, verbose=0, progress_bar=0,
                                random_state=0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sm.fit(X)
            ll_sm = float(sm.score(X))
            res = F.fit(X, fam, k, params_init=p0, tol=0.0, max_iter=iters)
            ll_em = float(res.log_likelihood)
            rows.append({"iterations": iters, "stepmix": ll_sm, "emjax": ll_em,
                         "relative_difference": abs(ll_em - ll_sm) / abs(ll_sm)})
            print(f"  mixed same start, {iters:>3} iterations: StepMix {ll_sm:.10f} emjax "
                  f"{ll_em:.10f} rel diff {rows[-1]['relative_difference']:.2e}")
        out["same_start"] = rows
    except Exception as exc:  # StepMix's NaN emissions are optional to this comparison
        out["stepmix_error"] = f"{type(exc).__name__}: {exc}"
        print(f"  mixed: StepMix failed: {out['stepmix_error']}")
    t, res = timed(lambda: F.fit(X, fam, k, n_init=8, tol=1e-8, max_iter=500), repeats=1)
    out["emjax_8_restarts"] = {"loglik": float(res.log_likelihood), "seconds_with_compile": t,
                               "converged": bool(res.converged), "status": int(res.status)}
    return out


def numpy_em(X, log_prob, m_step, weights, theta, iters):
    """Textbook EM in NumPy (seed 003, section 3): ``iters`` iterations; returns the mean
    log-likelihood at the start and after each iteration, and the final parameters."""
    trace = []
    for it in range(iters + 1):
        lp = log_prob(theta, X) + np.log(weights)
        m = lp.max(1, keepdims=True)
        ll = m[:, 0] + np.log(np.exp(lp - m).sum(1))
        trace.append(ll.mean())
        if it == iters:
            break
        r = np.exp(lp - ll[:, None])
        weights = r.sum(0) / r.sum()
        theta = m_step(r, X)
    return np.array(trace), weights, theta


def poisson_bernoulli(quick: bool) -> dict:
    from scipy import special

    rng = np.random.default_rng(2)
    n, k, iters = (1000 if quick else 5000), 3, 200
    out = {}
    z = rng.choice(k, size=n)
    cases = {
        "poisson": (rng.poisson(np.array([[1, 4, 2, 8], [6, 1, 3, 2], [3, 3, 9, 1]])[z]),
                    F.Poisson(floor=0.0),
                    lambda th, X: X @ np.log(th).T - th.sum(1)[None] -
                    special.gammaln(X + 1).sum(1)[:, None],
                    lambda r, X: (r.T @ X) / r.sum(0)[:, None]),
        "bernoulli": ((rng.random((n, 6)) < rng.uniform(0.05, 0.95, (k, 6))[z]),
                      F.Bernoulli(floor=0.0),
                      lambda th, X: X @ np.log(th).T + (1 - X) @ np.log1p(-th).T,
                      lambda r, X: (r.T @ X) / r.sum(0)[:, None]),
    }
    for name, (X, fam, lp, ms) in cases.items():
        X = X.astype(float)
        bound = fam.bind(X)
        resp0 = rng.dirichlet(np.ones(k), size=n)
        p0 = start_from(bound, X, resp0)
        theta0 = np.asarray(jax.tree_util.tree_leaves(p0.components)[0])
        trace, w_np, th_np = numpy_em(X, lp, ms, np.full(k, 1 / k), theta0, iters)
        res = F.fit(X, fam, k, params_init=p0, tol=0.0, max_iter=iters)
        th_em = np.asarray(jax.tree_util.tree_leaves(res.params.components)[0])
        out[name] = {
            "n_samples": n, "n_components": k, "iterations": iters,
            "numpy_loglik": float(trace[-1]), "emjax_loglik": float(res.log_likelihood),
            "relative_difference": float(abs(trace[-1] - res.log_likelihood) / abs(trace[-1])),
            "max_param_difference": float(np.max(np.abs(th_np - th_em))),
            "emjax_history": np.asarray(res.history).tolist(), "numpy_history": trace.tolist(),
        }
        print(f"  {name}: NumPy {trace[-1]:.12f} emjax {float(res.log_likelihood):.12f} rel "
              f"diff {out[name]['relative_difference']:.1e}, max |param diff| "
              f"{out[name]['max_param_difference']:.1e}")
    return out


def figure(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    r = results["lca"]["restarts"]
    ax = axes[0]
    ax.bar(["emjax\n(16 restarts,\none program)", "emjax\nfirst call\n(+ compile)",
            "StepMix\n(16 runs)"],
           [r["emjax_seconds"], r["emjax_first_call_seconds"], r["stepmix_seconds"]],
           color=["C0", "C9", "C1"])
    ax.set_ylabel("seconds")
    ax.set_title(f"LCA, N={results['lca']['n_samples']}, 10 items x 3, K=4: "
                 f"{r['speedup']:.0f}x", fontsize=9)
    ax = axes[1]
    ax.scatter(range(len(r["stepmix_logliks"])), sorted(r["stepmix_logliks"]), label="StepMix",
               marker="o", facecolors="none", edgecolors="C1")
    ax.scatter(range(len(r["emjax_logliks"])), sorted(r["emjax_logliks"]), label="emjax",
               marker="x", color="C0")
    ax.set_xlabel("restart (sorted)")
    ax.set_ylabel("mean log-likelihood reached")
    ax.set_title("log-likelihood of each restart", fontsize=9)
    ax.legend(fontsize=8)
    ax = axes[2]
    for name, c in (("poisson", "C2"), ("bernoulli", "C3")):
        pb = results["poisson_bernoulli"][name]
        h = np.asarray(pb["emjax_history"])
        t = np.asarray(pb["numpy_history"])
        ax.plot(t[-1] - t[:len(h)] + 1e-16, color=c, label=f"{name}: NumPy")
        ax.plot(t[-1] - h + 1e-16, color=c, ls=":", lw=2.5, label=f"{name}: emjax")
    ax.set_yscale("log")
    ax.set_xlabel("EM iteration")
    ax.set_ylabel("final - current mean log-lik")
    ax.set_title("same start: emjax on the NumPy trace", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    import stepmix

    results = {"command": "PYTHONPATH=. python experiments/families.py"
               + (" --quick" if args.quick else ""), "commit": commit(),
               "date": time.strftime("%Y-%m-%d", time.gmtime()),
               "jax": jax.__version__, "stepmix": stepmix.__version__,
               "cpu_count": os.cpu_count(), "load_average": os.getloadavg()[0]}
    print("latent class analysis")
    results["lca"] = lca(args.quick)
    print("Poisson and Bernoulli against NumPy")
    results["poisson_bernoulli"] = poisson_bernoulli(args.quick)
    print("mixed-type table")
    results["mixed"] = mixed(args.quick)
    results["load_average_end"] = os.getloadavg()[0]
    name = "families_quick" if args.quick else "families"
    out = os.path.join(ROOT, "experiments", "results", f"{name}.json")
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, out)
    fig = os.path.join(ROOT, "docs", "figures", f"{name}.png")
    figure(results, fig)
    print(f"wrote {out} and {fig}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
