"""fit() on large inputs: no centred copy for the initialisation (fast path), the program compiled
before the data is put on the device, and a 64-byte-aligned input used in place, never changed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import emjax
from emjax.gmm import fitting


def _aligned_copy(a):
    buf = np.empty(a.nbytes + 64, np.uint8)
    off = (-buf.ctypes.data) % 64
    out = buf[off:off + a.nbytes].view(a.dtype).reshape(a.shape)
    out[:] = a
    return out


@pytest.mark.slow
def test_fast_path_fit_starts_from_the_centred_init(monkeypatch, fused_from_2_20):
    rng = np.random.default_rng(0)
    k, d = 16, 16
    X = (rng.normal(size=(k, d))[rng.integers(0, k, 4200)] * 3 + rng.normal(size=(4200, d))
         + 100.0).astype(np.float32)
    assert emjax.make_plan("full", X.dtype, X.shape[0], d, k).fused
    key = jax.random.key(5)
    monkeypatch.setattr(fitting, "LARGE_DATA_BYTES", 0)  # also take the compile-first route
    before = fitting.compiled_programs()
    res = emjax.fit(_aligned_copy(X), k, key=key, max_iter=2, tol=0.0)
    # Compiled once (the initialisation and EM), not again by the call.
    assert fitting.compiled_programs() - before == 2
    # The reference: the same restart key's initialisation on a centred copy, shifted back.
    shift = np.asarray(jnp.mean(jnp.asarray(X), 0))
    p0 = fitting.init_params(jax.random.split(key, 1)[0], jnp.asarray(X - shift), k)
    p0 = p0._replace(means=p0.means + shift)
    ref = emjax.fit(X, k, params_init=p0, max_iter=2, tol=0.0)
    np.testing.assert_allclose(res.log_likelihood, ref.log_likelihood, rtol=1e-5)
    np.testing.assert_allclose(res.params.means, ref.params.means, rtol=1e-3, atol=1e-3)


def test_aligned_input_is_used_in_place_and_never_changed():
    X = np.random.default_rng(1).normal(size=(500, 3))
    A = _aligned_copy(X)
    with jax.enable_x64(True):
        assert fitting._shares_memory(jax.device_put(A), A)
        assert not fitting._shares_memory(jax.device_put(A[1:]), A)
        a = emjax.fit(A, 2, max_iter=5, key=jax.random.key(0))
        b = emjax.fit(X.copy(), 2, max_iter=5, key=jax.random.key(0))
    np.testing.assert_array_equal(A, X)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
