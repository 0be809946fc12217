"""Benchmark emjax against scikit-learn and gmmx: EM time per iteration, compile time,
end-to-end fits with restarts, GFLOP/s against the measured GEMM peak, peak memory, agreement.

One command (a modest default grid that runs in a few minutes on a 2-core CPU)::

    PYTHONPATH=. python experiments/benchmark.py            # -> experiments/results/benchmark.json
    PYTHONPATH=. python experiments/benchmark.py --full     # N 1e3..1e6, D 2..64, K 2..64
    PYTHONPATH=. python experiments/benchmark_report.py     # README table + docs/figures/

Method. Every library starts from the same initial parameters (computed once in float64 NumPy
from a hard assignment to random samples) and runs a fixed number of EM iterations (``tol = 0``).
The time per iteration is the difference of the median wall times of ``T2`` and ``T1``
iterations divided by ``T2 - T1`` (fixed costs such as input checks and initialisation cancel);
the libraries' runs are interleaved, so every ratio is computed within one run under the same
load, and each library's timed calls follow an untimed call of its own (not another library's
run, whose BLAS threads would still be spinning).
Compile time (JAX libraries) is the first call's time minus a warm call's. Each dtype runs
in its own subprocess (gmmx needs JAX's x64 mode off for float32 and on for float64). The final
log-likelihood of every library's parameters is evaluated by one float64 NumPy scorer.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
COV_TYPES = ("full", "tied", "diag", "spherical")
GMMX_TYPES = ("full", "diag")
#: gmmx 0.7's full-covariance fit hangs from ``K * D^2 * itemsize`` bytes on: its E-step's two
#: triangular solves are independent, and jaxlib 0.10's CPU LAPACK kernels block on the thread
#: pool from 256 KiB per batch (see emjax/_linalg.py; observed at D = 64, K = 16, float32, with
#: both pool threads waiting in ``lapack_strsm_ffi``). Such configurations run without gmmx.
GMMX_HANGS = 256 * 2**10

# (N, D, K) grids. The default keeps a 2-core machine busy for a few minutes.
DEFAULT_GRID = [
    (10_000, 16, 16),
    (100_000, 16, 16),
]
FULL_GRID = sorted({
    *[(n, 16, 16) for n in (1_000, 10_000, 100_000, 1_000_000)],
    *[(100_000, d, 16) for d in (2, 8, 16, 32, 64)],
    *[(100_000, 16, k) for k in (2, 8, 16, 32, 64)],
})


# ----------------------------------------------------------------------------- data, params
def make_data(n, d, k, seed=0, dtype=np.float64, out=None):
    """A mixture of ``k`` Gaussians in ``d`` dims with random SPD covariances, moderately
    overlapping (so EM does not converge in a few steps); written into ``out`` if given."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=3.0, size=(k, d))
    a = rng.normal(size=(k, d, d)) / np.sqrt(d)
    covs = a @ np.swapaxes(a, 1, 2) + 0.3 * np.eye(d)
    labels = rng.integers(0, k, size=n)
    chol = np.linalg.cholesky(covs)
    X = np.empty((n, d), dtype) if out is None else out
    for j in range(k):  # one component at a time: no (n, d, d) or float64 (n, d) temporaries
        idx = np.flatnonzero(labels == j)
        z = rng.standard_normal((idx.size, d), dtype=np.float32)
        X[idx] = (means[j] + z @ chol[j].T.astype(np.float32)).astype(dtype)
    return X


def initial_params(X, k, cov_type, seed=1, reg=1e-6):
    """Float64 ``(weights, means, covariances)`` in scikit-learn's shapes: one M-step from a hard
    assignment of every sample to the nearest of ``k`` random samples."""
    rng = np.random.default_rng(seed)
    X = np.asarray(X, np.float64)
    n, d = X.shape
    centers = X[rng.choice(n, k, replace=False)]
    d2 = (X * X).sum(1)[:, None] - 2 * X @ centers.T + (centers * centers).sum(1)[None]
    resp = np.eye(k)[np.argmin(d2, 1)]
    nk = resp.sum(0) + 10 * np.finfo(np.float64).eps
    means = resp.T @ X / nk[:, None]
    full = np.empty((k, d, d))
    for j in range(k):
        diff = X - means[j]
        full[j] = (resp[:, j, None] * diff).T @ diff / nk[j] + reg * np.eye(d)
    weights = nk / n
    if cov_type == "full":
        covs = full
    elif cov_type == "tied":
        covs = np.einsum("k,kde->de", nk, full) / n
    elif cov_type == "diag":
        covs = np.diagonal(full, axis1=1, axis2=2).copy()
    else:
        covs = np.diagonal(full, axis1=1, axis2=2).mean(1)
    return weights, means, covs


def to_full(covs, cov_type, k, d):
    if cov_type == "full":
        return covs
    if cov_type == "tied":
        return np.broadcast_to(covs, (k, d, d))
    if cov_type == "diag":
        return np.stack([np.diag(c) for c in covs])
    return covs[:, None, None] * np.eye(d)


def precisions(covs, cov_type):
    if cov_type in ("full", "tied"):
        return np.linalg.inv(covs)
    return 1.0 / covs


def mean_log_likelihood(X, weights, means, covs, cov_type, max_rows=200_000):
    """Mean log-likelihood in float64 NumPy (the common scorer; first ``max_rows`` rows)."""
    X = np.asarray(X[:max_rows], np.float64)
    weights, means, covs = (np.asarray(a, np.float64) for a in (weights, means, covs))
    k, d = means.shape
    full = to_full(covs, cov_type, k, d)
    try:
        chol = np.linalg.cholesky(full)
    except np.linalg.LinAlgError:  # a library returned a covariance that is not SPD
        return float("nan")
    out = np.empty((X.shape[0], k))
    for j in range(k):
        y = np.linalg.solve(chol[j], (X - means[j]).T)
        out[:, j] = (np.log(weights[j]) - 0.5 * (y * y).sum(0) - np.log(np.diag(chol[j])).sum()
                     - 0.5 * d * np.log(2 * np.pi))
    m = out.max(1, keepdims=True)
    return float(np.mean(m[:, 0] + np.log(np.exp(out - m).sum(1))))


def flops_per_iteration(cov_type, n, d, k):
    """Nominal floating-point operations of one EM iteration in the textbook (dense GEMM)
    formulation: E-step distances plus M-step moments. Full: whitening ``2NKD^2`` and the
    weighted scatter ``2NKD^2``; tied: ``X U`` and ``X^T X`` (``2ND^2`` each) plus ``6NKD``;
    diagonal and spherical: ``6NKD`` (E) + ``6NKD`` (M)."""
    if cov_type == "full":
        return 4 * n * k * d * d + 10 * n * k * d
    if cov_type == "tied":
        return 4 * n * d * d + 6 * n * k * d
    return 12 * n * k * d


# ----------------------------------------------------------------------------- peak
def _commit() -> str:
    """The checkout's commit (``+dirty`` with uncommitted changes), for dating results."""
    try:
        run = functools.partial(subprocess.run, cwd=ROOT, capture_output=True, text=True,
                                check=True)
        head = run(["git", "rev-parse", "--short", "HEAD"]).stdout.strip()
        dirty = run(["git", "status", "--porcelain", "--untracked-files=no"]).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def gemm_peak(dtype, n=2048, repeats=5):
    """Measured matrix-multiply peak in GFLOP/s: best of ``repeats`` (n x n) @ (n x n) products,
    with jax.numpy and with NumPy; the larger is the machine's peak."""
    import jax
    import jax.numpy as jnp

    a = np.random.default_rng(0).normal(size=(n, n)).astype(dtype)
    f = jax.jit(lambda x, y: x @ y)
    ja = jnp.asarray(a)
    f(ja, ja).block_until_ready()
    tj, tn = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(ja, ja).block_until_ready()
        tj.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        a @ a
        tn.append(time.perf_counter() - t0)
    fl = 2.0 * n**3
    return {"jax": fl / min(tj) / 1e9, "numpy": fl / min(tn) / 1e9,
            "peak": fl / min(min(tj), min(tn)) / 1e9}


# ----------------------------------------------------------------------------- runners
def emjax_runner(X, k, cov_type, p0, reg):
    """``run(T) -> (weights, means, covs)`` running T EM iterations of emjax.fit (tol=0)."""
    import jax.numpy as jnp

    import emjax

    dtype = X.dtype
    w, m, c = (jnp.asarray(a, dtype) for a in p0)
    params0 = emjax.make_params(w, m, c, cov_type)

    def run(t):
        res = emjax.fit(X, k, covariance_type=cov_type, params_init=params0, tol=0.0,
                        max_iter=t, reg_covar=reg)
        res.log_likelihood.block_until_ready()
        p = res.params
        return np.asarray(p.weights), np.asarray(p.means), np.asarray(p.covariance.covariances)

    return run


def emjax_dense_runner(X, k, cov_type, p0, reg):
    """The dense reference steps (``gmm.e_step_full`` + ``gmm.m_step``, materialising
    ``(N, K)`` responsibilities and ``(K, N, D)`` differences) in the same compiled driver:
    the emjax code before the fast path."""
    import functools

    import jax
    import jax.numpy as jnp

    import emjax
    from emjax import em
    from emjax.gmm import fitting

    dtype = X.dtype
    w, m, c = (jnp.asarray(a, dtype) for a in p0)
    params0 = emjax.make_params(w, m, c, cov_type)
    xj = jnp.asarray(X)

    @functools.partial(jax.jit, static_argnames="t")
    def go(p, x, t):
        e, mm, r = fitting.make_model(cov_type, reg)  # no plan: the dense reference steps
        return em.run(e, mm, p, (x, None), tol=0.0, max_iter=t, repair=r)

    def run(t):
        p = go(params0, xj, t).params
        return np.asarray(p.weights), np.asarray(p.means), np.asarray(p.covariance.covariances)

    return run


def sklearn_runner(X, k, cov_type, p0, reg):
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    w, m, c = p0

    def run(t):
        gm = GaussianMixture(k, covariance_type=cov_type, tol=0.0, max_iter=t, reg_covar=reg,
                             init_params="random_from_data", weights_init=w, means_init=m,
                             precisions_init=precisions(c, cov_type), random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            gm.fit(X)
        return gm.weights_, gm.means_, gm.covariances_

    return run


def gmmx_runner(X, k, cov_type, p0, reg):
    import jax.numpy as jnp
    from gmmx import EMFitter, GaussianMixtureModelJax

    dtype = X.dtype
    w, m, c = p0
    g0 = GaussianMixtureModelJax.from_squeezed(
        means=jnp.asarray(m, dtype), covariances=jnp.asarray(c, dtype),
        weights=jnp.asarray(w, dtype), covariance_type=cov_type)
    xj = jnp.asarray(X)

    def run(t):
        r = EMFitter(max_iter=t, tol=0.0, reg_covar=reg).fit(xj, g0)
        g = r.gmm
        return g.weights_numpy, g.means_numpy, np.asarray(g.covariances.values_numpy)

    return run


RUNNERS = {"emjax": emjax_runner, "emjax-dense": emjax_dense_runner, "sklearn": sklearn_runner,
           "gmmx": gmmx_runner}


def _timed(fn, *a):
    t0 = time.perf_counter()
    out = fn(*a)
    return time.perf_counter() - t0, out


#: Seconds of idle before each library's timed calls. OpenBLAS and OpenMP worker threads spin
#: on the cores for a while after a call (OpenBLAS by default about 2^28 cycles, ~0.1 s here),
#: so a library timed right after scikit-learn shares the two cores with them (emjax float64
#: diagonal at N = 1e4, D = K = 16 read 1.30 ms per iteration without the pause and 1.01 with
#: it, in runs of the same cell; scikit-learn 5.06 and 4.91 ms).
QUIET_S = 0.5


def quiet():
    """Let other libraries' spinning worker threads go idle (see :data:`QUIET_S`)."""
    time.sleep(QUIET_S)


def bench_config(X, k, cov_type, libs, iters, repeats, reg=1e-6):
    """Per-iteration time, compile time and final log-likelihood of each library (interleaved).

    ``iters[lib] = (t1, t2)``: the fixed iteration counts whose time difference is measured
    (the JAX libraries get more iterations, since their iterations are short against the fixed
    cost of a call)."""
    n, d = X.shape
    p0 = initial_params(X, k, cov_type)
    runs, compile_s, final = {}, {}, {}
    for lib in libs:
        if lib == "gmmx" and (cov_type not in GMMX_TYPES or X.dtype != np.float32):
            continue  # gmmx 0.7 has only full and diag covariances, and only float32
        if lib == "gmmx" and cov_type == "full" and k * d * d * X.dtype.itemsize >= GMMX_HANGS:
            continue  # see GMMX_HANGS
        t1, t2 = iters[lib]
        run = RUNNERS[lib](X, k, cov_type, p0, reg)
        quiet()
        c1, _ = _timed(run, t1)
        w1, out1 = _timed(run, t1)
        c2, _ = _timed(run, t2)
        w2, out2 = _timed(run, t2)
        compile_s[lib] = max(0.0, (c1 - w1) + (c2 - w2)) / 2  # per compiled program
        final[lib] = {t1: out1, t2: out2}
        runs[lib] = run
    times = {lib: {t: [] for t in iters[lib]} for lib in runs}
    for _ in range(repeats):
        for lib, run in runs.items():
            quiet()
            # An untimed call first: the first call after another library's pays for what that
            # one left running (OpenBLAS worker threads keep spinning on the cores after a BLAS
            # call), and since it is always the T1 call, that cost would come off the
            # per-iteration difference (seen: emjax float64 full at N = 1e4 read 1.5 instead of
            # 2.6 ms per iteration after scikit-learn's runs).
            run(iters[lib][0])
            for t in iters[lib]:
                times[lib][t].append(_timed(run, t)[0])
    out = {}
    fl = flops_per_iteration(cov_type, n, d, k)
    for lib in runs:
        t1, t2 = iters[lib]
        m1, m2 = np.median(times[lib][t1]), np.median(times[lib][t2])
        per_iter = (m2 - m1) / (t2 - t1)
        per_iter_min = (min(times[lib][t2]) - min(times[lib][t1])) / (t2 - t1)
        out[lib] = {
            "per_iter_s": float(per_iter),
            "per_iter_min_s": float(per_iter_min),
            "t1": t1, "t2": t2,
            "total_t1_s": float(m1),
            "total_t2_s": float(m2),
            "compile_s": float(compile_s[lib]),
            "gflops": float(fl / per_iter / 1e9) if per_iter > 0 else None,
            # mean log-likelihood of the parameters after t1 and after t2 iterations
            "final_ll_at": {str(t): mean_log_likelihood(X, *final[lib][t], cov_type)
                            for t in (t1, t2)},
        }
        out[lib]["final_ll"] = out[lib]["final_ll_at"][str(t2)]
    return out


def bench_restarts(X, k, cov_type, n_init, libs, repeats):
    """End-to-end fits with ``n_init`` restarts (default init, tol=1e-3, max_iter=100): emjax
    vmaps the restarts in one program, scikit-learn runs them one after the other."""
    import jax

    import emjax

    out = {}
    if "emjax" in libs:
        key = jax.random.key(0)

        def run_e():
            r = emjax.fit(X, k, covariance_type=cov_type, n_init=n_init, key=key)
            r.log_likelihood.block_until_ready()
            return r

        first, r = _timed(run_e)
        quiet()
        ts = [_timed(run_e)[0] for _ in range(repeats)]
        p = r.params
        out["emjax"] = {
            "fit_s": float(np.median(ts)), "first_call_s": float(first),
            "compile_s": float(max(0.0, first - np.median(ts))),
            "best_ll": mean_log_likelihood(X, p.weights, p.means, p.covariance.covariances,
                                           cov_type),
            "n_iter": int(r.n_iter),
        }
    if "sklearn" in libs:
        from sklearn.mixture import GaussianMixture

        def run_s():
            return GaussianMixture(k, covariance_type=cov_type, n_init=n_init,
                                   random_state=0).fit(X)

        quiet()
        run_s()  # untimed, as in bench_config: not right after another library's run
        ts, gm = [], None
        for _ in range(repeats):
            t, gm = _timed(run_s)
            ts.append(t)
        out["sklearn"] = {
            "fit_s": float(np.median(ts)),
            "best_ll": mean_log_likelihood(X, gm.weights_, gm.means_, gm.covariances_, cov_type),
            "n_iter": int(gm.n_iter_),
        }
    return out


# ----------------------------------------------------------------------------- memory
MEMORY_CHILD = r"""
import resource, sys, time, json
import numpy as np
sys.path.insert(0, {root!r})
lib, n, d, k, cov_type, dtype, iters = {args!r}
import jax
if dtype == "float64":
    jax.config.update("jax_enable_x64", True)
sys.path.insert(0, {exp!r})
import benchmark as b
X = b.make_data(n, d, k, dtype=np.dtype(dtype))
p0 = b.initial_params(X[:20000], k, cov_type)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
run = b.RUNNERS[lib](X, k, cov_type, p0, 1e-6)
t0 = time.perf_counter()
run(iters)
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"peak_rss_mb": peak / 1024, "rss_before_fit_mb": base / 1024,
                  "data_mb": X.nbytes / 2**20, "seconds": dt}}))
"""


def bench_memory(lib, n, d, k, cov_type, dtype, iters=3):
    """Peak RSS of a fresh subprocess that makes the data and runs ``iters`` EM iterations."""
    code = MEMORY_CHILD.format(root=str(ROOT), exp=str(ROOT / "experiments"),
                               args=(lib, n, d, k, cov_type, dtype, iters))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if r.returncode != 0:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr else "failed"}
    return json.loads(r.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- driver
def worker(args):
    """One dtype's measurements (runs in its own process)."""
    import jax

    dtype = np.dtype(args.dtype)
    if dtype == np.float64:
        jax.config.update("jax_enable_x64", True)
    grid = FULL_GRID if args.full else DEFAULT_GRID
    if args.grid:
        grid = [tuple(int(v) for v in g.split(",")) for g in args.grid]
    libs = args.libs
    res = {"dtype": args.dtype, "peak": gemm_peak(dtype), "grid": [], "restarts": [],
           "small": []}
    for n, d, k in grid:
        for cov_type in args.cov_types:
            X = make_data(n, d, k, dtype=dtype)
            # The JAX libraries' first count is scikit-learn's second, so all libraries'
            # parameters are compared after the same number of iterations.
            big = n * d * k >= 10_000_000
            iters = {lib: ((1, 6) if big else (2, 12)) if lib in ("sklearn", "emjax-dense")
                     else ((6, 21) if big else (12, 52)) for lib in libs}
            r = bench_config(X, k, cov_type, libs, iters, repeats=args.repeats)
            row = {"n": n, "d": d, "k": k, "cov_type": cov_type, "results": r}
            res["grid"].append(row)
            print(json.dumps(row), flush=True)
    if not args.skip_restarts:
        n, d, k = (100_000, 16, 16) if args.full else (20_000, 8, 8)
        X = make_data(n, d, k, dtype=dtype)
        for cov_type in ("full",):
            # At least 5 timed fits each (a single slow fit on the shared machine read 0.50
            # against 0.28-0.30 s otherwise).
            r = bench_restarts(X, k, cov_type, 16, libs, repeats=max(5, args.repeats // 2))
            row = {"n": n, "d": d, "k": k, "cov_type": cov_type, "n_init": 16, "results": r}
            res["restarts"].append(row)
            print(json.dumps(row), flush=True)
        X = make_data(1000, 15, 5, dtype=dtype)
        for cov_type in args.cov_types:
            # A few milliseconds each: more repeats, so that one slow run (the machine is
            # shared) does not decide the median.
            r = bench_restarts(X, 5, cov_type, 1, libs, repeats=max(args.repeats, 15))
            row = {"n": 1000, "d": 15, "k": 5, "cov_type": cov_type, "n_init": 1, "results": r}
            res["small"].append(row)
            print(json.dumps(row), flush=True)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="the full N/D/K grid (slow)")
    ap.add_argument("--grid", nargs="*", help="explicit N,D,K triples, e.g. 100000,16,16")
    ap.add_argument("--dtypes", nargs="*", default=["float32", "float64"])
    ap.add_argument("--cov-types", nargs="*", default=list(COV_TYPES))
    ap.add_argument("--libs", nargs="*", default=["emjax", "sklearn", "gmmx"],
                    help="any of emjax, emjax-dense (the reference steps), sklearn, gmmx")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-restarts", action="store_true")
    ap.add_argument("--memory", nargs="*", default=None,
                    help="N,D,K triples for the peak-memory subprocess runs (full, float32); "
                         "default 1000000,16,16")
    ap.add_argument("--out", default=str(RESULTS / "benchmark.json"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return
    out = {
        "command": " ".join(["python", "experiments/benchmark.py", *(argv or sys.argv[1:])]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": _commit(),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "versions": _versions(),
        "dtypes": {},
        "memory": [],
    }
    passthrough = [a for a in (argv or sys.argv[1:]) if a not in ("--worker",)]
    for dt in args.dtypes:
        cmd = [sys.executable, __file__, "--worker", "--dtype", dt, *passthrough]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        result = None
        for line in proc.stdout:
            if line.startswith("RESULT "):
                result = json.loads(line[7:])
            else:
                print(f"[{dt}] {line}", end="", flush=True)
        proc.wait()
        if result is None:
            raise SystemExit(f"worker for {dt} failed")
        out["dtypes"][dt] = result
    mem = args.memory if args.memory is not None else ["1000000,16,16"]
    for triple in mem:
        n, d, k = (int(v) for v in triple.split(","))
        for lib in args.libs:
            r = bench_memory(lib, n, d, k, "full", "float32")
            row = {"lib": lib, "n": n, "d": d, "k": k, "cov_type": "full", "dtype": "float32",
                   **r}
            out["memory"].append(row)
            print(json.dumps(row), flush=True)
    out["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


def _versions():
    import importlib.metadata as md

    return {p: md.version(p) for p in ("jax", "jaxlib", "numpy", "scikit-learn", "gmmx")}


if __name__ == "__main__":
    main()
