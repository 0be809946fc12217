"""Latency of the fits a user does not wait for, against scikit-learn in the same run.

Parts (``--parts``, default all):
  first    first fit (1000 x 5, K = 3, full, float64) in a fresh process: empty, then warm disk
           cache (emjax.enable_disk_cache in a temporary directory), by emjax.fit and by the
           estimator (emjax.GaussianMixture(3).fit); scikit-learn likewise. Repeated
           (--repeats, interleaved): median and range.
  rows     40 fits with distinct row counts 701..740 (D = 5, K = 3, full) in one warm process:
           median time per fit and RSS growth, emjax and scikit-learn; then score_samples and
           sample on the same 40 row counts (median and slowest call).
  vmap     1000 data sets of 200 x 2 (K = 3) in one jitted, vmapped call against a loop of
           scikit-learn fits; checks a few results against the data set fitted alone.
  real     the 64 real-data fits (iris, wine, breast cancer, digits; K in 2, 3, 5, 8; four
           covariance types; n_init = 5): total time and mean log-likelihood difference.
  small    warm fits of 1000 x 15, K = 5, float32, n_init = 1 (the benchmark's small fits), by
           covariance type: emjax as it runs (components padded to 8), emjax with the padding
           off, and scikit-learn; medians of 15 after one warm-up fit each.
  real_cache  the same 64 fits with the disk cache on (emjax.enable_disk_cache, the command
           line's default), each run in a fresh process: first with the cache empty, then warm
           (the programs loaded from disk, not traced or compiled); scikit-learn in each.
  forecast  remaining-life forecasts (PrognosticModel.forecast, 2000 grid points) of 8 new
           synthetic fleets of 15, 17, ..., 29 units and 50..57 observation slots in a warm
           process, against the same computation op by op (what forecast ran before): first,
           median and slowest of the rest.
  missing  data with holes (missing="marginalize"), each layout in a fresh process: the
           size-class layout with 2..8 components padded to 8 (what runs up to
           emjax.gmm.missing.CLASS_MAX_ROWS rows) and the exact one with the components as
           asked. Small: a first fit of 1000 x 5 (20 % NaN, K = 3, full, float64), then fits of
           8 other data sets of 950..1100 rows and scores of 8 new batches of 150..250 rows
           (medians, and the programs compiled), then select_model over K = 1..6 on another;
           large: 8192 x 16, K = 16, 20 % NaN, the first fit of 10 iterations (compilation
           included) and the time per iteration (best of 3 fits of 10).

Writes ``experiments/results/latency.json`` (``--merge``: replaces only the parts run, each
part with its own command, commit, date and load average). ``--tuning JSON`` runs the real part
with entries of the CPU tuning replaced (``emjax.gmm.plan.Tuning``; an A/B of an entry, e.g.
``'{"tiny_features": 0}'``). Usage::

    PYTHONPATH=. python experiments/latency.py \
        [--parts first,rows,vmap,small,real,real_cache,missing] [--merge] [--tuning JSON]
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

_FIRST = """
import sys, time
t0 = time.perf_counter()
import numpy as np
lib = sys.argv[1]
X = np.random.default_rng(0).normal(size=(1000, 5))
if lib in ("emjax", "estimator"):
    import jax
    jax.config.update("jax_enable_x64", True)
    import emjax
    from emjax import GaussianMixture  # imports scikit-learn: an import, not the fit
    if len(sys.argv) > 2:
        emjax.enable_disk_cache(sys.argv[2])
    t1 = time.perf_counter()
    c1 = time.process_time()
    if lib == "emjax":
        jax.block_until_ready(emjax.fit(X, 3, covariance_type="full"))
    else:
        GaussianMixture(3, covariance_type="full").fit(X)
else:
    from sklearn.mixture import GaussianMixture
    t1 = time.perf_counter()
    c1 = time.process_time()
    GaussianMixture(3, covariance_type="full").fit(X)
t2 = time.perf_counter()
print(t1 - t0, t2 - t1, time.process_time() - c1)
"""


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def part_first(repeats: int = 3) -> dict:
    import numpy as np

    runs: dict = {}
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    for _ in range(repeats):
        for lib in ("emjax", "estimator"):
            with tempfile.TemporaryDirectory() as cache:
                for state in ("empty_cache", "warm_cache"):
                    r = subprocess.run([sys.executable, "-c", _FIRST, lib, cache],
                                       capture_output=True, text=True, env=env, check=True)
                    runs.setdefault(f"{lib}_{state}", []).append(list(map(float, r.stdout.split())))
        r = subprocess.run([sys.executable, "-c", _FIRST, "sklearn"], capture_output=True,
                           text=True, env=env, check=True)
        runs.setdefault("sklearn", []).append(list(map(float, r.stdout.split())))
    out = {}
    for name, rs in runs.items():
        imp, fit, cpu = np.array(rs).T
        # CPU seconds of the fit call: less sensitive than wall time to other processes' load.
        out[name] = dict(import_s=float(np.median(imp)), fit_s=float(np.median(fit)),
                         fit_min_s=float(fit.min()), fit_max_s=float(fit.max()),
                         fit_runs_s=fit.tolist(), fit_cpu_s=float(np.median(cpu)),
                         fit_cpu_runs_s=cpu.tolist())
    return out


def part_rows() -> dict:
    import jax
    import numpy as np
    from sklearn.mixture import GaussianMixture

    import emjax

    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(800, 5))
    emjax.fit(X[:700], 3)  # warm process: the library and one program loaded
    rss0 = _rss_mib()
    times = []
    for n in range(701, 741):
        t = time.perf_counter()
        jax.block_until_ready(emjax.fit(X[:n], 3))
        times.append(time.perf_counter() - t)
    rss1 = _rss_mib()
    sk = []
    for n in range(701, 741):
        t = time.perf_counter()
        g = GaussianMixture(3).fit(X[:n])
        sk.append(time.perf_counter() - t)
    # the functional API and sampling on the same 40 row counts, warm
    params = emjax.fit(X[:700], 3).params
    emjax.score_samples(params, X[:700])
    emjax.sample(jax.random.key(0), params, 700)
    per = {"emjax_score_samples": lambda n: emjax.score_samples(params, X[:n]),
           "emjax_sample": lambda n: emjax.sample(jax.random.key(n), params, n),
           "sklearn_score_samples": lambda n: g.score_samples(X[:n]),
           "sklearn_sample": lambda n: g.sample(n)}
    calls = {}
    for name, f in per.items():
        ts = []
        for n in range(701, 741):
            t = time.perf_counter()
            jax.block_until_ready(f(n))
            ts.append(time.perf_counter() - t)
        calls[name + "_median_ms"] = 1e3 * float(np.median(ts))
        calls[name + "_max_ms"] = 1e3 * float(np.max(ts))
    return dict(emjax_median_s=float(np.median(times)), emjax_max_s=float(np.max(times)),
                sklearn_median_s=float(np.median(sk)), rss_growth_mib=rss1 - rss0,
                n_fits=len(times), **calls)


def part_vmap(n_sets: int = 1000, repeats: int = 2) -> dict:
    import jax
    import numpy as np
    from sklearn.mixture import GaussianMixture

    import emjax

    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
    Xs = (rng.normal(size=(n_sets, 200, 2)) + centres[rng.integers(0, 3, (n_sets, 200))])
    Xs = Xs.astype(np.float32)
    keys = jax.random.split(jax.random.key(0), n_sets)
    f = jax.jit(jax.vmap(lambda X, k: emjax.fit(X, 3, key=k)))
    t = time.perf_counter()
    res = jax.block_until_ready(f(Xs, keys))
    first = time.perf_counter() - t
    diffs = []
    for b in range(0, n_sets, n_sets // 5):
        alone = jax.jit(lambda X, k: emjax.fit(X, 3, key=k))(Xs[b], keys[b])
        diffs.append(abs(float(alone.log_likelihood) - float(res.log_likelihood[b])))

    def emjax_calls(n=3):
        out = []
        for _ in range(n):
            t = time.perf_counter()
            jax.block_until_ready(f(Xs, keys))
            out.append(time.perf_counter() - t)
        return out

    def sklearn_loop():
        t = time.perf_counter()
        for b in range(n_sets):
            GaussianMixture(3).fit(Xs[b])
        return time.perf_counter() - t

    # Interleaved: emjax, scikit-learn, emjax, scikit-learn, emjax.
    warm, sk = emjax_calls(), []
    for _ in range(repeats):
        sk.append(sklearn_loop())
        warm += emjax_calls()
    w, s = float(np.median(warm)), float(np.median(sk))
    return dict(n_sets=n_sets, emjax_first_call_s=first, emjax_warm_call_s=w,
                emjax_warm_calls_s=warm, sklearn_loop_s=s, sklearn_loops_s=sk,
                speedup_warm=s / w, speedup_warm_range=[min(sk) / max(warm),
                                                        max(sk) / min(warm)],
                speedup_first=s / first, n_iter_mean=float(np.mean(res.n_iter)),
                n_iter_max=int(np.max(res.n_iter)),
                max_abs_ll_diff_vs_alone=max(diffs))


def part_real(disk_cache: str | None = None, tuning: str | None = None) -> dict:
    import jax
    import numpy as np
    from sklearn import datasets
    from sklearn.mixture import GaussianMixture

    import emjax
    from emjax.gmm import plan

    jax.config.update("jax_enable_x64", True)
    if tuning:
        plan.TUNING["cpu"] = plan.CPU._replace(**json.loads(tuning))
    if disk_cache is not None:
        emjax.enable_disk_cache(disk_cache)
    sets = dict(iris=datasets.load_iris().data, wine=datasets.load_wine().data,
                breast_cancer=datasets.load_breast_cancer().data,
                digits=datasets.load_digits().data)
    te = ts = 0.0
    diffs = []
    fits = []
    for name, X in sets.items():
        X = X.astype(np.float64)
        for ct in ("full", "tied", "diag", "spherical"):
            for k in (2, 3, 5, 8):
                t = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # reg_covar against constant pixels
                    r = jax.block_until_ready(emjax.fit(X, k, covariance_type=ct, n_init=5))
                e = time.perf_counter() - t
                t = time.perf_counter()
                g = GaussianMixture(k, covariance_type=ct, n_init=5, random_state=0).fit(X)
                s = time.perf_counter() - t
                te, ts = te + e, ts + s
                diffs.append(float(r.log_likelihood) - g.score(X))
                fits.append(dict(data=name, covariance_type=ct, k=k, emjax_s=e, sklearn_s=s,
                                 ll_diff=diffs[-1]))
    return dict(emjax_total_s=te, sklearn_total_s=ts, ratio=te / ts,
                mean_ll_diff=float(np.mean(diffs)), min_ll_diff=float(np.min(diffs)),
                max_ll_diff=float(np.max(diffs)), fits=fits)


def part_small(repeats: int = 15) -> dict:
    import jax
    import numpy as np
    from sklearn.mixture import GaussianMixture

    import emjax
    from emjax.gmm import plan

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from benchmark import make_data

    X = make_data(1000, 15, 5, dtype=np.float32)
    padded = plan.component_class  # what emjax.fit's plan.run_shape calls

    def median_ms(fit_once):
        fit_once()  # compiled (or warmed up)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fit_once()
            times.append(time.perf_counter() - t)
        return 1e3 * float(np.median(times))

    out = {}
    for ct in ("full", "tied", "diag", "spherical"):
        row = {}
        for name, cls in (("emjax_ms", padded), ("emjax_unpadded_ms", lambda *a: None)):
            plan.component_class = cls
            try:
                row[name] = median_ms(lambda: jax.block_until_ready(
                    emjax.fit(X, 5, covariance_type=ct).log_likelihood))
            finally:
                plan.component_class = padded
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            row["sklearn_ms"] = median_ms(
                lambda: GaussianMixture(5, covariance_type=ct, random_state=0).fit(X))
        out[ct] = row
    return out


def part_real_cache() -> dict:
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        for state in ("empty_cache", "warm_cache"):
            r = subprocess.run([sys.executable, __file__, "--real-child", cache],
                               capture_output=True, text=True, env=env, check=True)
            res = json.loads(r.stdout.strip().splitlines()[-1])
            out[state] = {k: v for k, v in res.items() if k != "fits"}
            out[state + "_fits"] = res["fits"]
    return out


def _missing_child(layout: str) -> dict:
    import jax
    import numpy as np

    from emjax.gmm import missing as ms

    jax.config.update("jax_enable_x64", True)
    if layout == "exact":  # and the components as asked
        ms.CLASS_MAX_ROWS = 0
        ms._component_class = lambda *a: None
    rng = np.random.default_rng(0)

    def holes(n, d, p=0.2):
        X = rng.normal(size=(n, d)) + 3.0 * (rng.integers(0, 3, n)[:, None] == np.arange(d) % 3)
        m = rng.uniform(size=X.shape) < p
        m[m.all(1), 0] = False  # every row keeps an entry
        X[m] = np.nan
        return X

    def timed(fn):
        t = time.perf_counter()
        out = jax.block_until_ready(fn())
        return time.perf_counter() - t, out

    kw = dict(key=jax.random.key(0))
    first, res = timed(lambda: ms.fit(holes(1000, 5), 3, **kw))
    fits = [timed(lambda: ms.fit(holes(n, 5), 3, **kw))[0]
            for n in rng.integers(950, 1101, 8)]
    scores = [timed(lambda: ms.score_samples(res.params, holes(n, 5)))[0]
              for n in rng.integers(150, 251, 8)]
    out = dict(first_fit_s=first, new_data_fit_ms=1e3 * float(np.median(fits)),
               new_data_fit_ms_max=1e3 * max(fits), new_batch_score_ms=1e3 * float(np.median(
                   scores)), new_batch_score_ms_max=1e3 * max(scores),
               fit_programs=ms._fit_compiled._cache_size(),
               row_programs=ms._rows_compiled._cache_size())
    import emjax

    out["select_model_1_to_6_s"] = timed(
        lambda: emjax.select_model(holes(1000, 5), 6, missing="marginalize").params.weights)[0]
    X = holes(8192, 16)
    kw = dict(key=jax.random.key(0), max_iter=10, tol=0.0)
    out["large_first_fit_s"] = timed(lambda: ms.fit(X, 16, **kw))[0]
    out["large_iteration_ms"] = 1e3 * min(timed(lambda: ms.fit(X, 16, **kw))[0]
                                          for _ in range(3)) / 10
    return out


def part_forecast(n_fleets: int = 8) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from emjax.failure_mode import model as fm
    from emjax.failure_mode import prognostics as pg
    from emjax.failure_mode.data import make_synthetic, observed_until

    jax.config.update("jax_enable_x64", True)
    train = make_synthetic(0, n_units=200, run_to_failure=True)
    model = pg.fit_prognostic(train.times, train.values, basis=fm.QUADRATIC, n_components=1,
                              n_init=1, max_iter=100).model
    f = model.failure
    level = (f.level - model.center[f.channel]) / model.scale[f.channel]
    level_var = (f.level_sd / model.scale[f.channel]) ** 2

    def op_by_op(times, values, cut):
        # what a forecast ran before 622b9f5: the statistics and the forecast op by op
        mask = observed_until(times, values, cut)
        z = (values - model.center[None, :, None]) / model.scale[None, :, None]
        tau = np.where(np.isfinite(times), times / model.t_scale, 0.0)
        data = fm.data_from_arrays(jnp.asarray(tau), jnp.asarray(np.where(mask, z, 0.0)),
                                   jnp.asarray(mask.astype(float)), basis=model.basis,
                                   t_scale=model.t_scale)
        return pg._forecast(model.params, data, jnp.asarray(cut), jnp.asarray(
            cut + 2 * model.t_scale), level, level_var, f.direction, basis=model.basis,
            channel=int(f.channel), n_grid=2000, include_noise=f.on == "observed")[1]

    out = {}
    for name, run in (("compiled", lambda t, v, c: model.forecast((t, v), cut=c).cdf),
                      ("op_by_op", op_by_op)):
        ts = []
        for seed in range(n_fleets):
            # distinct unit counts and lengths: every fleet a new shape
            fleet = make_synthetic(100 + seed, n_units=15 + 2 * seed, n_obs=(10, 50 + seed),
                                   run_to_failure=True)
            cut = 0.6 * np.nanmax(fleet.times, axis=1)
            t = time.perf_counter()
            jax.block_until_ready(run(fleet.times, fleet.values, cut))
            ts.append(time.perf_counter() - t)
        out[name] = dict(first_ms=1e3 * ts[0], median_ms=1e3 * float(np.median(ts[1:])),
                         max_ms=1e3 * max(ts[1:]))
    return out


def part_missing() -> dict:
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    out = {}
    for layout in ("size_classes", "exact"):
        r = subprocess.run([sys.executable, __file__, "--missing-child", layout],
                           capture_output=True, text=True, env=env, check=True)
        out[layout] = json.loads(r.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="first,rows,vmap,small,real,real_cache")
    ap.add_argument("--out", default="experiments/results/latency.json")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other parts of an existing --out file")
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per case (first)")
    ap.add_argument("--tuning", metavar="JSON",
                    help="real part: CPU tuning entries replaced, e.g. '{\"tiny_features\": 0}'")
    ap.add_argument("--real-child", metavar="CACHE_DIR",
                    help="(internal) the real part with this disk cache, as JSON on stdout")
    ap.add_argument("--missing-child", metavar="LAYOUT",
                    help="(internal) the missing part with this layout, as JSON on stdout")
    args = ap.parse_args()
    if args.missing_child:
        print(json.dumps(_missing_child(args.missing_child)))
        return
    if args.real_child:
        print(json.dumps(part_real(args.real_child)))
        return
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    threads = os.environ.get("OMP_NUM_THREADS")
    command = (f"OMP_NUM_THREADS={threads} " if threads else "") + (
        "PYTHONPATH=. python experiments/latency.py --parts " + args.parts) + (
        " --merge" if args.merge else "") + (
        f" --tuning '{args.tuning}'" if args.tuning else "") + (
        f" --repeats {args.repeats}" if args.repeats != 3 else "")
    results = {}
    if args.merge and os.path.exists(args.out):
        with open(args.out) as f:
            results = json.load(f)
    # Each part has its own run record ({part}_run); no record of the file as a whole.
    for stale in ("command", "commit", "load_average", "vmap_command", "vmap_commit",
                  "vmap_load_average"):
        results.pop(stale, None)
    for part in args.parts.split(","):
        load = os.getloadavg()
        kwargs = dict(repeats=args.repeats) if part == "first" else {}
        if part == "real":
            kwargs = dict(tuning=args.tuning)
        results[part] = globals()[f"part_{part}"](**kwargs)
        results[part + "_run"] = dict(command=command, commit=commit,
                                      date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                      load_average_before=load, load_average_after=os.getloadavg())
        print(part, json.dumps(results[part], indent=1), flush=True)
    from emjax._files import atomic_write  # after the parts: nothing imported before them

    with atomic_write(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
