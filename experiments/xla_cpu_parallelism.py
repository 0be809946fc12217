"""How XLA:CPU spreads work over cores, and what that means for the missing-data pass.

Parts (``--parts``, default all):
  threshold  one elementwise loop fusion (sin, cos, float64) of n elements in a fori_loop:
             CPU seconds per wall second by n. XLA:CPU splits a memory-bound fusion over
             threads only from 512 KiB accessed (its ParallelTaskAssignment cost model).
  loops      1, 2 and 4 independent while loops of small elementwise work in one program,
             each over its own data: whether they run at once (wall time by count).
  missing    the missing-data EM iteration (N = 1e5, D = K = 16, full, 20 % missing, float64)
             against the complete-data one: ms per iteration and CPU seconds per wall second,
             at the default chunk size and at larger chunks (``--chunks``).

Writes ``experiments/results/xla_cpu_parallelism.json`` with the command, commit, date and load
average. Usage::

    PYTHONPATH=. python experiments/xla_cpu_parallelism.py [--parts threshold,loops,missing]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _timed(f, *args):
    import jax

    jax.block_until_ready(f(*args))  # compiled
    t, c = time.perf_counter(), os.times()
    jax.block_until_ready(f(*args))
    c2, wall = os.times(), time.perf_counter() - t
    return wall, (c2.user - c.user + c2.system - c.system) / wall


def part_threshold() -> list:
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    out = []
    for n in (4096, 16384, 32768, 65536, 262144):
        reps = max(2, 2**21 // n)
        f = jax.jit(lambda x, reps=reps: jax.lax.fori_loop(
            0, reps, lambda i, a: jnp.sin(a) * 1.0001 + jnp.cos(a * 0.5), x))
        wall, cores = _timed(f, jnp.ones((n,), jnp.float64))
        out.append(dict(n=n, bytes_per_op=16 * n, wall_ms=1e3 * wall, cpu_per_wall=cores))
    return out


def part_loops() -> list:
    import jax
    import jax.numpy as jnp

    def work(x):
        def body(i, acc):
            a = jax.lax.dynamic_slice_in_dim(x, (i % 64) * 64, 64)
            return acc + jnp.sin(a) * jnp.cos(a * 0.5)
        return jax.lax.fori_loop(0, 20000, body, jnp.zeros((64, 64), x.dtype))

    out = []
    for n in (1, 2, 4):
        f = jax.jit(lambda xs, n=n: [work(xs[i]) for i in range(n)])
        xs = jnp.ones((n, 4096, 64)) * jnp.arange(1, n + 1)[:, None, None]
        wall, cores = _timed(f, xs)
        out.append(dict(independent_loops=n, wall_ms=1e3 * wall, cpu_per_wall=cores))
    return out


def part_missing(chunks) -> dict:
    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import missing_data as md

    import emjax
    from emjax.gmm import missing as missing_lib

    k = 16
    X, Xn, start = md.speed_case(100_000, 16, k)
    kw = dict(tol=0.0, weights_init=np.asarray(start.weights),
              means_init=np.asarray(start.means),
              precisions_init=np.linalg.inv(np.asarray(start.covariance.covariances)))

    def measured(data, **extra):
        def once(it):
            emjax.fit(data, k, max_iter=it, **kw, **extra).params.means.block_until_ready()
        t, c = time.perf_counter(), os.times()
        ms = md.per_iteration(once)
        c2 = os.times()
        return dict(ms_per_iter=ms, cpu_per_wall=(c2.user - c.user) / (time.perf_counter() - t))

    out = dict(complete=measured(X))
    default_rows = missing_lib.chunk_rows
    for rows in chunks:
        missing_lib.chunk_rows = (lambda r: (lambda *a: r))(rows) if rows else default_rows
        try:
            out[f"missing_chunk_{rows or 'default'}"] = measured(Xn, missing="marginalize")
        finally:
            missing_lib.chunk_rows = default_rows
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="threshold,loops,missing")
    ap.add_argument("--chunks", default="0,1024,4096",
                    help="missing part: rows per chunk (0: the default, about 1 MiB)")
    ap.add_argument("--out", default="experiments/results/xla_cpu_parallelism.json")
    args = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    results = dict(command="PYTHONPATH=. python experiments/xla_cpu_parallelism.py --parts "
                   + args.parts + " --chunks " + args.chunks, commit=commit,
                   date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                   load_average_before=os.getloadavg(), cpus=os.cpu_count())
    for part in args.parts.split(","):
        if part == "missing":
            results[part] = part_missing([int(c) for c in args.chunks.split(",")])
        else:
            results[part] = globals()[f"part_{part}"]()
        print(part, json.dumps(results[part], indent=1), flush=True)
    results["load_average_after"] = os.getloadavg()
    from emjax._files import atomic_write  # after the parts: nothing imported before them

    with atomic_write(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
