"""Data-parallel EM: 4 forced host devices in one process, and two jax.distributed processes.

Both run in subprocesses (XLA_FLAGS and jax.distributed must be set before JAX starts); the
fitted parameters come back through .npz files and are compared here with scikit-learn (same
start, same number of EM iterations) and with the single-device :func:`emjax.fit`.
"""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

import emjax
from tests import conftest
from tests._em_reference import (
    COV_TYPES,
    MAX_ITER,
    N_ITER_FIXED,
    data,
    params_init,
    sklearn_reference,
)

pytestmark = pytest.mark.slow  # subprocesses with their own JAX start-up

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(ROOT, "tests", "_distributed_worker.py")


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    # Only the suite's own compile options (tests/conftest.py); the worker adds its devices.
    env["XLA_FLAGS"] = " ".join(conftest.FAST_COMPILE)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    """Start the two jax.distributed processes at once (they overlap with the in-process
    reference fit); the four-device worker starts when a test first reads it, so at most two
    JAX subprocesses are resident at a time."""
    tmp = tmp_path_factory.mktemp("dist")
    port = _free_port()
    jobs = {"devices": ([WORKER, "devices", str(tmp / "devices.npz")], tmp / "devices.npz")}
    for i in range(2):
        out = tmp / f"p{i}.npz"
        jobs[f"p{i}"] = ([WORKER, "process", str(out), str(port), str(i)], out)
    procs = {}

    def start(name):
        args, out = jobs[name]
        procs[name] = (subprocess.Popen([sys.executable, *args], env=_env(), text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT), out)

    def result(name):
        if name not in procs:
            start(name)
        proc, out = procs[name]
        log = proc.communicate(timeout=300)[0] if proc.returncode is None else ""
        assert proc.returncode == 0, f"{name} failed:\n{log[-3000:]}"
        return np.load(out)

    start("p0")
    start("p1")
    yield result
    for proc, _ in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.fixture(scope="module")
def four_devices(workers):
    return workers("devices")


# The test that compiles an in-process reference goes first: it overlaps with the workers.
def test_two_processes_match_one_process(workers):
    X = data(151)
    ref = emjax.fit(X, 3, covariance_type="full", params_init=params_init(X, "full"), tol=1e-6,
                    max_iter=MAX_ITER)
    r0, r1 = workers("p0"), workers("p1")
    for r in (r0, r1):
        assert bool(r["full_converged"])
        assert int(r["full_n_iter"]) == int(ref.n_iter)
        np.testing.assert_allclose(r["full_ll"], ref.log_likelihood, rtol=1e-10)
        np.testing.assert_allclose(r["full_means"], ref.params.means, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(r["full_covariances"], ref.params.covariance.covariances,
                                   rtol=1e-7, atol=1e-9)
    np.testing.assert_array_equal(r0["full_means"], r1["full_means"])  # replicated: identical


@pytest.mark.parametrize("cov", COV_TYPES)
def test_four_devices_match_reference_with_padding(four_devices, cov):
    # N = 151 is not divisible by 4: the padded rows (weight 0) must change nothing.
    X = data(151)
    sk = sklearn_reference(X, cov, N_ITER_FIXED)
    r = four_devices
    assert int(r[f"{cov}_n_iter"]) == N_ITER_FIXED
    np.testing.assert_allclose(r[f"{cov}_weights"], sk.weights_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(r[f"{cov}_means"], sk.means_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(r[f"{cov}_covariances"], sk.covariances_, rtol=1e-9, atol=1e-12)
    # The monitored log-likelihood is the mean over the 151 real samples at the final params.
    ll = np.mean(sk.score_samples(X))
    np.testing.assert_allclose(r[f"{cov}_ll"], ll, rtol=1e-10)


def test_four_devices_one_collective_per_iteration(four_devices):
    assert int(four_devices["n_collectives_in_loop"]) == 1
