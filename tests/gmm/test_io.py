"""Saving and loading fitted mixtures: exact round trip, metadata, bit-for-bit predictions."""

import json

import jax
import numpy as np
import pytest

import emjax
from emjax.gmm import covariance as cov_lib
from emjax.gmm import io
from tests.conftest import COV_TYPES, DTYPES


def _params(cov, dtype, k=3, d=2, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(k, d, d))
    full = a @ np.swapaxes(a, 1, 2) + np.eye(d)
    covs = {"full": full, "tied": full[0], "diag": np.exp(rng.normal(size=(k, d))),
            "spherical": np.exp(rng.normal(size=k))}[cov]
    w = rng.dirichlet(np.ones(k))
    return emjax.make_params(w.astype(dtype), rng.normal(size=(k, d)).astype(dtype) * 3,
                             np.asarray(covs, dtype), cov)


_predict = jax.jit(emjax.predict)


@pytest.mark.parametrize("cov", COV_TYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_is_exact(tmp_path, cov, dtype):
    params = _params(cov, dtype)
    path = io.save(str(tmp_path / "m"), params, config={"seed": np.int64(3), "tol": 1e-3})
    assert path.endswith("m.npz")
    saved = emjax.load(path)
    leaves_in = jax.tree_util.tree_leaves(params)
    leaves_out = jax.tree_util.tree_leaves(saved.params)
    assert type(saved.params.covariance) is cov_lib.COVARIANCE_CLASSES[cov]
    for a, b in zip(leaves_in, leaves_out):
        assert b.dtype == np.dtype(dtype) and b.shape == a.shape
        np.testing.assert_array_equal(np.asarray(a), b)  # bit for bit
    m = saved.metadata
    assert m["emjax_version"] == emjax.__version__ and m["covariance_type"] == cov
    assert m["config"] == {"seed": 3, "tol": 1e-3} and m["dtype"] == np.dtype(dtype).name
    X = np.random.default_rng(1).normal(size=(200, 2)).astype(dtype) * 3
    np.testing.assert_array_equal(np.asarray(_predict(saved.params, X)),
                                  np.asarray(_predict(params, X)))


def test_load_rejects_other_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model file"):
        emjax.load(str(tmp_path / "missing.npz"))
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not an emjax model file"):
        emjax.load(str(tmp_path / "other.npz"))
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match="not an emjax model file"):
        emjax.load(str(tmp_path / "text.npz"))
    p = _params("diag", np.float64)
    path = io.save(str(tmp_path / "future.npz"), p)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays["metadata"][()]))
    meta["format_version"] = 99
    arrays["metadata"] = np.asarray(json.dumps(meta))
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="format version 99"):
        emjax.load(path)


def test_save_to_a_directory_is_an_error_and_writes_nothing(tmp_path):
    """A directory given as the path: an error, not a sibling file named after it."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out.npz").mkdir()
    p = _params("diag", np.float64)
    for target in ("out", "out.npz"):
        with pytest.raises(ValueError, match="is a directory; give a file name"):
            io.save(str(tmp_path / target), p)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["out", "out.npz"]
    assert not any((tmp_path / "out").iterdir())
