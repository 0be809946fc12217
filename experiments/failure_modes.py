"""Failure-mode mixture on the synthetic fleets of spec section 11: recovery, BIC, diagnosis from
partial data and remaining useful life. Writes three figures to docs/figures/ and prints the
numbers quoted in the README.

    PYTHONPATH=. python experiments/failure_modes.py
"""

import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from emjax import failure_mode as fm
from emjax.failure_mode import data as fd

OUT = Path(__file__).resolve().parents[1] / "docs" / "figures"
COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
CHANNELS = ["sensor 1", "sensor 2", "sensor 3", "health index y"]
BASIS = fm.QUADRATIC
THRESHOLD = 2.5
FIT = dict(n_init=8, max_iter=500, tol=1e-7)

predict_proba = jax.jit(fm.predict_proba)
rul_point = jax.jit(fm.rul_point, static_argnames=("basis", "channel", "n_grid"))
failure_times = jax.jit(fm.failure_time_samples,
                        static_argnames=("basis", "channel", "n_samples", "n_grid"))


def timed_fit(data, k, **kw):
    t = time.perf_counter()
    res = jax.block_until_ready(fm.fit(data, k, key=jax.random.key(0), **{**FIT, **kw}))
    return res, time.perf_counter() - t


def recovery(setting, seed):
    syn = fd.make_synthetic(seed, setting=setting)
    data = syn.to_data()
    res, secs = timed_fit(data, 3)
    pred = np.asarray(fm.predict(res.params, data))
    perm, acc = fm.match_labels(syn.labels, pred, 3)
    params = fm.permute_modes(res.params, perm)
    sd_ratio = np.sqrt(np.asarray(params.noise_var) / syn.params.noise_var)
    truth = fm.FMMParams(*(jnp.asarray(a) for a in syn.params))
    ll_true = float(jnp.sum(fm.posterior(truth, data).log_lik))
    hist = np.asarray(res.restarts.history)
    min_step = min(np.diff(h[np.isfinite(h)]).min() for h in hist)
    print(f"{setting} (seed {seed}, L=300): accuracy {acc:.3f}, noise s.d. ratio "
          f"[{sd_ratio.min():.3f}, {sd_ratio.max():.3f}], max|mu err| "
          f"{np.abs(np.asarray(params.means) - syn.params.means).max():.3f}, weights "
          f"{np.round(np.asarray(params.weights), 3)}, ll {float(res.log_likelihood):.1f} "
          f"(truth {ll_true:.1f}), iterations {int(res.n_iter)}, smallest ll step "
          f"{min_step:.2e}, fit {secs:.1f} s (8 restarts, incl. compile)")
    bics = {}
    for k in (2, 3, 4, 5):
        r = res if k == 3 else timed_fit(data, k)[0]
        bics[k] = (float(r.bic), float(r.icl))
    print("  BIC/ICL by K: " + ", ".join(f"K={k}: {b:.1f}/{i:.1f}" for k, (b, i) in bics.items())
          + f" -> BIC picks K={min(bics, key=lambda k: bics[k][0])}")
    return syn, data, res, perm


def figure_curves(syn, data, res, perm):
    post = fm.posterior(res.params, data)
    mode = np.asarray(perm)[np.asarray(jnp.argmax(post.log_resp, 1))]
    params = fm.permute_modes(res.params, perm)
    grid = np.linspace(0, 1, 101)
    phi = np.asarray(BASIS(jnp.asarray(grid)))
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.2), sharex=True)
    rng = np.random.default_rng(0)
    show = rng.choice(syn.times.shape[0], 90, replace=False)
    for c, ax in enumerate(axes):
        for l in show:
            o = np.isfinite(syn.values[l, c])
            ax.plot(syn.times[l, o], syn.values[l, c, o], lw=0.6, alpha=0.45,
                    color=COLORS[mode[l]])
        for k in range(3):
            ax.plot(grid, phi @ np.asarray(params.means[c, k]), color=COLORS[k], lw=2.8,
                    label=f"mode {k + 1} (fitted mean)")
            ax.plot(grid, phi @ syn.params.means[c, k], color="k", lw=1, ls="--")
        ax.set_title(CHANNELS[c])
        ax.set_xlabel("rescaled time")
    axes[-1].axhline(THRESHOLD, color="grey", lw=0.8, ls=":")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle("Easy setting: 90 of 300 units coloured by recovered failure mode "
                 "(thick: fitted mode means; dashed: truth)", fontsize=10)
    fig.tight_layout()
    fig.savefig(OUT / "failure_modes_curves.png", dpi=80)
    plt.close(fig)


def observed_until(syn, t_now):
    """Mask every entry after t_now (per unit)."""
    return np.isfinite(syn.values) & (syn.times <= t_now[:, None])[:, None, :]


def figure_accumulating(fits):
    fracs = np.linspace(0.05, 1.0, 20)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    table = {}
    for (setting, res, perm), color in zip(fits, ["tab:blue", "tab:red"]):
        test = fd.make_synthetic(101, setting=setting, n_units=200)
        inv = np.argsort(np.asarray(perm))  # true mode -> fitted mode
        probs, accs = [], []
        for f in fracs:
            t_now = f * test.end
            data = fm.make_data(test.times, test.values, observed_until(test, t_now), t_scale=1.0)
            g = np.asarray(predict_proba(res.params, data))
            probs.append(g[np.arange(len(test.labels)), inv[test.labels]])
            accs.append(np.mean(np.asarray(perm)[g.argmax(1)] == test.labels))
        probs = np.array(probs)
        med = np.median(probs, 1)
        ax.plot(fracs, np.mean(probs, 1), color=color, lw=2,
                label=f"{setting}: mean P(true mode)")
        ax.fill_between(fracs, np.quantile(probs, 0.25, 1), np.quantile(probs, 0.75, 1),
                        color=color, alpha=0.15, label=f"{setting}: inter-quartile range")
        ax.plot(fracs, accs, color=color, lw=1, ls="--", label=f"{setting}: accuracy (MAP)")
        table[setting] = (fracs, np.mean(probs, 1), med, np.array(accs))
    ax.set_xlabel("fraction of the unit's observation window seen")
    ax.set_ylabel("probability / accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Diagnosis of 200 new units as data accumulate", fontsize=10)
    fig.tight_layout()
    fig.savefig(OUT / "failure_modes_probabilities.png", dpi=90)
    plt.close(fig)
    for setting, (fr, mean, _, acc) in table.items():
        pick = [1, 3, 9, 19]
        print(f"  {setting}: fraction seen -> mean P(true mode), accuracy: " + ", ".join(
            f"{fr[i]:.2f}: {mean[i]:.2f}, {acc[i]:.2f}" for i in pick))


def rul_study():
    """Train on run-to-failure units; predict RUL of new units from part of their life."""
    train = fd.make_synthetic(21, n_units=300, run_to_failure=True, horizon=(2.0, 2.0),
                              threshold=THRESHOLD)
    data = train.to_data()
    res3, _ = timed_fit(data, 3)
    res1, _ = timed_fit(data, 1)
    _, acc = fm.match_labels(train.labels, np.asarray(fm.predict(res3.params, data)), 3)
    test = fd.make_synthetic(202, n_units=200, run_to_failure=True, horizon=(2.0, 2.0),
                             threshold=THRESHOLD)
    ok = np.isfinite(test.failure_time)
    tf = test.failure_time[ok]
    values, times = test.values[ok], test.times[ok]
    fracs = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    out = {}
    key = jax.random.key(1)
    for name, res in (("K=3 mixture", res3), ("K=1 (no modes)", res1)):
        errs, mc_errs = [], []
        for f in fracs:
            t_now = f * tf
            part = fm.make_data(times, values,
                                np.isfinite(values) & (times <= t_now[:, None])[:, None],
                                t_scale=1.0)
            rul = np.asarray(rul_point(res.params, part, t_now, basis=BASIS,
                                       threshold=THRESHOLD, horizon=3.0, n_grid=400))
            errs.append(np.abs(rul - (tf - t_now)))
            if name.startswith("K=3"):
                s = np.asarray(failure_times(key, res.params, part, t_now, basis=BASIS,
                                             threshold=THRESHOLD, horizon=3.0, n_samples=2000,
                                             n_grid=400))
                mc = np.median(s, 1) - t_now
                mc_errs.append(np.abs(mc - (tf - t_now)))
        out[name] = np.array(errs)
        if mc_errs:
            out["K=3 Monte Carlo median"] = np.array(mc_errs)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    styles = {"K=3 mixture": ("tab:blue", "-"), "K=3 Monte Carlo median": ("tab:cyan", ":"),
              "K=1 (no modes)": ("tab:grey", "--")}
    for name, e in out.items():
        c, ls = styles[name]
        ax.plot(fracs, np.median(e, 1), color=c, ls=ls, lw=2, label=f"{name}: median |error|")
        if name == "K=3 mixture":
            ax.fill_between(fracs, np.quantile(e, 0.25, 1), np.quantile(e, 0.75, 1), color=c,
                            alpha=0.15, label=f"{name}: inter-quartile range")
    ax.set_xlabel("fraction of life observed")
    ax.set_ylabel("|RUL error| (rescaled time)")
    ax.set_title(f"RUL of {ok.sum()} new units (threshold y = {THRESHOLD})", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "failure_modes_rul.png", dpi=90)
    plt.close(fig)
    print(f"RUL: training accuracy (run-to-failure, L=300) {acc:.3f}; {ok.sum()} test units; "
          f"median true life {np.median(tf):.3f}")
    for name, e in out.items():
        print(f"  {name}: median |RUL error| at fraction " + ", ".join(
            f"{f:.1f}: {m:.3f}" for f, m in zip(fracs, np.median(e, 1)) if f in (0.1, 0.3, 0.5,
                                                                                   0.7, 0.9)))


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    syn, data, res, perm = recovery("easy", 1)
    figure_curves(syn, data, res, perm)
    _, _, res_h, perm_h = recovery("hard", 7)
    figure_accumulating([("easy", res, perm), ("hard", res_h, perm_h)])
    rul_study()


if __name__ == "__main__":
    main()
