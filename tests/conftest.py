"""Tests run with JAX's x64 mode on, so float64 cases are real float64; float32 cases pass
float32 arrays and assert that float32 comes back."""

import ctypes
import ctypes.util
import gc
import os
import tempfile

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

COV_TYPES = ("full", "tied", "diag", "spherical")
DTYPES = (np.float32, np.float64)


@pytest.fixture(autouse=True, scope="session")
def _compiled_programs_on_disk():
    """Keep every compiled program in a disk cache private to this run, so a program dropped by
    the per-module release below is read back instead of compiled again by a later module. The
    CLI's own disk cache (``--compile-cache``, on by default) then goes to the same directory,
    never to the user's home."""
    with tempfile.TemporaryDirectory(prefix="emjax-test-xla-") as directory:
        saved = {name: getattr(jax.config, name) for name in _CACHE_OPTIONS}
        env = os.environ.get("EMJAX_CACHE_DIR")
        os.environ["EMJAX_CACHE_DIR"] = directory
        jax.config.update("jax_compilation_cache_dir", directory)
        # the fitting programs; reading back a program of a few eager ops costs what compiling does
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        yield directory
        for name, value in saved.items():
            jax.config.update(name, value)
        if env is None:
            os.environ.pop("EMJAX_CACHE_DIR", None)
        else:
            os.environ["EMJAX_CACHE_DIR"] = env


_CACHE_OPTIONS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
                  "jax_persistent_cache_min_entry_size_bytes")


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop every compiled program after each test module: a module shares programs between its
    own tests, and without this every module's executables stay resident to the end of the run."""
    yield
    jax.clear_caches()
    from emjax.gmm import fitting

    fitting._EXECUTABLES.clear()  # the fits loaded from (or written to) the disk cache
    fitting._PROGRAMS.clear()  # what the bound on programs counts: none are held now
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
