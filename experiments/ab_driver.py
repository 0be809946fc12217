"""Interleaved in-process A/B of the fast EM driver under different ``emjax.gmm`` settings.

    PYTHONPATH=. python experiments/ab_driver.py float64 base,FEATURE_ROWS=False \
        100000,16,16,diag 10000,16,16,spherical
    PYTHONPATH=. python experiments/ab_driver.py float32 base,FEATURE_ROWS_FULL_MAX_BYTES=0 \
        100000,16,16,full

Each variant sets module attributes of ``emjax.gmm`` (``NAME=value``, or ``module.NAME=value``
for another ``emjax`` module, e.g. ``covariance.BLOCKED_INVERSE_MIN_FEATURES=10**9``; several
joined by ``+``; ``base`` is the defaults) while its program is traced and compiled; the
compiled programs then run in turn, ``rounds`` times, on the same data and start (the
benchmark's). Prints ms per iteration (a run of ``T`` iterations plus the first E-step, divided
by ``T + 1``) and the final log-likelihood of each variant. The per-iteration A/B figures quoted
in ``emjax/`` and the README were measured with this script.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark as b  # noqa: E402

from emjax import em, gmm  # noqa: E402
from emjax.gmm import fitting, kernels  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dtype", choices=["float32", "float64"])
    ap.add_argument("variants", help="comma-separated: base or NAME=value[+NAME=value]")
    ap.add_argument("configs", nargs="+", help="N,D,K,covariance_type")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--iters2", type=int, default=None,
                    help="also run this many iterations and report the steady state "
                         "(t2 - t1) / (iters2 - iters), as the benchmark does, which leaves "
                         "out what a fit does once (building the features, the first E-step)")
    args = ap.parse_args()
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    names = args.variants.split(",")
    variants = [{} if v == "base" else dict(kv.split("=") for kv in v.split("+")) for v in names]
    def module(key):
        if "." not in key:
            return kernels, key
        mod, name = key.split(".", 1)
        return importlib.import_module(f"emjax.gmm.{mod}"), name

    def setting(key, val):
        setattr(*module(key), val)

    defaults = {key: getattr(*module(key)) for v in variants for key in v}
    T = args.iters
    for cfg in args.configs:
        n, d, k, ct = cfg.split(",")
        n, d, k = int(n), int(d), int(k)
        X = jnp.asarray(b.make_data(n, d, k, dtype=np.dtype(args.dtype)))
        start = b.initial_params(np.asarray(X[:20000]), k, ct)
        p0 = gmm.make_params(*(jnp.asarray(a, args.dtype) for a in start), ct)

        fns = {}
        for name, v in zip(names, variants):
            for key, val in defaults.items():
                setting(key, val)
            for key, val in v.items():
                setting(key, type(defaults[key])(eval(val)))

            # A new function per variant: JAX caches traces by function, so one shared
            # function would be traced once, with the first variant's settings.
            def loop(p, X, T):
                # As emjax.fit's fast path: chunks centred at the data's mean, features (or X^T)
                # built once per fit.
                c = jnp.mean(X, 0)
                e, m, r = fitting.make_model(ct, 1e-6, fast=True, center=c,
                                             **fitting.pass_inputs(X, c, ct, k))
                return em.run(e, m, p, (X, None), tol=0.0, max_iter=T, repair=r).log_likelihood

            for t in (T, args.iters2) if args.iters2 else (T,):
                fns[name, t] = jax.jit(loop, static_argnums=2).lower(p0, X, t).compile()
                fns[name, t](p0, X).block_until_ready()
        for key, val in defaults.items():
            setting(key, val)
        ts = {key: [] for key in fns}
        lls = {}
        for _ in range(args.rounds):
            for key in fns:
                t = time.perf_counter()
                lls[key] = float(fns[key](p0, X))
                ts[key].append(time.perf_counter() - t)

        def per_iter(name):
            if not args.iters2:
                return np.median(ts[name, T]) / (T + 1)
            return ((np.median(ts[name, args.iters2]) - np.median(ts[name, T]))
                    / (args.iters2 - T))

        print(args.dtype, cfg, "steady" if args.iters2 else "", "  ".join(
            f"{name}: {per_iter(name) * 1e3:.2f} ms ({lls[name, T]:.10f})"
            for name in names), flush=True)


if __name__ == "__main__":
    main()
