"""Streaming EM: exact EM over chunks equals the in-memory fit; online EM approaches full EM."""

import numpy as np
import pytest

import emjax
from emjax import em
from emjax.gmm import streaming
from tests._em_reference import N_ITER_FIXED, data, params_init, sklearn_reference
from tests.conftest import COV_TYPES, DTYPES


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cov", COV_TYPES)
def test_chunked_exact_em_from_npy_matches_reference(tmp_path, cov, dtype):
    X = data(151)
    path = tmp_path / "x.npy"
    np.save(path, X.astype(dtype))
    # 151 rows in chunks of 40: three full chunks and a padded one.
    res = streaming.fit(path, 3, covariance_type=cov, params_init=params_init(X, cov),
                        chunk_size=40, tol=0.0, max_iter=N_ITER_FIXED)
    sk = sklearn_reference(X, cov, N_ITER_FIXED)
    assert res.params.means.dtype == dtype and res.log_likelihood.dtype == dtype
    assert int(res.n_iter) == N_ITER_FIXED and not bool(res.converged)
    tol = dict(rtol=1e-9, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(res.params.weights, sk.weights_, **tol)
    np.testing.assert_allclose(res.params.means, sk.means_, **tol)
    np.testing.assert_allclose(res.params.covariance.covariances, sk.covariances_, **tol)
    np.testing.assert_allclose(res.log_likelihood, np.mean(sk.score_samples(X)),
                               rtol=1e-10 if dtype == np.float64 else 1e-5)


def _uneven_chunks(X):
    # A callable returning a fresh iterator per pass, with chunk sizes unrelated to chunk_size.
    cuts = [0, 37, 50, 114, len(X)]
    return lambda: (X[a:b] for a, b in zip(cuts[:-1], cuts[1:]))


def test_streaming_convergence_rule_and_history_match_in_memory_fit():
    X = data(151)
    p0 = params_init(X, "full")
    res = streaming.fit(_uneven_chunks(X), 3, params_init=p0, chunk_size=32, tol=1e-6,
                        max_iter=50)
    ref = emjax.fit(X, 3, params_init=p0, tol=1e-6, max_iter=50)
    assert bool(res.converged) and bool(ref.converged)
    assert int(res.n_iter) == int(ref.n_iter)
    assert int(res.status) == int(ref.status)
    np.testing.assert_allclose(res.history, ref.history, rtol=1e-12)  # NaN where not run
    np.testing.assert_allclose(res.log_likelihood, ref.log_likelihood, rtol=1e-12)
    np.testing.assert_allclose(res.params.covariance.covariances,
                               ref.params.covariance.covariances, rtol=1e-8, atol=1e-10)


def test_sources_chunked_already_and_one_shot_iterators():
    """What streaming.chunks returns is a source too (the same fit as the array it chunks);
    a generator, which one pass would exhaust, is an error saying what to pass instead."""
    X = data(151)
    p0 = params_init(X, "full")
    kw = dict(params_init=p0, chunk_size=32, tol=1e-6, max_iter=50)
    ref = streaming.fit(X, 3, **kw)
    for source in (streaming.chunks(X, 40), streaming.chunks(_uneven_chunks(X))):
        res = streaming.fit(source, 3, **kw)
        assert int(res.n_iter) == int(ref.n_iter)
        np.testing.assert_allclose(res.log_likelihood, ref.log_likelihood, rtol=1e-12)
    with pytest.raises(ValueError, match="can be read once.*zero-argument callable"):
        streaming.fit(_uneven_chunks(X)(), 3, **kw)
    # chunks of another width are named, not left to NumPy's concatenation error
    with pytest.raises(ValueError, match=r"chunk 1 has shape \(5, 1\); the first has 3 features"):
        streaming.fit([X[:5], X[5:10, :1]], 3)
    with pytest.raises(ValueError, match="chunk_size"):
        streaming.chunks(X, 0)


def test_streaming_reseeds_an_empty_component_like_in_memory_fit():
    X = data(151)
    p0 = params_init(X, "full")
    p0 = p0._replace(means=p0.means.at[2].set(np.array([40.0, 40.0, 40.0])))  # nothing near
    res = streaming.fit([X[:70], X[70:]], 3, params_init=p0, chunk_size=32, tol=1e-6,
                        max_iter=50)
    ref = emjax.fit(X, 3, params_init=p0, tol=1e-6, max_iter=50)
    assert int(ref.status) & em.STATUS_RESEEDED  # the scenario really re-seeds
    assert int(res.status) == int(ref.status)
    assert int(res.n_iter) == int(ref.n_iter)
    np.testing.assert_allclose(res.params.means, ref.params.means, rtol=1e-8, atol=1e-10)


def test_online_em_gets_close_to_full_em():
    X = data(3000)  # rows cycle through the three clusters: a well-mixed stream
    p0 = params_init(X, "full")
    full = sklearn_reference(X, "full", 200, tol=1e-10)  # batch EM to convergence
    online = streaming.fit_online(X, 3, params_init=p0, batch_size=100, n_passes=2, alpha=0.6)
    assert online.n_steps == 60 and online.status == 0
    ll_online = float(np.mean(emjax.score_samples(online.params, X)))
    ll_full = float(np.mean(full.score_samples(X)))
    assert ll_full - 0.01 < ll_online <= ll_full + 1e-9
    np.testing.assert_allclose(online.params.means, full.means_, atol=0.1)
    np.testing.assert_allclose(online.params.weights, full.weights_, atol=0.02)


def test_integer_sources_in_jax_default_float_with_x64_off(tmp_path):
    """As emjax.fit reads them: integer data (an array, a .npy file) is fitted in float32 with
    x64 off, equal to its float32 copy (it was refused: 'float64 but x64 mode is off')."""
    import jax

    X = np.rint(data(151) * 4)
    np.save(tmp_path / "ints.npy", X.astype(np.int64))
    with jax.enable_x64(False):
        ref = streaming.fit(X.astype(np.float32), 3, max_iter=5, chunk_size=64)
        for source in (X.astype(np.int64), str(tmp_path / "ints.npy")):
            res = streaming.fit(source, 3, max_iter=5, chunk_size=64)
            assert res.params.means.dtype == np.float32
            np.testing.assert_array_equal(res.params.means, ref.params.means)
