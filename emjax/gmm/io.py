"""Saving and loading fitted Gaussian mixtures: one portable ``.npz`` file with JSON metadata.

The file holds the arrays ``weights``, ``means``, ``covariances`` and ``precisions_cholesky``
exactly as fitted (dtype and bits), plus ``metadata``: a JSON string with the format name and
version, the emjax version, the covariance type, shapes, dtype and the fitting configuration.
It is read with ``numpy.load(path, allow_pickle=False)``, so any NumPy can open it.
"""

from __future__ import annotations

import datetime
import json
import numbers
import os
import zipfile
from typing import Any, NamedTuple

import numpy as np

from emjax._files import atomic_write, not_npz, npz_path
from emjax._version import __version__
from emjax.gmm import GMMParams
from emjax.gmm import covariance as cov_lib

FORMAT = "emjax.gmm"
FORMAT_VERSION = 1
_ARRAYS = ("weights", "means", "covariances", "precisions_cholesky")


class SavedModel(NamedTuple):
    """A model read by :func:`load`.

    Attributes:
      params: :class:`~emjax.gmm.GMMParams` holding NumPy arrays with the saved dtype and bits.
      metadata: the JSON metadata (``emjax_version``, ``covariance_type``, ``config``, ...).
    """

    params: GMMParams
    metadata: dict


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value


def save(path: str, params: GMMParams, *, config: dict | None = None) -> str:
    """Write ``params`` (and ``config``, any JSON-able dict) to ``path`` (``.npz`` appended if
    missing). Returns the path written.

    The file is written whole or not at all: to a temporary file in the same directory, which
    then replaces ``path`` (``os.replace``), so a failed save leaves a previous model intact.
    A symlink at ``path`` is replaced by the new file; the file it pointed to is not written.
    """
    if not isinstance(params, GMMParams):
        raise ValueError(f"params must be emjax.GMMParams; got {type(params).__name__}")
    arrays = {
        "weights": np.asarray(params.weights),
        "means": np.asarray(params.means),
        "covariances": np.asarray(params.covariance.covariances),
        "precisions_cholesky": np.asarray(params.covariance.precisions_cholesky),
    }
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "emjax_version": __version__,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "covariance_type": params.covariance_type,
        "n_components": int(arrays["means"].shape[0]),
        "n_features": int(arrays["means"].shape[1]),
        "dtype": str(arrays["means"].dtype),
        "config": _jsonable(config or {}),
    }
    path = npz_path(path)
    with atomic_write(path, "wb") as f:
        np.savez(f, metadata=np.asarray(json.dumps(metadata, indent=1)), **arrays)
    return path


class _Invalid(Exception):
    """A problem with a model file's contents (reported by :func:`load` with the path)."""


def _check(cond: bool, problem: str) -> None:
    if not cond:
        raise _Invalid(problem)


def _read_npz(path: str) -> dict:
    try:
        problem = not_npz(path)
    except OSError as exc:
        raise _Invalid(f"it cannot be read ({type(exc).__name__}: {exc})") from None
    if problem:
        raise _Invalid(f"it is {problem}; models are the .npz files that emjax.save writes")
    try:
        f = np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise _Invalid(f"it cannot be read as an .npz archive ({type(exc).__name__}: {exc})") \
            from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise _Invalid(f"it holds a single {type(f).__name__} (an .npy file?), not an .npz "
                       f"archive written by emjax.save")
    try:
        with f:
            return {name: f[name] for name in f.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, KeyError) as exc:
        raise _Invalid(f"it is damaged or truncated ({type(exc).__name__}: {exc})") from None


def _metadata(contents: dict) -> dict:
    missing = [n for n in ("metadata",) + _ARRAYS if n not in contents]
    _check(not missing, f"it lacks {', '.join(missing)} (it holds {sorted(contents)})")
    raw = contents["metadata"]
    _check(raw.shape == () and raw.dtype.kind == "U", "metadata is not a JSON string")
    try:
        metadata = json.loads(str(raw[()]))
    except ValueError:
        raise _Invalid("metadata is not valid JSON") from None
    _check(isinstance(metadata, dict),
           f"metadata is a JSON {type(metadata).__name__}, not an object")
    _check(metadata.get("format") == FORMAT, f"format is {metadata.get('format')!r}, "
           f"not {FORMAT!r}")
    version = metadata.get("format_version")
    _check(isinstance(version, int) and not isinstance(version, bool) and version >= 1,
           f"format_version {version!r} is not a positive integer")
    _check(version <= FORMAT_VERSION, f"format version {version} is newer than this emjax "
           f"reads ({FORMAT_VERSION}): upgrade emjax")
    ctype = metadata.get("covariance_type")
    _check(isinstance(ctype, str) and ctype in cov_lib.COVARIANCE_TYPES,
           f"covariance_type {ctype!r} is not one of {cov_lib.COVARIANCE_TYPES}")
    return metadata


def _tolerance(dtype) -> float:
    return 100 * float(np.finfo(dtype).eps)


def _check_arrays(arrays: dict, metadata: dict) -> None:
    for name, a in arrays.items():
        _check(a.dtype in (np.float32, np.float64),
               f"{name} has dtype {a.dtype}; expected float32 or float64")
    dtypes = {str(a.dtype) for a in arrays.values()}
    _check(len(dtypes) == 1, f"the arrays mix dtypes {sorted(dtypes)}")
    dtype = arrays["means"].dtype
    _check(metadata.get("dtype", str(dtype)) == str(dtype),
           f"metadata dtype {metadata.get('dtype')!r} but the arrays are {dtype}")
    means = arrays["means"]
    _check(means.ndim == 2 and min(means.shape) >= 1,
           f"means has shape {means.shape}; expected (n_components, n_features)")
    k, d = means.shape
    for key, value in (("n_components", k), ("n_features", d)):
        meta = metadata.get(key, value)
        _check(isinstance(meta, numbers.Integral) and meta == value,
               f"metadata {key} = {meta!r} but means has shape {means.shape}")
    ctype = metadata["covariance_type"]
    shapes = {"weights": (k,), "means": (k, d),
              "covariances": cov_lib.covariance_shape(ctype, k, d),
              "precisions_cholesky": cov_lib.covariance_shape(ctype, k, d)}
    for name, shape in shapes.items():
        _check(arrays[name].shape == shape, f"{name} has shape {arrays[name].shape}; a "
               f"{ctype!r} mixture of {k} components in {d} dimensions needs {shape}")
    for name, a in arrays.items():
        _check(bool(np.all(np.isfinite(a))), f"{name} contains NaN or infinity")
    w = arrays["weights"].astype(np.float64)
    _check(bool(np.all(w >= 0)) and abs(w.sum() - 1) <= k * _tolerance(dtype),
           f"weights are not on the simplex (min {w.min():.3g}, sum {w.sum()!r})")
    _check_covariance(arrays["covariances"].astype(np.float64),
                      arrays["precisions_cholesky"].astype(np.float64), ctype, d, dtype)


def _check_covariance(cov: np.ndarray, pc: np.ndarray, ctype: str, d: int, dtype) -> None:
    tol = _tolerance(dtype)
    if ctype in ("diag", "spherical"):
        _check(bool(np.all(cov > 0)), "covariances are not all positive")
        _check(bool(np.all(pc > 0)), "precisions_cholesky are not all positive")
        err = np.max(np.abs(pc * pc * cov - 1.0))
        _check(err <= tol, f"precisions_cholesky do not match the covariances "
               f"(max |U^2 C - 1| = {err:.3g})")
        return
    cov = cov.reshape(-1, d, d)
    pc = pc.reshape(-1, d, d)
    asym = np.max(np.abs(cov - np.swapaxes(cov, -1, -2)), axis=(-1, -2))
    scale = np.max(np.abs(cov), axis=(-1, -2))
    _check(bool(np.all(asym <= tol * scale)), "covariances are not symmetric")
    eig = np.linalg.eigvalsh(cov)
    _check(bool(np.all(eig[:, 0] > 0)), "covariances are not positive definite "
           f"(smallest eigenvalue {eig[:, 0].min():.3g})")
    lower = np.max(np.abs(np.tril(pc, -1)), axis=(-1, -2))
    _check(bool(np.all(lower <= tol * np.max(np.abs(pc), axis=(-1, -2)))),
           "precisions_cholesky are not upper triangular")
    _check(bool(np.all(np.diagonal(pc, axis1=-2, axis2=-1) > 0)),
           "precisions_cholesky have non-positive diagonal entries")
    # U^T C U = I for U U^T = inv(C); rounding grows with the condition number.
    resid = np.max(np.abs(np.swapaxes(pc, -1, -2) @ cov @ pc - np.eye(d)), axis=(-1, -2))
    bound = 1e3 * d * float(np.finfo(dtype).eps) * eig[:, -1] / eig[:, 0]
    worst = int(np.argmax(resid / bound))
    _check(bool(np.all(resid <= bound)), f"precisions_cholesky do not match the covariances "
           f"(max |U^T C U - I| = {resid[worst]:.3g} for matrix {worst})")


def load(path: str) -> SavedModel:
    """Read a model written by :func:`save`, after checking all of it.

    The checks: an ``.npz`` archive with ``metadata`` and the four arrays; JSON metadata of
    this format and a version this emjax reads, a known covariance type; float32 or float64
    arrays of one dtype with the shapes of the mixture the metadata describes; finite values;
    weights on the simplex; symmetric positive definite (or positive) covariances; precision
    factors upper triangular and consistent with the covariances.

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      ValueError: naming ``path`` and the first problem found, for anything else.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such model file: {path}")
    try:
        _check(not os.path.isdir(path), "it is a directory")
        contents = _read_npz(path)
        metadata = _metadata(contents)
        arrays = {name: contents[name] for name in _ARRAYS}
        _check_arrays(arrays, metadata)
    except _Invalid as exc:
        raise ValueError(f"{path}: not an emjax model file: {exc}") from None
    ctype = metadata["covariance_type"]
    cov = cov_lib.COVARIANCE_CLASSES[ctype](arrays["covariances"], arrays["precisions_cholesky"])
    return SavedModel(GMMParams(arrays["weights"], arrays["means"], cov), metadata)
