"""Saving and loading fitted mixtures of component families: one ``.npz`` file (the parameter
leaves exactly as fitted, in tree order) with JSON metadata describing the bound family.

Written atomically (a temporary file in the same directory, then ``os.replace``), read with
``numpy.load(allow_pickle=False)``. :class:`~emjax.families.Custom` families hold Python
functions and cannot be saved.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from emjax._files import atomic_write, npz_path, read_npz_with_metadata
from emjax._version import __version__
from emjax.families import expfam, gaussian, product
from emjax.families.base import Family, MixtureParams, params_template

FORMAT = "emjax.families"
FORMAT_VERSION = 1

_CLASSES = {c.__name__: c for c in (expfam.Bernoulli, expfam.Categorical, expfam.Poisson,
                                    expfam.Exponential, expfam.Gamma, gaussian.Gaussian,
                                    gaussian.StudentT, product.Product)}


class SavedMixture(NamedTuple):
    """What :func:`load` returns: the bound family, the parameters (NumPy leaves) and the
    metadata (``config`` holds what the caller passed to :func:`save`)."""

    family: Family
    params: MixtureParams
    metadata: dict


def family_to_json(family: Family) -> dict:
    """A JSON-able description of a (bound) family; ``ValueError`` for :class:`Custom`."""
    if isinstance(family, product.Product):
        return {"type": "Product", "n_features": family.n_features,
                "parts": [[name, family_to_json(f)] for name, f in family.parts]}
    name = type(family).__name__
    if name not in _CLASSES:
        raise ValueError(f"cannot save a {name} family (only the built-in families: "
                         f"{sorted(_CLASSES)})")
    spec = {"type": name}
    for f in dataclasses.fields(family):
        value = getattr(family, f.name)
        spec[f.name] = list(value) if isinstance(value, tuple) else value
    return spec


def family_from_json(spec: dict) -> Family:
    """Inverse of :func:`family_to_json`."""
    kind = spec.get("type")
    if kind not in _CLASSES:
        raise ValueError(f"unknown family type {kind!r}")
    if kind == "Product":
        return product.Product(tuple((n, family_from_json(s)) for n, s in spec["parts"]),
                               n_features=spec.get("n_features"))
    fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in spec.items() if k != "type"}
    return _CLASSES[kind](**fields)


def save(path: str, family: Family, params: MixtureParams, *, config: dict | None = None) -> str:
    """Write a fitted mixture (``family`` bound, e.g. ``FitResult.family``) to ``path``
    (``.npz`` appended if missing), atomically. Returns the path written."""
    from emjax.gmm.io import _jsonable

    leaves = [np.asarray(a) for a in jax.tree_util.tree_leaves(params)]
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "emjax_version": __version__,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "family": family_to_json(family),
        "n_components": int(np.shape(params.weights)[0]),
        "dtype": str(leaves[0].dtype),
        "n_leaves": len(leaves),
        "config": _jsonable(config or {}),
    }
    path = npz_path(path)
    arrays = {f"leaf_{i:03d}": a for i, a in enumerate(leaves)}
    with atomic_write(path, "wb") as f:
        np.savez(f, metadata=np.asarray(json.dumps(metadata, indent=1)), **arrays)
    return path


def load(path: str) -> SavedMixture:
    """Read a mixture written by :func:`save`.

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      ValueError: if it is not an emjax families file or its arrays do not match the family.
    """
    contents, metadata = read_npz_with_metadata(path, "families model", FORMAT, FORMAT_VERSION)
    family = family_from_json(metadata["family"])
    k = metadata["n_components"]
    template = params_template(family, k, jnp.dtype(metadata["dtype"]))
    shapes, treedef = jax.tree_util.tree_flatten(template)
    leaves = [contents.get(f"leaf_{i:03d}") for i in range(len(shapes))]
    bad = [i for i, (a, s) in enumerate(zip(leaves, shapes)) if a is None or a.shape != s.shape]
    if bad or len(shapes) != metadata.get("n_leaves"):
        raise ValueError(f"{path}: arrays do not match a {k}-component "
                         f"{metadata['family']['type']} mixture (leaves {bad})")
    return SavedMixture(family, jax.tree_util.tree_unflatten(treedef, leaves), metadata)
