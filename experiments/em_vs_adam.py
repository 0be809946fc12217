"""EM versus direct gradient ascent (optax Adam) on the observed log-likelihood of a GMM.

Same data, same initialisations (one per restart, shared by every method), many restarts run
as one vmapped batch per method. Records the mean log-likelihood after every iteration and the
wall time per iteration of the compiled batch, then writes a figure (log-likelihood against
iterations and against wall time) and a table.

    PYTHONPATH=. python experiments/em_vs_adam.py            # full run (~ a few minutes)
    PYTHONPATH=. python experiments/em_vs_adam.py --quick    # small smoke run

Methods: closed-form EM (``emjax.em.run`` with the GMM's steps); generalised EM with the
optax L-BFGS M-step (``emjax.gmm.gem``, 10 inner steps); Adam on the unconstrained coordinates of
``emjax.gmm.gem`` (softmax logits, means, precision Cholesky with log diagonal) at three learning
rates. Float64 throughout.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import numpy as np
import optax

from emjax import em, gmm
from emjax.gmm import fitting, gem, make_plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_data(key, n, d, k):
    """A K-component full-covariance mixture with moderate overlap, standardised."""
    km, kc, kw, ks = jax.random.split(key, 4)
    means = jax.random.normal(km, (k, d)) * 2.5
    a = jax.random.normal(kc, (k, d, d)) / jnp.sqrt(d)
    covs = a @ jnp.swapaxes(a, 1, 2) + 0.3 * jnp.eye(d)
    weights = jax.random.dirichlet(kw, jnp.full(k, 5.0))
    params = gmm.make_params(weights, means, covs, "full")
    X, _ = gmm.sample(ks, params, n)
    X = (X - X.mean(0)) / X.std(0)
    return X, params


def timed(fn, *args, repeats=1):
    """Compile, then the best wall time of ``repeats`` runs (seconds)."""
    jax.block_until_ready(fn(*args))
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return best


def run_em(model, params0, X, n_iter):
    e_step, m_step, repair = model

    @jax.jit
    def go(p0, X):
        res = em.run_restarts(e_step, m_step, p0, (X, None), tol=0.0, max_iter=n_iter,
                              repair=repair)
        # history[i] is the log-likelihood before iteration i's M-step; append the final one
        return jnp.concatenate([res.history, res.log_likelihood[:, None]], axis=1)

    curves = np.asarray(go(params0, X))
    return curves, timed(go, params0, X) / n_iter


def run_adam(params0, X, n_iter, learning_rate):
    ctype = params0.covariance_type
    opt = optax.adam(learning_rate)

    def mean_ll(u):
        return jnp.mean(gmm.score_samples(gem.from_unconstrained(u, ctype), X))

    def one(p0):
        u0 = gem.to_unconstrained(p0)

        def step(carry, _):
            u, s = carry
            ll, g = jax.value_and_grad(mean_ll)(u)
            upd, s = opt.update(jax.tree_util.tree_map(jnp.negative, g), s, u)
            return (optax.apply_updates(u, upd), s), ll

        (u, _), lls = jax.lax.scan(step, (u0, opt.init(u0)), None, length=n_iter)
        return jnp.concatenate([lls, mean_ll(u)[None]])

    go = jax.jit(jax.vmap(one))
    curves = np.asarray(go(params0))
    return curves, timed(go, params0) / n_iter


def summarise(name, curves, sec_per_iter, target, per_init, tol):
    final = curves[:, -1]
    final = np.where(np.isfinite(final), final, -np.inf)
    hit = curves >= target - tol
    first = np.where(hit.any(1), hit.argmax(1), -1)
    reached = first >= 0
    own = curves >= per_init[:, None] - tol
    first_own = np.where(own.any(1), own.argmax(1), -1)
    reached_own = first_own >= 0
    return {
        "method": name,
        "iterations": int(curves.shape[1] - 1),
        "ms_per_iteration_batch": 1e3 * sec_per_iter,
        "final_ll_median": float(np.median(final)),
        "final_ll_best": float(final.max()),
        "frac_reach_best": float(reached.mean()),
        "median_iters_to_best": float(np.median(first[reached])) if reached.any() else None,
        "median_ms_to_best": (float(np.median(first[reached]) * sec_per_iter * 1e3)
                              if reached.any() else None),
        "frac_reach_init_best": float(reached_own.mean()),
        "median_iters_to_init_best": (float(np.median(first_own[reached_own]))
                                      if reached_own.any() else None),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small smoke run")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "figures", "em_vs_adam.png"))
    ap.add_argument("--results", default=os.path.join(ROOT, "experiments", "results"))
    args = ap.parse_args()

    n, d, k, restarts = (1000, 3, 4, 8) if args.quick else (2000, 5, 6, 24)
    em_iters, gem_iters, adam_iters = (100, 50, 500) if args.quick else (300, 60, 2000)
    lrs = (0.01, 0.03, 0.1)
    X, _ = make_data(jax.random.key(0), n, d, k)
    keys = jax.random.split(jax.random.key(1), restarts)
    init = jax.vmap(lambda kk: fitting.init_params(kk, X, k, covariance_type="full",
                                                   reg_covar=1e-6,
                                                   init_params="random_from_data"))
    params0 = init(keys)

    runs = {}
    plan = make_plan("full", X.dtype, n, d, k)
    runs["EM (closed form)"] = run_em(fitting.make_model("full", 1e-6, plan=plan), params0, X,
                                      em_iters)
    runs["GEM (L-BFGS M-step, 10 steps)"] = run_em(gem.make_gem_model("full", 1e-6), params0, X,
                                                   gem_iters)
    for lr in lrs:
        runs[f"Adam lr={lr}"] = run_adam(params0, X, adam_iters, lr)

    finals = np.stack([c[:, -1] for c, _ in runs.values()])  # (methods, restarts)
    finals = np.where(np.isfinite(finals), finals, -np.inf)
    target = float(finals.max())
    per_init = finals.max(0)  # best any method reached from the same initialisation
    tol = 1e-3
    table = [summarise(name, c, t, target, per_init, tol) for name, (c, t) in runs.items()]
    meta = {"n_samples": n, "n_features": d, "n_components": k, "restarts": restarts,
            "target_ll": target, "tol": tol, "backend": jax.default_backend(),
            "note": "ms per iteration of the whole vmapped batch of restarts (after compiling)"}

    os.makedirs(args.results, exist_ok=True)
    with open(os.path.join(args.results, "em_vs_adam.json"), "w") as f:
        json.dump({"meta": meta, "table": table}, f, indent=2)
    lines = [
        f"n={n}, D={d}, K={k} (full covariances), {restarts} restarts, float64; "
        f"'best' = within {tol} of the best mean log-likelihood any run found ({target:.4f}); "
        "'init best' = within it of the best any method reached from the same initialisation.",
        "",
        "| method | iters | ms/iter (batch) | median final ll | best final ll | "
        "reach best | median iters to best | median ms to best | reach init best | "
        "median iters to init best |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table:
        it = "-" if r["median_iters_to_best"] is None else f"{r['median_iters_to_best']:.0f}"
        ms = "-" if r["median_ms_to_best"] is None else f"{r['median_ms_to_best']:.1f}"
        own = r["median_iters_to_init_best"]
        own = "-" if own is None else f"{own:.0f}"
        lines.append(
            f"| {r['method']} | {r['iterations']} | {r['ms_per_iteration_batch']:.2f} | "
            f"{r['final_ll_median']:.4f} | {r['final_ll_best']:.4f} | "
            f"{100 * r['frac_reach_best']:.0f}% | {it} | {ms} | "
            f"{100 * r['frac_reach_init_best']:.0f}% | {own} |")
    md = "\n".join(lines) + "\n"
    with open(os.path.join(args.results, "em_vs_adam.md"), "w") as f:
        f.write(md)
    print(md)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    colors = ["C0", "C1", "C2", "C3", "C4"]
    for (name, (curves, spi)), color in zip(runs.items(), colors):
        gap = np.maximum(per_init[:, None] - curves, 1e-7)
        med = np.median(gap, 0)
        lo, hi = np.quantile(gap, 0.1, 0), np.quantile(gap, 0.9, 0)
        it = np.arange(curves.shape[1])[1:]  # iteration 0 is the shared initialisation
        med, lo, hi = med[1:], lo[1:], hi[1:]
        for ax, x in zip(axes, (it, it * spi * 1e3)):
            ax.plot(x, med, color=color, label=name, lw=1.6, ls="--" if "GEM" in name else "-")
            ax.fill_between(x, lo, hi, color=color, alpha=0.12, lw=0)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_xlabel("iterations")
    axes[1].set_xlabel(f"wall time of the {restarts}-restart batch (ms)")
    axes[0].set_ylabel("gap to best mean log-lik. from same init")
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"EM vs Adam on a GMM log-likelihood (n={n}, D={d}, K={k}, {restarts} shared "
                 "inits; median and 10-90% band over inits)", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
