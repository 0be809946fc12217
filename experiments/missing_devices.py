"""Would the missing-data pass gain from both cores as two CPU devices? Rows split in halves,
each half's pass on its own device, against the whole pass on one.

The speed case of ``experiments/missing_data.py`` (N = 1e5, D = 16, K = 16, full, 20 % missing,
float64). In a process with two CPU devices (``jax_num_cpu_devices=2``), the median time of
:func:`emjax.gmm.missing._matrix_pass` (the E-step and the M-step's statistics; the rest of an
iteration is a few ``(K, D, D)`` operations):

* ``whole``: all rows, on device 0;
* ``halves_one_device``: two layouts of 50 000 rows each, one after the other on device 0;
* ``halves_two_devices``: the same two, dispatched together, one per device;
* ``halves_two_threads``: the same two on device 0, each called from a Python thread of its own
  (XLA:CPU runs the programs of two calling threads at once, one device, no process setting);

and, in the same run, the complete-data and missing-data EM iterations (``emjax.fit`` on device
0, as in ``missing_data.py``): the missing-data iteration with its pass replaced by the two
devices' time, over the complete-data iteration, is the ratio a fit sharded over the two
devices would approach. Writes
``experiments/results/missing_devices.json`` with the command, commit, date and load average::

    PYTHONPATH=. python experiments/missing_devices.py
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_num_cpu_devices", 2)  # before any backend starts
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import missing_data as md  # noqa: E402

import emjax  # noqa: E402
from emjax import _xla  # noqa: E402
from emjax.gmm import missing as M  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--out", default=str(HERE / "results" / "missing_devices.json"))
    args = ap.parse_args()
    k = 16
    X, Xn, start = md.speed_case(100_000, 16, k)
    devices = jax.devices()
    if len(devices) < 2:
        raise SystemExit("needs two CPU devices (jax_num_cpu_devices)")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=HERE).stdout.strip()
    out = dict(command="PYTHONPATH=. python experiments/missing_devices.py", commit=commit,
               date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               load_average_before=os.getloadavg(), n=100_000, d=16, k=k, missing=0.2)

    def on(rows, device):
        data, _ = M.layout(Xn[rows], None, k, "full")
        p = start._replace(means=start.means - data.center)
        return jax.device_put(jax.tree_util.tree_map(jnp.asarray, (p, data)), device)

    # compiled with the fit's XLA options (emjax._xla), so that it is the fit's pass
    options = _xla.compiler_options("missing", 100_000 * 16 * k)
    fn = jax.jit(M._matrix_pass, compiler_options=dict(options))
    out["compiler_options"] = dict(options)
    whole = on(slice(None), devices[0])
    first = on(slice(0, 50_000), devices[0])
    second_0, second_1 = (on(slice(50_000, None), dev) for dev in devices[:2])
    for a in (whole, first, second_0, second_1):
        jax.block_until_ready(fn(*a))

    def timed(f):
        ts = []
        for _ in range(args.reps):
            t = time.perf_counter()
            jax.block_until_ready(f())
            ts.append(time.perf_counter() - t)
        return 1e3 * float(np.median(ts))

    pool = concurrent.futures.ThreadPoolExecutor(2)

    def two_threads():
        calls = [pool.submit(lambda a=a: jax.block_until_ready(fn(*a)))
                 for a in (first, second_0)]
        return [c.result() for c in calls]

    ms = dict(whole=timed(lambda: fn(*whole)),
              halves_one_device=timed(lambda: (fn(*first), fn(*second_0))),
              halves_two_devices=timed(lambda: (fn(*first), fn(*second_1))),
              halves_two_threads=timed(two_threads))
    wi, mi = np.asarray(start.weights), np.asarray(start.means)
    pi = np.linalg.inv(np.asarray(start.covariance.covariances))

    def run_complete(it):
        r = emjax.fit(X, k, tol=0.0, max_iter=it, weights_init=wi, means_init=mi,
                      precisions_init=pi)
        r.params.means.block_until_ready()

    def run_missing(it):
        r = emjax.fit(Xn, k, missing="marginalize", tol=0.0, max_iter=it, weights_init=wi,
                      means_init=mi, precisions_init=pi)
        r.params.means.block_until_ready()

    ms["complete_iteration"] = md.per_iteration(run_complete)
    ms["missing_iteration"] = md.per_iteration(run_missing)
    # the iteration with its pass replaced by the two devices' (the rest unchanged)
    ms["missing_iteration_two_devices"] = (ms["missing_iteration"] - ms["whole"]
                                           + ms["halves_two_devices"])
    ms["missing_iteration_two_threads"] = (ms["missing_iteration"] - ms["whole"]
                                           + ms["halves_two_threads"])
    out["ms"] = ms
    out["speedup_two_devices"] = ms["whole"] / ms["halves_two_devices"]
    out["speedup_two_threads"] = ms["whole"] / ms["halves_two_threads"]
    out["ratio_missing_over_complete"] = ms["missing_iteration"] / ms["complete_iteration"]
    out["ratio_two_devices_over_complete"] = (ms["missing_iteration_two_devices"]
                                              / ms["complete_iteration"])
    out["ratio_two_threads_over_complete"] = (ms["missing_iteration_two_threads"]
                                              / ms["complete_iteration"])
    out["load_average_after"] = os.getloadavg()
    print(json.dumps(out, indent=1))
    from emjax._files import atomic_write

    with atomic_write(args.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
