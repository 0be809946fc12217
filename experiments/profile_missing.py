"""Where the missing-data E-step's time goes: each bucket of the full-covariance pass timed alone,
and a per-operation profile of chosen buckets.

N = 1e5, D = 16, K = 16, full, 20 % missing, float64 (the speed case of
``experiments/missing_data.py``): :func:`emjax.gmm.missing._matrix_pass` compiled for each bucket
of :func:`emjax.gmm.missing.layout` on its own (median of 7 calls), then, for the buckets in
``--profile``, the XLA operations under ``jax.profiler`` summed by name and mapped to their HLO
(as ``experiments/profile_fast_path.py`` does). Writes
``experiments/results/profile_missing.json`` with the command, commit, date and load average::

    PYTHONPATH=. python experiments/profile_missing.py [--profile 3,4] [--top 12]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import missing_data as md  # noqa: E402
from profile_fast_path import hlo_ops, leaf_events  # noqa: E402

from emjax.gmm import missing as M  # noqa: E402

FIELDS = ("feats", "feats_t", "bidx", "pidx", "pat", "ppidx", "pwin", "ucols", "uidx")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="3,4", help="buckets (by index) to profile per op")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--out", default=str(HERE / "results" / "profile_missing.json"))
    args = ap.parse_args()
    k = 16
    _, Xn, params = md.speed_case(100_000, 16, k)
    data, _ = M.layout(Xn, None, k, "full")
    params = params._replace(means=params.means - data.center)
    data = jax.tree_util.tree_map(jnp.asarray, data)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=HERE).stdout.strip()
    out = dict(command="PYTHONPATH=. python experiments/profile_missing.py --profile "
               + args.profile, commit=commit,
               date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               load_average_before=os.getloadavg(), buckets=[])
    profile = {int(b) for b in args.profile.split(",") if b}
    fn = jax.jit(M._matrix_pass)

    def timed(sub, reps=7):
        jax.block_until_ready(fn(params, sub))
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            jax.block_until_ready(fn(params, sub))
            ts.append(time.perf_counter() - t)
        return 1e3 * float(np.median(ts))

    out["all_ms"] = timed(data)
    start = 0
    for b, s in enumerate(data.slots):
        n_chunks, c, J = s.shape
        rows = n_chunks * c
        part = slice(start, start + rows)
        sub = M.MissingData(data.x[part], data.observed[part], data.weight[part], (s,),
                            data.center, *[(getattr(data, f)[b],) for f in FIELDS])
        row = dict(bucket=b, missing_entries=J, rows=rows, chunk_rows=c,
                   per_pattern=bool(data.pat[b].shape[1]), union_columns=data.ucols[b].shape[1],
                   ms=timed(sub))
        if b in profile:
            compiled = fn.lower(params, sub).compile()
            ops = hlo_ops(compiled.as_text())
            jax.block_until_ready(compiled(params, sub))
            agg = collections.defaultdict(float)
            for e in leaf_events(lambda sub=sub: compiled(params, sub), 5, ops):
                agg[e["name"]] += e.get("dur", 0.0) / 1e3 / 5
            row["ops_ms"] = sum(agg.values())
            row["top_ops"] = [dict(name=nm, op=ops[nm], ms=ms) for nm, ms in
                              sorted(agg.items(), key=lambda x: -x[1])[:args.top]]
        out["buckets"].append(row)
        print(json.dumps({key: v for key, v in row.items() if key != "top_ops"}), flush=True)
        for op in row.get("top_ops", []):
            print(f"   {op['ms']:6.2f} ms  {op['op'][:110]}")
        start += rows
    out["sum_of_buckets_ms"] = sum(r["ms"] for r in out["buckets"])
    out["load_average_after"] = os.getloadavg()
    from emjax._files import atomic_write

    with atomic_write(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"whole pass {out['all_ms']:.1f} ms, buckets alone {out['sum_of_buckets_ms']:.1f} ms "
          f"-> {args.out}")


if __name__ == "__main__":
    main()
