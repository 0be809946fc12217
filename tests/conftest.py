"""Tests run with JAX's x64 mode on, so float64 cases are real float64; float32 cases pass
float32 arrays and assert that float32 comes back."""

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

COV_TYPES = ("full", "tied", "diag", "spherical")
DTYPES = (np.float32, np.float64)


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
