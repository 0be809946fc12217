"""Rewrite the generated blocks of ``docs/performance.md`` from ``experiments/results/*.json`` and
:func:`emjax.explain_plan`.

    PYTHONPATH=. python experiments/performance_report.py [--doc docs/performance.md]

Each block sits between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``; the text
around the blocks is left as it is. Every block says which command and commit produced it.
The file is replaced atomically.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
sys.path.insert(0, str(ROOT / "experiments"))

#: Problems whose plans the page shows: the benchmark headline in both dtypes, a whitened full
#: fit, a small dense one (N, D, K, covariance type, dtype).
PLAN_PROBLEMS = [
    (100_000, 16, 16, "full", "float32"),
    (100_000, 16, 16, "diag", "float64"),
    (100_000, 64, 4, "full", "float32"),
    (1_000, 15, 5, "full", "float64"),
]


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _commit_of(path: Path, res: dict) -> str:
    """The commit a result records, else the commit that last wrote its file."""
    if res.get("commit"):
        return f"at commit {res['commit']}"
    return f"recorded in commit {_git('log', '-1', '--format=%h', '--', str(path))}"


def plans_block() -> str:
    import emjax

    head = _git("rev-parse", "--short", "HEAD")
    out = [f"`emjax.explain_plan(...)` at commit {head} (CPU table; the last one on a GPU, "
           "as any non-CPU backend plans it):", "", "```"]
    for n, d, k, ct, dt in PLAN_PROBLEMS:
        out.append(f">>> print(emjax.explain_plan({n}, {d}, {k}, covariance_type={ct!r}, "
                   f"dtype={dt!r}, backend='cpu'))")
        out.append(emjax.explain_plan(n, d, k, covariance_type=ct, dtype=dt, backend="cpu"))
    n, d, k, ct, dt = PLAN_PROBLEMS[0]
    out.append(f">>> print(emjax.explain_plan({n}, {d}, {k}, covariance_type={ct!r}, "
               f"dtype={dt!r}, backend='gpu'))")
    out.append(emjax.explain_plan(n, d, k, covariance_type=ct, dtype=dt, backend="gpu"))
    out.append("```")
    return "\n".join(out)


def benchmark_block() -> str:
    import benchmark_report as br

    out = []
    for name, title in (("benchmark.json", "Default grid"),
                        ("benchmark_full.json", "Full grid")):
        path = RESULTS / name
        if not path.exists():
            continue
        res = json.loads(path.read_text())
        m, v = res["machine"], res["versions"]
        out.append(f"### {title}\n\nCommand: `PYTHONPATH=. {res['command']}`, "
                   f"{res['started']}, {_commit_of(path, res)} ({m['cpu_count']} cores, "
                   f"jax {v['jax']}, scikit-learn {v['scikit-learn']}, gmmx {v['gmmx']}).")
        out.append(br.tables(res))
        out.append("")
    return "\n".join(out).rstrip()


def profiles_block() -> str:
    out = []
    for name in sorted(glob.glob(str(RESULTS / "profile_*.json"))):
        path = Path(name)
        r = json.loads(path.read_text())
        if "wall_ms_per_iter" not in r:  # profile_vmap.json: a vmapped fit, not one iteration
            continue
        out.append(f"**N = {r['n']}, D = {r['d']}, K = {r['k']}, {r['cov_type']}, {r['dtype']}** "
                   f"({path.name}, {r['measured']}, {_commit_of(path, r)}, jax {r['jax']}): "
                   f"{r['wall_ms_per_iter']:.2f} ms per iteration, chunk {r['chunk_size']}\n")
        out.append("| HLO op, shape (JAX op) | calls/iter | ms/iter | idle after |")
        out.append("|---|---|---|---|")
        for op in r["ops"][:5]:
            desc = op["op"].replace("|", "\\|")
            idle = op.get("idle_after_ms_per_iter")  # older profiles did not record it
            idle = "–" if idle is None else f"{idle:.2f}"
            out.append(f"| `{desc}` | {op['calls_per_iter']:.1f} | "
                       f"{op['ms_per_iter']:.2f} | {idle} |")
        out.append("")
    return "\n".join(out).rstrip()


BLOCKS = {"plans": plans_block, "benchmark": benchmark_block, "profiles": profiles_block}


def render(text: str) -> str:
    for name, fn in BLOCKS.items():
        pat = re.compile(rf"(<!-- generated:{name} -->\n).*?(<!-- /generated:{name} -->)",
                         re.S)
        if not pat.search(text):
            raise SystemExit(f"no block {name!r} in the page")
        body = fn()
        text = pat.sub(lambda m, body=body: m.group(1) + body + "\n" + m.group(2), text)
    return text


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--doc", default=str(ROOT / "docs" / "performance.md"))
    args = ap.parse_args()
    path = Path(args.doc)
    new = render(path.read_text())
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".performance.", suffix=".md")
    with os.fdopen(fd, "w") as f:
        f.write(new)
    os.replace(tmp, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
