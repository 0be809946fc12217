"""Tests run with JAX's x64 mode on, so float64 cases are real float64; float32 cases pass
float32 arrays and assert that float32 comes back."""

import ctypes
import ctypes.util
import gc
import os
import tempfile

# Set before JAX starts its CPU backend. The suite's programs run once or twice on tiny arrays,
# so compiling dominates: XLA's cheapest backend (LLVM level 0, the older IR emitters, without
# the loop passes a small fit's plan leaves out) compiles them several times faster with the
# same results to rounding. The fits that choose their own
# options (a PassPlan's, emjax._xla's table) take these too (pytest_configure); the tests that
# check those choices, or run with them, use the ``production_compile_options`` fixture.
FAST_COMPILE = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false",
                "--xla_disable_hlo_passes=while-loop-invariant-code-motion,simplify-while-loops")
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", "")]
    + [f for f in FAST_COMPILE if f.split("=")[0] not in os.environ.get("XLA_FLAGS", "")]
).strip()

import numpy as np  # noqa: E402
import pytest  # noqa: E402

COV_TYPES = ("full", "tied", "diag", "spherical")
DTYPES = (np.float32, np.float64)

#: The run's private disk cache of compiled programs, shared by the xdist workers.
_CACHE_ENV = "EMJAX_TEST_XLA_CACHE"


def _is_xdist_controller(config) -> bool:
    return bool(getattr(config.option, "numprocesses", 0)) and not hasattr(config, "workerinput")


def pytest_configure(config):
    """Every process that runs tests uses x64 and the run's disk cache of compiled programs,
    which the process that starts the run creates (the xdist controller never imports JAX)."""
    if not os.environ.get(_CACHE_ENV):
        config._emjax_cache = tempfile.TemporaryDirectory(prefix="emjax-test-xla-")
        os.environ[_CACHE_ENV] = config._emjax_cache.name
    if _is_xdist_controller(config):
        return
    import jax

    jax.config.update("jax_enable_x64", True)
    # A program dropped by the per-module release below is read back instead of compiled again
    # by a later module (or another worker). The CLI's own disk cache (``--compile-cache``, on
    # by default) goes to the same directory, never to the user's home.
    os.environ["EMJAX_CACHE_DIR"] = os.environ[_CACHE_ENV]
    configure_fresh_process()


#: A fit's own XLA options (PassPlan.compiler_options, emjax._xla's CPU table), kept by
#: _cheapest_compile_options for the production_compile_options fixture.
_PRODUCTION: dict = {}


def _cheapest_compile_options():
    """Every fit compiled with FAST_COMPILE's options (what the suite's other programs get)."""
    from emjax import _xla
    from emjax.gmm import plan as plan_lib

    _PRODUCTION.update(plan=plan_lib.PassPlan.compiler_options, xla=_xla.TUNING["cpu"])
    options = dict(f.lstrip("-").split("=") for f in FAST_COMPILE)
    small = plan_lib.CPU.small_skipped_passes
    assert options == {"xla_backend_optimization_level": "0",
                       "xla_cpu_use_fusion_emitters": "false",
                       "xla_disable_hlo_passes": ",".join(small)}
    plan_lib.PassPlan.compiler_options = lambda self: {
        "xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False,
        "xla_disable_hlo_passes": ",".join(small)}
    _xla.TUNING["cpu"] = _xla.TUNING["cpu"]._replace(
        opt_level=0, ir_emitters_max_values=dict.fromkeys(_xla.KINDS, 2**62))


#: Code a test's fresh interpreter runs first (after whatever must precede JAX's import): the
#: suite's compile options and the run's cache of compiled programs, as in this process.
FRESH_PROCESS_PRELUDE = (
    "import sys as _sys\n"
    f"_sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r})\n"
    "from tests import conftest as _conftest\n"
    "_conftest.configure_fresh_process()\n"
)


def configure_fresh_process():
    """The run's cache of compiled programs (when the run has one) and the cheapest compile
    options, x64 left as the process has it: what every process running tests or started by
    one (:data:`FRESH_PROCESS_PRELUDE`) takes."""
    import jax

    if os.environ.get(_CACHE_ENV):
        jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_ENV])
        # the fitting programs; reading back a program of a few eager ops costs what compiling
        # does
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _cheapest_compile_options()


@pytest.fixture
def production_compile_options(monkeypatch):
    """The fits' own XLA options, as a user's process has them, for one test."""
    from emjax import _xla
    from emjax.gmm import plan as plan_lib

    monkeypatch.setattr(plan_lib.PassPlan, "compiler_options", _PRODUCTION["plan"])
    monkeypatch.setitem(_xla.TUNING, "cpu", _PRODUCTION["xla"])


def pytest_unconfigure(config):
    cache = getattr(config, "_emjax_cache", None)
    if cache is not None:
        os.environ.pop(_CACHE_ENV, None)
        cache.cleanup()


def pytest_collection_finish(session):
    """Everything imported by collection lives to the end of the run: frozen, the collector
    need not scan it again on every full collection while tests trace programs."""
    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop every compiled program after each test module: a module shares programs between its
    own tests, and without this every module's executables stay resident to the end of the run."""
    yield
    import jax

    from emjax import _xla
    from emjax.gmm import fitting

    jax.clear_caches()
    _xla.clear_all()  # the other fits' programs, with those loaded from the disk cache

    fitting._EXECUTABLES.clear()  # the fits loaded from (or written to) the disk cache
    fitting._PROGRAMS.clear()  # what the bound on programs counts: none are held now
    fitting._PRECOMPILED.clear()  # so a module's first fits compile their two programs at once
    gc.collect()
    _trim_heap()


def _trim_heap():
    """Hand freed heap pages back to the system (glibc keeps them otherwise), so the run's
    resident memory is one module's, not the sum of every module's peaks."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def rtol_for(dtype):
    return 2e-4 if np.dtype(dtype) == np.float32 else 1e-9


@pytest.fixture
def blobs():
    """Three well-separated 3-D clusters (float64; cast per test)."""
    rng = np.random.default_rng(0)
    return np.concatenate([
        rng.normal(size=(60, 3)),
        rng.normal(size=(50, 3)) * 0.7 + np.array([5.0, 5.0, 0.0]),
        rng.normal(size=(40, 3)) * 0.5 + np.array([-4.0, 3.0, 2.0]),
    ])


@pytest.fixture
def fused_from_2_20(monkeypatch):
    """CPU plans fused from ``N * D * K = 2^20`` for every covariance type, so tests of the
    fused pass run it on small data (by default the dense steps run up to 2^23-2^24)."""
    from emjax.gmm import plan as plan_lib

    cpu = plan_lib.CPU._replace(fused_min_size=dict.fromkeys(plan_lib.CPU.fused_min_size, 2**20))
    monkeypatch.setitem(plan_lib.TUNING, "cpu", cpu)
    return cpu
