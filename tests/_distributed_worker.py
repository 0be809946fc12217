"""Subprocess side of tests/gmm/test_distributed.py (JAX must be configured before it is imported).

    python _distributed_worker.py devices OUT.npz           # 4 forced host devices, one process
    python _distributed_worker.py process OUT.npz PORT RANK  # one of two jax.distributed processes

Writes the fitted parameters (and a few facts about the run) to ``OUT.npz``.
"""

import os
import sys

mode, out = sys.argv[1], sys.argv[2]
if mode == "devices":
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=4")

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)
# The CPU collectives used across processes (gloo is jax 0.10's default; set it explicitly).
jax.config.update("jax_cpu_collectives_implementation", "gloo")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests._em_reference import COV_TYPES, MAX_ITER, N_ITER_FIXED, data, params_init  # noqa: E402, I001
from tests import conftest  # noqa: E402

conftest.configure_fresh_process()  # the suite's compile options, as in the test process
from emjax.gmm import fitting  # noqa: E402

fitting.FIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}  # before distributed's jit
from emjax.gmm import distributed  # noqa: E402


def flat(prefix, res):
    p = res.params
    return {f"{prefix}_weights": np.asarray(p.weights), f"{prefix}_means": np.asarray(p.means),
            f"{prefix}_covariances": np.asarray(p.covariance.covariances),
            f"{prefix}_ll": np.asarray(res.log_likelihood),
            f"{prefix}_n_iter": np.asarray(res.n_iter),
            f"{prefix}_converged": np.asarray(res.converged),
            f"{prefix}_history": np.asarray(res.history)}


results = {}
if mode == "devices":
    assert jax.device_count() == 4, jax.devices()
    X = data(151)  # not divisible by 4: one padded row per... three padded rows in all
    for cov in COV_TYPES:
        res = distributed.fit(X, 3, covariance_type=cov, params_init=params_init(X, cov),
                              tol=0.0, max_iter=N_ITER_FIXED)
        results.update(flat(cov, res))
    # The loop body of the sharded program holds exactly one collective (a psum of a tuple).
    mesh = distributed.make_mesh()
    e_step, m_step, repair = distributed.make_model("full", 1e-6, n_devices=4)
    d = distributed.shard_data(X, mesh=mesh, min_rows_per_device=3)

    def loop(Xl, wl, n, p0):
        return distributed.em.run(e_step, m_step, p0, (Xl, wl, n), tol=0.0, max_iter=3,
                                  repair=repair)

    P = jax.sharding.PartitionSpec
    f = jax.shard_map(loop, mesh=mesh, in_specs=(P("data"), P("data"), P(), P()), out_specs=P())
    jaxpr = jax.make_jaxpr(f)(d.X, d.sample_weight, np.int32(151), params_init(X, "full"))
    (sm,) = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "shard_map"]
    (wl,) = [e for e in sm.params["jaxpr"].eqns if e.primitive.name == "while"]
    body = wl.params["body_jaxpr"].jaxpr
    names = []

    def walk(jx):
        for e in jx.eqns:
            names.append(e.primitive.name)
            for val in e.params.values():
                for sub in val if isinstance(val, (tuple, list)) else (val,):
                    if hasattr(sub, "eqns"):
                        walk(sub)
                    elif hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                        walk(sub.jaxpr)

    walk(body)
    results["n_collectives_in_loop"] = np.asarray(
        sum(n.startswith(("psum", "all_", "ppermute", "pmax", "pmin")) for n in names))
else:
    port, rank = sys.argv[3], int(sys.argv[4])
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                               process_id=rank, initialization_timeout=60)
    assert jax.process_count() == 2 and jax.device_count() == 2
    X = data(151)
    mine = X[:80] if rank == 0 else X[80:]  # unequal blocks: process 1 gets padded
    res = distributed.fit(mine, 3, covariance_type="full", params_init=params_init(X, "full"),
                          tol=1e-6, max_iter=MAX_ITER)
    results.update(flat("full", res))
    jax.distributed.shutdown()
np.savez(out, **results)
