"""Markdown tables and a figure from ``experiments/results/benchmark.json``.

    PYTHONPATH=. python experiments/benchmark_report.py [results.json] [--figure PATH]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ms(r, lib):
    v = r.get(lib, {}).get("per_iter_s")
    return None if v is None else 1e3 * v


def _fmt(v, spec=".1f", none="–"):
    return none if v is None else format(v, spec)


def _ll_gap(r) -> str:
    """emjax's minus scikit-learn's mean log-likelihood after the same number of iterations
    (``final_ll_at``); older results without it are compared at their last iteration."""
    if "sklearn" not in r or "emjax" not in r:
        return "–"
    e, s = r["emjax"], r["sklearn"]
    common = set(e.get("final_ll_at", {})) & set(s.get("final_ll_at", {}))
    if common:
        t = max(common, key=int)
        return f"{e['final_ll_at'][t] - s['final_ll_at'][t]:+.1e} (@{t})"
    return f"{e['final_ll'] - s['final_ll']:+.1e}*"


def tables(res) -> str:
    out = []
    libs = ["emjax", "emjax-dense", "sklearn", "gmmx"]
    for dt, dres in res["dtypes"].items():
        peak = dres["peak"]["peak"]
        present = [lib for lib in libs if any(lib in row["results"] for row in dres["grid"])]
        out.append(f"\n**Time per EM iteration, {dt}** (ms, median; GEMM peak measured "
                   f"{peak:.0f} GFLOP/s)\n")
        head = ["N", "D", "K", "cov"] + [f"{lib} ms" for lib in present]
        head += ["x vs sklearn", "x vs gmmx", "emjax GFLOP/s (% peak)", "compile s",
                 "Δ ll vs sklearn"]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for row in dres["grid"]:
            r = row["results"]
            e = _ms(r, "emjax")
            s, g = _ms(r, "sklearn"), _ms(r, "gmmx")
            gf = r.get("emjax", {}).get("gflops")
            cells = [f"{row['n']:.0e}".replace("e+0", "e"), str(row["d"]), str(row["k"]),
                     row["cov_type"]]
            cells += [_fmt(_ms(r, lib), ".2f") for lib in present]
            cells.append(_fmt(s / e if (s and e and e > 0) else None, ".1f"))
            cells.append(_fmt(g / e if (g and e and e > 0) else None, ".1f"))
            cells.append("–" if gf is None else f"{gf:.1f} ({100 * gf / peak:.0f} %)")
            cells.append(_fmt(r.get("emjax", {}).get("compile_s"), ".1f"))
            cells.append(_ll_gap(r))
            out.append("| " + " | ".join(cells) + " |")
        for name, key in (("End to end with restarts", "restarts"),
                          ("Small problems, whole fit after compilation", "small")):
            rows = dres.get(key, [])
            if not rows:
                continue
            out.append(f"\n**{name}, {dt}** (default init, tol 1e-3)\n")
            out.append("| N | D | K | cov | n_init | emjax s | emjax compile s | sklearn s | "
                       "speed-up | best ll emjax | best ll sklearn |")
            out.append("|---|---|---|---|---|---|---|---|---|---|---|")
            for row in rows:
                r = row["results"]
                e, s = r.get("emjax", {}), r.get("sklearn", {})
                sp = s["fit_s"] / e["fit_s"] if e and s else None
                out.append(
                    f"| {row['n']} | {row['d']} | {row['k']} | {row['cov_type']} | "
                    f"{row['n_init']} | {_fmt(e.get('fit_s'), '.3f')} | "
                    f"{_fmt(e.get('compile_s'), '.1f')} | {_fmt(s.get('fit_s'), '.3f')} | "
                    f"{_fmt(sp, '.1f')} | {_fmt(e.get('best_ll'), '.4f')} | "
                    f"{_fmt(s.get('best_ll'), '.4f')} |")
    if res.get("memory"):
        out.append("\n**Peak memory** (a fresh subprocess: make data, run a few EM iterations; "
                   "full covariance, float32)\n")
        out.append("| library | N | D | K | data MiB | RSS before fit MiB | peak RSS MiB | "
                   "peak / data |")
        out.append("|---|---|---|---|---|---|---|---|")
        for row in res["memory"]:
            if "error" in row:
                out.append(f"| {row['lib']} | {row['n']} | {row['d']} | {row['k']} | "
                           f"error: {row['error'][:60]} | | | |")
                continue
            out.append(f"| {row['lib']} | {row['n']} | {row['d']} | {row['k']} | "
                       f"{row['data_mb']:.0f} | {row['rss_before_fit_mb']:.0f} | "
                       f"{row['peak_rss_mb']:.0f} | {row['peak_rss_mb'] / row['data_mb']:.1f} |")
    return "\n".join(out)


def figure(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    dts = list(res["dtypes"])
    fig, axes = plt.subplots(1, len(dts), figsize=(5.2 * len(dts), 3.6), squeeze=False)
    colors = {"emjax": "C0", "emjax-dense": "C7", "sklearn": "C1", "gmmx": "C2"}
    for ax, dt in zip(axes[0], dts):
        rows = res["dtypes"][dt]["grid"]
        labels = [f"{r['cov_type']}\n{r['n']:.0e}/{r['d']}/{r['k']}".replace("e+0", "e")
                  for r in rows]
        libs = [lib for lib in colors if any(lib in r["results"] for r in rows)]
        width = 0.8 / len(libs)
        x = np.arange(len(rows))
        for i, lib in enumerate(libs):
            vals = [_ms(r["results"], lib) or np.nan for r in rows]
            ax.bar(x + i * width, vals, width, label=lib, color=colors[lib])
        ax.set_yscale("log")
        ax.set_xticks(x + 0.4 - width / 2, labels, fontsize=6, rotation=90)
        ax.set_ylabel("ms per EM iteration")
        ax.set_title(f"{dt} (cov, N/D/K)", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    print(f"wrote {path}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results", nargs="?", default=str(ROOT / "experiments/results/benchmark.json"))
    ap.add_argument("--figure", default=str(ROOT / "docs/figures/benchmark.png"))
    args = ap.parse_args()
    res = json.loads(Path(args.results).read_text())
    print(f"Command: `{res['command']}` ({res['started']}, {res['machine']['cpu_count']} cores, "
          f"jax {res['versions']['jax']}, scikit-learn {res['versions']['scikit-learn']}, "
          f"gmmx {res['versions']['gmmx']})")
    print(tables(res))
    if args.figure:
        figure(res, args.figure)


if __name__ == "__main__":
    main()
