"""No two LAPACK calls run side by side (emjax._linalg): jaxlib 0.10's CPU kernels split a batch
of 256 KiB or more over XLA's thread pool and block on it, and two at once hung the process with
the CPU idle. Run in a subprocess with a timeout, so a regression fails instead of hanging."""

import itertools
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emjax import em, gmm
from emjax import failure_mode as fm
from emjax.gmm import fitting, gem, make_plan
from tests.conftest import FRESH_PROCESS_PRELUDE

ROOT = Path(__file__).resolve().parents[1]

_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = .*? ([\w\-]+)\((.*?)\)(?:,|$)")


def independent_lapack_calls(hlo: str) -> list[tuple[str, str]]:
    """Pairs of LAPACK custom calls in one computation of an optimised HLO module with no data
    path between them (operands and control predecessors), i.e. free to run at the same time."""
    comps, cur = {}, None
    for line in hlo.splitlines():
        if line and not line.startswith(" ") and line.rstrip().endswith("{"):
            cur = comps.setdefault(line, [])
        elif cur is not None and line.startswith("  "):
            cur.append(line)
    pairs = []
    for lines in comps.values():
        deps, calls = {}, []
        for line in lines:
            m = _INSTR.match(line)
            if not m:
                continue
            name, op, args = m.groups()
            ctrl = re.search(r"control-predecessors=\{([^}]*)\}", line)
            deps[name] = re.findall(r"%([\w.\-]+)", args + (ctrl.group(1) if ctrl else ""))
            if op == "custom-call" and "lapack_" in line:
                calls.append(name)

        def ancestors(n):
            seen, todo = set(), list(deps.get(n, []))
            while todo:
                x = todo.pop()
                if x not in seen:
                    seen.add(x)
                    todo.extend(deps.get(x, []))
            return seen

        anc = {c: ancestors(c) for c in calls}
        pairs += [(a, b) for a, b in itertools.combinations(calls, 2)
                  if a not in anc[b] and b not in anc[a]]
    return pairs


def _hlo(fn, *args):
    return jax.jit(fn).lower(*args).compile().as_text()


def _gmm_problem(cov_type, n=64, d=4, k=3):
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.normal(size=(n, d)))
    gamma = jnp.asarray(rng.dirichlet(np.ones(k), size=n))
    return X, gamma, gmm.m_step(gamma, X, covariance_type=cov_type)


@pytest.mark.parametrize("cov_type", ["full", "tied"])
def test_em_iteration_orders_its_factorisations(cov_type):
    """The driver's loop (M-step, re-seeding, both models) and restarts under vmap."""
    X, _, params = _gmm_problem(cov_type)
    ps = jax.tree_util.tree_map(lambda a: jnp.stack([a, a]), params)

    def loop(p, X, fast):
        # LAPACK's factorisations and solves (small problems' plans call none).
        plan = make_plan(cov_type, X.dtype, *X.shape, p.means.shape[0]).replace(
            fused=fast, lapack=True, blocked_inverse=False, unrolled=False, compact=0)
        e, m, r = fitting.make_model(cov_type, 1e-6, plan=plan)
        return em.run(e, m, p, (X, None), tol=0.0, max_iter=3, repair=r).log_likelihood

    for fast in (True, False):
        hlo = _hlo(lambda p, X: jax.vmap(lambda q: loop(q, X, fast))(p), ps, X)
        assert "lapack_" in hlo
        assert independent_lapack_calls(hlo) == []


def test_gem_gradient_orders_its_solves():
    """The optax M-step's change of variables (two triangular solves) with its gradient.
    (``emjax.gmm.objective``, the dense reference of the gradient tests, is not covered: the
    backward pass of its solve and log-determinant has independent solves; see the README.)"""
    X, gamma, params = _gmm_problem("full")
    u0 = gem._relative_origin(params)

    def relative_q(u):
        p = gem._relative_to_params(u, params, "full")
        return gem.expected_log_likelihood(p, gamma, X, reg_covar=1e-3)

    hlo = _hlo(jax.value_and_grad(relative_q), u0)
    assert "lapack_" in hlo and independent_lapack_calls(hlo) == []


def test_failure_mode_posterior_orders_its_solves():
    rng = np.random.default_rng(0)
    L, C, K, N = 4, 2, 3, 9
    basis = fm.Basis("polynomial", 2)
    p = basis.size
    times = np.sort(rng.uniform(0, 1, (L, N)), axis=1)
    values = rng.normal(size=(L, C, N))
    data = fm.make_data(times, values, basis=basis, t_scale=1.0)
    a = rng.normal(size=(C, K, p, p))
    params = fm.FMMParams(jnp.full((K,), 1.0 / K), jnp.asarray(rng.normal(size=(C, K, p))),
                          jnp.asarray(a @ np.swapaxes(a, -1, -2) / p + 0.1 * np.eye(p)),
                          jnp.full((C, K), 0.2))
    hlo = _hlo(fm.posterior, params, data)
    assert "lapack_" in hlo and independent_lapack_calls(hlo) == []


SCRIPT = FRESH_PROCESS_PRELUDE + textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    import emjax
    from emjax.gmm import covariance as cov_lib

    # 16 full covariances of dimension 64 in float32: 256 KiB per factorisation, which
    # jaxlib 0.10 splits over the thread pool (the size that hung emjax.fit).
    rng = np.random.default_rng(0)
    a = rng.normal(size=(16, 64, 64)).astype(np.float32)
    covs = jnp.asarray(a @ np.swapaxes(a, 1, 2) / 64 + np.eye(64, dtype=np.float32))

    @jax.jit
    def loop(c):
        def body(i, acc):
            cov = cov_lib.from_covariances("full", c + acc * jnp.eye(64))
            return acc + 1e-7 * jnp.mean(cov.precisions_cholesky)
        return jax.lax.fori_loop(0, 400, body, jnp.zeros((), jnp.float32))

    assert np.isfinite(float(loop(covs)))
    X = rng.normal(size=(600, 64)).astype(np.float32)
    res = emjax.fit(X, 16, covariance_type="full", max_iter=40, tol=0.0, reg_covar=1e-3,
                    key=jax.random.PRNGKey(0))
    assert np.isfinite(float(res.log_likelihood)), res
    print("ok", int(res.n_iter))
""")


@pytest.mark.slow
def test_large_factorisations_do_not_hang():
    """The size that hung: runs to the end (a regression fails by timeout, not by hanging)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ok 40")
