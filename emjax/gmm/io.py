"""Saving and loading fitted Gaussian mixtures: one portable ``.npz`` file with JSON metadata.

The file holds the arrays ``weights``, ``means``, ``covariances`` and ``precisions_cholesky``
exactly as fitted (dtype and bits), plus ``metadata``: a JSON string with the format name and
version, the emjax version, the covariance type, shapes, dtype and the fitting configuration.
It is read with ``numpy.load(path, allow_pickle=False)``, so any NumPy can open it.
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any, NamedTuple

import numpy as np

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
    missing). Returns the path written."""
    from emjax import __version__

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
    if not str(path).endswith(".npz"):
        path = f"{path}.npz"
    np.savez(path, metadata=np.asarray(json.dumps(metadata, indent=1)), **arrays)
    return str(path)


def load(path: str) -> SavedModel:
    """Read a model written by :func:`save`.

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      ValueError: if it is not an emjax model file or its arrays do not match the metadata.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such model file: {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            contents = {name: f[name] for name in f.files}
    except (OSError, EOFError, ValueError) as exc:  # not an .npz, truncated, pickled
        raise ValueError(f"{path} is not an emjax model file ({exc})") from None
    if not isinstance(contents, dict) or "metadata" not in contents \
            or not set(_ARRAYS) <= set(contents):
        raise ValueError(f"{path} is not an emjax model file (it has arrays "
                         f"{sorted(contents)})")
    try:
        metadata = json.loads(str(contents["metadata"][()]))
    except ValueError:
        raise ValueError(f"{path} is not an emjax model file (unreadable metadata)") from None
    arrays = {name: contents[name] for name in _ARRAYS}
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not an emjax model file (format {metadata.get('format')!r})")
    if metadata.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path} has format version {metadata['format_version']}; this emjax "
                         f"reads up to {FORMAT_VERSION}")
    ctype = metadata["covariance_type"]
    k, d = arrays["means"].shape
    expected = cov_lib.covariance_shape(ctype, k, d)
    if arrays["covariances"].shape != expected or arrays["weights"].shape != (k,):
        raise ValueError(f"{path}: arrays do not match a {ctype!r} mixture of {k} components in "
                         f"{d} dimensions (covariances {arrays['covariances'].shape})")
    cov = cov_lib.COVARIANCE_CLASSES[ctype](arrays["covariances"], arrays["precisions_cholesky"])
    return SavedModel(GMMParams(arrays["weights"], arrays["means"], cov), metadata)
