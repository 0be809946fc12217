"""Scaling and streaming experiments for emjax.gmm.distributed / emjax.gmm.streaming.

    python experiments/scaling.py devices   # time per EM iteration vs number of devices
    python experiments/scaling.py stream    # exact streaming EM on a .npy file several times
                                            # larger than the address space given to the process
    python experiments/scaling.py online    # stepwise online EM vs full EM, per pass over data
    python experiments/scaling.py all

``devices`` uses every device JAX sees (on a CPU-only machine it forces 4 host devices through
``XLA_FLAGS`` before JAX starts; the flag does nothing to GPUs/TPUs, so the same script measures
1, 2, 4, ... accelerators unchanged). Results go to ``experiments/results/*.json`` and figures to
``docs/figures/``.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

if __name__ == "__main__" and "XLA_FLAGS" not in os.environ:
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
RESULTS = os.path.join(ROOT, "experiments", "results")
FIGURES = os.path.join(ROOT, "docs", "figures")


def _save(name, obj):
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, name), "w") as f:
        json.dump(obj, f, indent=1)
    print(json.dumps(obj, indent=1))


def _mixture_data(n, d, k, seed=0, dtype=np.float32, spread=4.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=spread, size=(k, d))
    labels = rng.integers(0, k, size=n)
    return (centres[labels] + rng.normal(size=(n, d))).astype(dtype), centres


# ----------------------------------------------------------------------------- devices


def devices(n=400_000, d=16, k=8, max_iter=10, repeats=3):
    import jax

    from emjax import gmm
    from emjax.gmm import distributed

    X, centres = _mixture_data(n, d, k)
    p0 = gmm.make_params(np.full(k, 1.0 / k), centres + 0.5, np.tile(np.eye(d), (k, 1, 1)),
                         "full")
    all_dev = jax.devices()
    counts = [c for c in (1, 2, 4, 8, 16, 32, 64) if c <= len(all_dev)]
    rows = []
    for c in counts:
        mesh = distributed.make_mesh(all_dev[:c])
        data = distributed.shard_data(X, mesh=mesh, min_rows_per_device=k)
        run = lambda: jax.block_until_ready(distributed.fit(
            data, k, mesh=mesh, params_init=p0, tol=0.0, max_iter=max_iter))
        t = time.perf_counter()
        run()
        compile_s = time.perf_counter() - t
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
        # max_iter E+M iterations plus the E-step of the initial parameters.
        per_iter = min(times) / (max_iter + 1)
        rows.append(dict(devices=c, seconds_per_iteration=per_iter,
                         first_call_seconds=compile_s))
        print(rows[-1], flush=True)
    # Baseline: the unsharded in-memory fit (emjax.fit) from the same start, on one device.
    import emjax

    run = lambda: jax.block_until_ready(emjax.fit(X, k, params_init=p0, tol=0.0,
                                                  max_iter=max_iter))
    run()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    baseline = min(times) / (max_iter + 1)
    print("emjax.fit", baseline, flush=True)
    out = dict(platform=all_dev[0].platform, device_kind=all_dev[0].device_kind,
               unsharded_fit_seconds_per_iteration=baseline,
               n_samples=n, n_features=d, n_components=k, covariance_type="full",
               dtype="float32", max_iter=max_iter, os_cpu_count=os.cpu_count(), rows=rows)
    _save("scaling_devices.json", out)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=110)
    c = [r["devices"] for r in rows]
    s = [1e3 * r["seconds_per_iteration"] for r in rows]
    ax.plot(c, s, "o-", label="measured")
    ax.plot(c, [s[0] / x for x in c], "--", color="grey", label="ideal 1/devices")
    ax.axhline(1e3 * baseline, color="C1", lw=1, label="emjax.fit, unsharded")
    ax.set_xscale("log", base=2)
    ax.set_xticks(c, [str(x) for x in c])
    ax.set_xlabel(f"{out['platform']} devices in the mesh")
    ax.set_ylabel("ms per EM iteration")
    ax.set_title(f"sharded EM, N={n:,}, D={d}, K={k}, full", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(FIGURES, exist_ok=True)
    fig.savefig(os.path.join(FIGURES, "scaling_devices.png"))


# ----------------------------------------------------------------------------- stream

STREAM_WORKER = r"""
import json, resource, sys, time
import numpy as np
sys.path.insert(0, sys.argv[3])
path, mode = sys.argv[1], sys.argv[2]
if mode == "np.load":  # the naive way, for contrast
    try:
        np.load(path)
        print(json.dumps({"np_load": "ok"}))
    except MemoryError as e:
        print(json.dumps({"np_load": "MemoryError: " + str(e)[:120]}))
    sys.exit(0)
import jax
from emjax.gmm import streaming
times = []
t0 = time.perf_counter()
last = [t0]
def cb(i, ll, params):
    now = time.perf_counter(); times.append(now - last[0]); last[0] = now
res = streaming.fit(path, int(sys.argv[4]), key=jax.random.key(0), covariance_type="full",
                    tol=float(sys.argv[5]), max_iter=int(sys.argv[6]),
                    chunk_size=int(sys.argv[7]), callback=cb)
total = time.perf_counter() - t0
print(json.dumps(dict(n_iter=int(res.n_iter), converged=bool(res.converged),
                      log_likelihood=float(res.log_likelihood), status=int(res.status),
                      seconds_per_pass=times, total_seconds=total,
                      history=[float(h) for h in np.asarray(res.history)[:int(res.n_iter)]],
                      means=np.asarray(res.params.means).tolist(),
                      max_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
"""


def _limited(limit_bytes):
    def set_limit():
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    return set_limit


# glibc gives every thread its own 64 MB malloc arena (address space, not memory) and OpenBLAS
# reserves per-thread buffers: with ~20 threads that alone exceeds 1 GiB of address space. Two
# arenas and one BLAS thread keep the process's address space close to what it really uses.
LIMITED_ENV = dict(os.environ, MALLOC_ARENA_MAX="2", OPENBLAS_NUM_THREADS="1")


def stream(file_gb=3.2, d=8, k=4, limit_mb=1024, chunk_size=131072, max_iter=5, tol=1e-4,
           path=None):
    path = path or os.path.join(ROOT, "experiments", "results", "big.npy")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    n = int(file_gb * 1e9 / (4 * d))
    rng = np.random.default_rng(1)
    centres = rng.normal(scale=4.0, size=(k, d))
    t = time.perf_counter()
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    step = 4_000_000
    for start in range(0, n, step):
        m = min(step, n - start)
        labels = rng.integers(0, k, size=m)
        out[start:start + m] = centres[labels] + rng.normal(size=(m, d))
    out.flush()
    del out
    write_s = time.perf_counter() - t
    size = os.path.getsize(path)
    print(f"wrote {path}: {n:,} x {d} float32, {size / 1e9:.2f} GB in {write_s:.0f} s", flush=True)
    limit = limit_mb * 1024 * 1024
    try:
        naive = subprocess.run([sys.executable, "-c", STREAM_WORKER, path, "np.load", ROOT],
                               capture_output=True, text=True, preexec_fn=_limited(limit),
                               env=LIMITED_ENV)
        naive_out = json.loads(naive.stdout.strip().splitlines()[-1])
        proc = subprocess.run([sys.executable, "-c", STREAM_WORKER, path, "fit", ROOT, str(k),
                               str(tol), str(max_iter), str(chunk_size)],
                              capture_output=True, text=True, preexec_fn=_limited(limit),
                              env=LIMITED_ENV)
        if proc.returncode != 0:
            print(proc.stderr[-3000:])
            raise SystemExit("the limited streaming fit failed")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        os.remove(path)
    # Distance of the fitted means to the true centres (matched greedily).
    fitted = np.asarray(res.pop("means"))
    err = max(np.min(np.linalg.norm(fitted - c, axis=1)) for c in centres)
    summary = dict(file_bytes=size, n_samples=n, n_features=d, n_components=k,
                   address_space_limit_bytes=limit, file_to_limit_ratio=size / limit,
                   chunk_size=chunk_size, np_load_under_limit=naive_out["np_load"],
                   max_centre_error=float(err), **res)
    _save("scaling_stream.json", summary)


# ----------------------------------------------------------------------------- online


def online(n=200_000, d=8, k=6, batch_size=1000, n_passes=3):
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    from emjax import gmm
    from emjax.gmm import streaming

    # Overlapping clusters (centres ~ N(0, 1.2^2 I), unit noise): batch EM needs many passes.
    X, centres = _mixture_data(n, d, k, seed=2, dtype=np.float64, spread=1.2)
    # The usual start: k-means++ (no Lloyd steps) on a small subsample; the same for both.
    from emjax.gmm import fitting

    sub = jnp.asarray(X[np.random.default_rng(3).choice(n, 2000, replace=False)])
    p0 = jax.jit(fitting.init_params, static_argnames=("n_components", "init_params"))(
        jax.random.key(4), sub, k, init_params="k-means++")
    score = jax.jit(lambda p, x: jnp.mean(gmm.score_samples(p, x)))
    Xj = jnp.asarray(X)
    full_hist = []
    full = streaming.fit(X, k, params_init=p0, tol=1e-9, max_iter=200, chunk_size=50_000,
                         callback=lambda i, ll, p: full_hist.append(float(score(p, Xj))))
    curves = {"full EM (one M-step per pass)": [[0.0, float(score(p0, Xj))]]
              + [[i + 1.0, v] for i, v in enumerate(full_hist)]}
    steps_per_pass = n // batch_size
    every = max(1, steps_per_pass // 20)
    for alpha in (0.6, 0.9):
        curve = [[0.0, float(score(p0, Xj))]]

        def cb(step, p, curve=curve):
            if step % every == 0:
                curve.append([step / steps_per_pass, float(score(p, Xj))])

        res = streaming.fit_online(X, k, params_init=p0, batch_size=batch_size,
                                   n_passes=n_passes, alpha=alpha, t0=2.0, callback=cb)
        curves[f"online EM, alpha={alpha}, batch={batch_size}"] = curve
        print(alpha, res.n_steps, curve[-1], flush=True)
    out = dict(n_samples=n, n_features=d, n_components=k, batch_size=batch_size,
               full_em_final=float(full.log_likelihood), full_em_n_iter=int(full.n_iter),
               full_em_converged=bool(full.converged), curves=curves)
    best = max(max(v for _, v in c) for c in curves.values())
    out["best_log_likelihood"] = best
    plot_online(out)
    _save("scaling_online.json", out)


def plot_online(out=None, max_passes=30):
    """The online-vs-full figure (from ``experiments/results/scaling_online.json`` if no
    ``out`` is given)."""
    if out is None:
        with open(os.path.join(RESULTS, "scaling_online.json")) as f:
            out = json.load(f)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.4), dpi=110)
    # Gap to the best mean log-likelihood any method reached (full EM's final value unless an
    # online run found a better optimum).
    best = out["best_log_likelihood"]
    lowest = np.inf
    for name, c in out["curves"].items():
        c = np.asarray(c)
        gap = best - c[:, 1]
        shown = (c[:, 0] <= max_passes) & (gap > 0)
        lowest = min(lowest, gap[shown].min())
        ax.plot(c[:, 0], np.maximum(gap, 1e-12), "o-" if "full" in name else "-", ms=3,
                label=name)
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.5 * lowest)
    ax.set_xlim(0, max_passes)
    ax.set_xlabel("passes over the data")
    ax.set_ylabel("gap to best mean log-lik (nats/sample)")
    ax.set_title(f"online vs full EM, N={out['n_samples']:,}, D={out['n_features']}, "
                 f"K={out['n_components']} (overlapping), full cov.", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(FIGURES, exist_ok=True)
    fig.savefig(os.path.join(FIGURES, "online_vs_full.png"))


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    if what in ("devices", "all"):
        devices()
    if what in ("online", "all"):
        online()
    if what == "plot-online":
        plot_online()
    if what in ("stream", "all"):
        stream()
