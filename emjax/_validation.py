"""Checks at the public boundary: clear ``ValueError``s quoting shapes, never inside traced code."""

from __future__ import annotations

import numbers

import numpy as np

INIT_METHODS = ("kmeans", "k-means++", "random", "random_from_data")


#: Appended to the NaN error of the Gaussian-mixture entry points (the opt-in that handles it).
MISSING_HINT = ("; to fit data with missing entries (NaN) by marginalising them, pass "
                "missing='marginalize'")
#: The same for a fitted estimator's scores and predictions (no refit needed).
MISSING_HINT_FITTED = ("; to score rows with missing entries (NaN) from their observed ones, "
                       "set missing='marginalize' (set_params; no refit needed)")
#: The same for the functional API (params and rows), whose NaN-aware twins are in emjax.missing.
MISSING_HINT_FUNCTIONAL = ("; to score rows with missing entries (NaN) from their observed "
                           "ones, use emjax.missing.score_samples, predict_proba or predict "
                           "(and emjax.impute to fill them in)")


def as_data(X, name: str = "X", dtype=None, nan_hint: str = "") -> np.ndarray:
    """``X`` as a finite 2-D float array (float32 kept, everything else float64); never mutated.
    ``nan_hint`` is appended to the error for NaN entries. The messages use scikit-learn's
    wording where it says the same thing, plus the shape.
    """
    if _is_sparse(X):
        raise TypeError(f"Sparse data was passed for {name} (shape {getattr(X, 'shape', '?')}), "
                        "but dense data is required. Use '.toarray()' to convert to a dense "
                        "numpy array.")
    try:
        arr = np.asarray(X)
    except Exception as exc:  # ragged nested lists etc.
        raise ValueError(f"{name} could not be read as a numeric array: {exc}") from None
    if arr.dtype == object:  # e.g. a DataFrame of mixed or nullable dtypes
        arr = object_as_float(arr, name)
    if np.iscomplexobj(arr):
        raise ValueError(f"Complex data not supported: {name} must be real; got dtype "
                         f"{arr.dtype} with shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)):
        raise ValueError(f"{name} must be numeric; got dtype {arr.dtype} with shape {arr.shape}")
    if arr.ndim != 2:
        raise ValueError(
            f"Expected 2D array, got {arr.ndim}D array instead: {name} must be a 2-D array of "
            f"shape (n_samples, n_features); got shape {arr.shape}"
            + ("\nReshape your data either using array.reshape(-1, 1) if your data has a single "
               "feature or array.reshape(1, -1) if it contains a single sample."
               if arr.ndim == 1 else "")
        )
    for axis, what in ((0, "sample"), (1, "feature")):
        if arr.shape[axis] == 0:
            raise ValueError(f"Found array with 0 {what}(s) (shape={arr.shape}) while a minimum "
                             f"of 1 is required: {name} must have at least one sample and one "
                             "feature.")
    if dtype is None:
        dtype = np.float32 if arr.dtype == np.float32 else np.float64
    arr = arr.astype(dtype, copy=False)
    bad = ~np.all(np.isfinite(arr), axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        shown = ", ".join(map(str, rows[:10])) + (", ..." if rows.size > 10 else "")
        hint = nan_hint if np.isnan(arr).any() else ""
        raise ValueError(
            f"{name} of shape {arr.shape} contains NaN or infinity in {rows.size} row(s): "
            f"{shown}{hint}"
        )
    return arr


def jax_float(X):
    """The ``dtype`` for :func:`as_data` where ``X`` goes to JAX: None (float32 and float64 kept)
    for a float32 or float64 array; for anything else (a list, integers, booleans) JAX's
    default float, as ``jnp.asarray`` would give it: float64 with x64 mode on, float32 off."""
    import jax.numpy as jnp

    if not isinstance(X, (list, tuple)):
        try:
            dtype = X.dtype if hasattr(X, "dtype") else np.asarray(X).dtype
        except Exception:  # as_data reports what cannot be read
            return None
        if dtype in (np.float32, np.float64):
            return None
    return jnp.result_type(float)


def object_as_float(arr: np.ndarray, name: str = "X") -> np.ndarray:
    """An object array (a DataFrame of mixed or pandas' nullable dtypes) as float64, with
    ``pd.NA`` and ``None`` read as NaN, as scikit-learn reads them; a ``ValueError`` for text
    that is not a number."""
    def is_na(x):
        return x is None or type(x).__name__ == "NAType"

    na = np.frompyfunc(is_na, 1, 1)(arr).astype(bool)
    if na.any():
        arr = np.where(na, np.nan, arr)
    try:
        return arr.astype(np.float64)
    except ValueError as exc:  # (a TypeError, e.g. for a dict, is scikit-learn's error too)
        raise ValueError(f"{name} must be numeric; got dtype object with shape {arr.shape} "
                         f"({exc})") from None


def _is_sparse(X) -> bool:
    """A SciPy sparse matrix or array, recognised without importing SciPy."""
    return type(X).__module__.startswith("scipy.sparse") and hasattr(X, "toarray")


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def check_non_negative(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) \
            or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
    return float(value)


def check_covariance_type(covariance_type) -> str:
    from emjax.gmm.covariance import COVARIANCE_TYPES  # lazily: other models need no GMM

    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(
            f"covariance_type must be one of {COVARIANCE_TYPES}; got {covariance_type!r}"
        )
    return covariance_type


def check_init_params(init_params) -> str:
    if init_params not in INIT_METHODS:
        raise ValueError(f"init_params must be one of {INIT_METHODS}; got {init_params!r}")
    return init_params


def check_n_components(n_components, n_samples: int, shape) -> int:
    k = check_positive_int(n_components, "n_components")
    if k > n_samples:
        raise ValueError(
            f"n_components={k} must be <= n_samples={n_samples} (X has shape {tuple(shape)})"
        )
    return k


def check_sample_weight(sample_weight, n_samples: int, dtype) -> np.ndarray | None:
    if sample_weight is None:
        return None
    w = np.asarray(sample_weight, dtype=dtype)
    if w.shape != (n_samples,):
        raise ValueError(f"sample_weight must have shape ({n_samples},); got {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or not np.sum(w) > 0:
        raise ValueError("sample_weight must be finite, non-negative and not all zero")
    return w


def check_weights(weights, n_components: int, dtype, name: str = "weights_init") -> np.ndarray:
    w = np.asarray(weights, dtype=dtype)
    if w.shape != (n_components,):
        raise ValueError(f"{name} must have shape ({n_components},); got {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or np.any(w > 1):
        raise ValueError(f"{name} must be in [0, 1]; got range [{w.min()}, {w.max()}]")
    if not np.allclose(np.sum(w), 1.0, rtol=0, atol=1e-5 if dtype == np.float32 else 1e-8):
        raise ValueError(f"{name} must sum to 1; got sum {float(np.sum(w))!r}")
    return w


def check_means(means, n_components: int, n_features: int, dtype,
                name: str = "means_init") -> np.ndarray:
    m = np.asarray(means, dtype=dtype)
    if m.shape != (n_components, n_features):
        raise ValueError(
            f"{name} must have shape ({n_components}, {n_features}); got {m.shape}"
        )
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{name} contains NaN or infinity")
    return m


def check_spd(mats, covariance_type: str, n_components: int, n_features: int, dtype,
              name: str = "precisions_init") -> np.ndarray:
    """Covariance- or precision-shaped array for ``covariance_type``, checked positive definite."""
    from emjax.gmm.covariance import covariance_shape

    a = np.asarray(mats, dtype=dtype)
    shape = covariance_shape(covariance_type, n_components, n_features)
    if a.shape != shape:
        raise ValueError(f"{name} for covariance_type={covariance_type!r} must have shape "
                         f"{shape}; got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinity")
    if covariance_type in ("full", "tied"):
        batch = a.reshape((-1, n_features, n_features)).astype(np.float64)
        if not np.allclose(batch, np.swapaxes(batch, -1, -2), rtol=1e-5, atol=1e-8):
            raise ValueError(f"{name} must be symmetric")
        try:
            np.linalg.cholesky(batch)
        except np.linalg.LinAlgError:
            raise ValueError(f"{name} must be positive definite") from None
    elif np.any(a <= 0):
        raise ValueError(f"{name} must be positive")
    return a


def check_per_unit(value, n_units: int, name: str, dtype=np.float64) -> np.ndarray:
    """``value``, a scalar or one finite value per unit, as ``(n_units,)`` (a read-only
    broadcast); a ``ValueError`` quoting the shapes otherwise."""
    arr = np.asarray(value, dtype)
    if arr.shape not in ((), (n_units,)):
        raise ValueError(f"{name} must be a scalar or one value per unit, shape ({n_units},); "
                         f"got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite; got {arr}")
    return np.broadcast_to(arr, (n_units,))


def check_em_options(covariance_type, init_params, tol, reg_covar, max_iter, n_init, *,
                     min_iter: int = 1) -> tuple:
    """The hyper-parameters every EM fitting entry point shares, checked and normalised:
    ``(covariance_type, init_params, tol, reg_covar, max_iter, n_init)``; ``max_iter`` at least
    ``min_iter`` (0 where initialising only is meaningful)."""
    return (
        check_covariance_type(covariance_type),
        check_init_params(init_params),
        check_non_negative(tol, "tol"),
        check_non_negative(reg_covar, "reg_covar"),
        check_positive_int(max_iter, "max_iter", minimum=min_iter),
        check_positive_int(n_init, "n_init"),
    )


def check_x64(dtype, name: str = "X", other: str = "pass float32 data, or use "
              "emjax.GaussianMixture (which does this for you)") -> None:
    """float64 data needs JAX's x64 mode; say how to get it rather than silently truncating
    (``other``: the remedies besides turning it on)."""
    import jax

    if np.dtype(dtype) == np.float64 and not jax.config.jax_enable_x64:
        raise ValueError(
            f"{name} is float64 but JAX's x64 mode is off: call "
            "jax.config.update('jax_enable_x64', True), wrap the call in "
            f"`with jax.enable_x64(True):`, or {other}"
        )


#: Integer seeds are those NumPy's ``RandomState`` and scikit-learn accept.
MAX_SEED = 2**32


def as_seed(key, name: str = "key", default: int | None = 0):
    """:func:`as_key`'s seed: an int in ``[0, 2**32)`` for ``None``, an int or a NumPy
    ``RandomState``/``Generator``; a key (typed, raw, or raw key data as a NumPy ``uint32``
    array of shape ``(2,)``) is returned as it is."""
    import jax
    import jax.numpy as jnp

    if key is None:
        return int(np.random.default_rng().integers(0, 2**31 - 1)) if default is None \
            else default
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        seed = int(key)
        if not 0 <= seed < MAX_SEED:
            # Outside it, jax.random.key overflows or (x64 off) folds the seed onto another.
            raise ValueError(f"an integer seed (random_state, key, --seed) must be in "
                             f"[0, 2**32); got {seed}")
        return seed
    if isinstance(key, np.random.RandomState):
        return int(key.randint(0, 2**31 - 1))
    if isinstance(key, np.random.Generator):
        return int(key.integers(0, 2**31 - 1))
    if isinstance(key, (jax.Array, np.ndarray)):
        is_typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
        if (is_typed and key.shape == ()) or (key.dtype == jnp.uint32 and key.shape == (2,)):
            return key
    raise ValueError(
        f"{name} must be a single JAX PRNG key (jax.random.key(seed)), an int seed, None or "
        f"a NumPy RandomState/Generator; got {type(key).__name__}"
        + (f" of shape {key.shape} and dtype {key.dtype}" if hasattr(key, "shape") else ""))


def as_key(key, name: str = "key", default: int | None = 0):
    """``key`` as one JAX PRNG key: ``None`` (``jax.random.key(default)``, or a fresh random seed
    when ``default`` is None, as scikit-learn's ``random_state=None``), an int seed in
    ``[0, 2**32)``, a NumPy ``RandomState``/``Generator`` (a seed drawn from it), or a single
    typed (``jax.random.key``) or raw (``jax.random.PRNGKey``) key."""
    import jax

    seed = as_seed(key, name, default)
    return jax.random.key(seed) if isinstance(seed, int) else seed


def as_key_data(key, name: str = "key", default: int | None = 0):
    """:func:`as_key`, except that a seed of the default threefry generator gives its raw key
    data as a NumPy array, ``[0, seed]`` (what ``jax.random.key_data(jax.random.key(seed))``
    holds): a compiled fit draws the same numbers from it, and no key is built by a program of
    its own (compiled, or loaded, in a new process). A concrete typed key of that generator
    gives its raw data too, so that a key and an int seed run the same compiled program."""
    import jax
    import jax.numpy as jnp

    seed = as_seed(key, name, default)
    threefry = jax.config.jax_default_prng_impl == "threefry2x32"
    if isinstance(seed, int):
        return np.array([0, seed], np.uint32) if threefry else jax.random.key(seed)
    if (threefry and not isinstance(seed, jax.core.Tracer)
            and jnp.issubdtype(seed.dtype, jax.dtypes.prng_key)
            and str(jax.random.key_impl(seed)) == "threefry2x32"):
        return np.asarray(jax.random.key_data(seed))
    return seed


def is_traced(*trees) -> bool:
    """Whether any leaf of ``trees`` is a JAX tracer (the call is inside ``jit``/``vmap``/...)."""
    import jax

    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(trees))


def check_model_x64(params, what: str = "the model") -> None:
    """A float64 model needs JAX's x64 mode: say how to get it rather than computing in float32."""
    import jax

    leaves = jax.tree_util.tree_leaves(params)
    if not jax.config.jax_enable_x64 and any(np.dtype(a.dtype) == np.float64 for a in leaves):
        raise ValueError(
            f"{what} is float64 but JAX's x64 mode is off, so it would be evaluated in float32: "
            "call jax.config.update('jax_enable_x64', True), wrap the call in "
            "`with jax.enable_x64(True):`, or cast the model to float32 first"
        )


def check_params(params) -> tuple:
    """``(n_components, n_features)`` of a concrete :class:`~emjax.gmm.GMMParams`, its shapes
    checked against each other."""
    from emjax.gmm.covariance import COVARIANCE_CLASSES, covariance_shape

    if not (hasattr(params, "weights") and hasattr(params, "means")
            and type(getattr(params, "covariance", None)) in COVARIANCE_CLASSES.values()):
        raise ValueError(f"params must be emjax.GMMParams; got {type(params).__name__}")
    means_shape = np.shape(params.means)
    if len(means_shape) != 2:
        raise ValueError(f"params.means must be (n_components, n_features); got {means_shape}")
    k, d = means_shape
    ctype = params.covariance_type
    expected = covariance_shape(ctype, k, d)
    for name, a in (("weights", params.weights), ("covariances", params.covariance.covariances),
                    ("precisions_cholesky", params.covariance.precisions_cholesky)):
        shape = (k,) if name == "weights" else expected
        if np.shape(a) != shape:
            raise ValueError(f"params.{name} has shape {np.shape(a)}; a {ctype!r} mixture with "
                             f"means {means_shape} needs {shape}")
    return k, d


def check_model_data(params, X, name: str = "X", nan_hint: str = MISSING_HINT_FUNCTIONAL):
    """``X`` checked against the mixture ``params`` when both are concrete (the functional API).

    Inside ``jit``/``vmap``/``grad`` (any tracer among them) nothing is checked and ``X`` is
    returned as given: traced code cannot raise. Otherwise: ``params`` consistent, a float64
    model only with x64 on, ``X`` a finite real 2-D array with the model's number of features.
    Returns ``X`` (a NumPy array unless it was a JAX array). ``nan_hint``: as in
    :func:`as_data`.
    """
    import jax

    if is_traced(params, X):
        return X
    _, d = check_params(params)
    check_model_x64(params)
    Xa = as_data(X, name, nan_hint=nan_hint)
    if Xa.shape[1] != d:
        raise ValueError(f"{name} has {Xa.shape[1]} features (shape {Xa.shape}) but the model "
                         f"has {d} (means {tuple(np.shape(params.means))})")
    return X if isinstance(X, jax.Array) else Xa


#: ``reg_covar`` above this fraction of a feature's variance dominates that feature's
#: covariances (the ridge is not small any more): clusters can merge without any error.
REG_COVAR_MAX_FRACTION = 0.01


def feature_variances(X: np.ndarray, block_rows: int = 65536) -> np.ndarray:
    """Per-feature variance of ``X`` (float64, NaN ignored), in row blocks about the first
    finite row: no temporary the size of ``X`` (``np.var`` would make one)."""
    n, d = X.shape
    finite_rows = np.flatnonzero(np.all(np.isfinite(X[: min(n, block_rows)]), axis=1))
    ref = X[finite_rows[0]].astype(np.float64) if finite_rows.size else np.zeros(d)
    count, s1, s2 = np.zeros(d), np.zeros(d), np.zeros(d)
    for start in range(0, n, block_rows):
        x = X[start:start + block_rows].astype(np.float64) - ref
        ok = np.isfinite(x)
        x = np.where(ok, x, 0.0)
        count += ok.sum(0)
        s1 += x.sum(0)
        s2 += (x * x).sum(0)
    mean = s1 / np.maximum(count, 1)
    return np.maximum(s2 / np.maximum(count, 1) - mean * mean, 0.0)


def reg_covar_problem(X: np.ndarray, reg_covar: float, name: str = "reg_covar") -> str | None:
    """A message if ``reg_covar`` exceeds :data:`REG_COVAR_MAX_FRACTION` of the smallest
    non-zero feature variance of ``X`` (constant features are what the ridge is for), else None.
    """
    var = feature_variances(X)
    nonzero = np.flatnonzero(var > 0)
    if reg_covar <= 0 or nonzero.size == 0:
        return None
    j = nonzero[np.argmin(var[nonzero])]
    if reg_covar <= REG_COVAR_MAX_FRACTION * var[j]:
        return None
    return (f"{name}={reg_covar:g} is more than {REG_COVAR_MAX_FRACTION:.0%} of the smallest "
            f"feature variance of the data ({var[j]:.3g}, feature {j}), so it dominates the "
            f"covariances and can merge clusters: standardise the features "
            f"((X - mean) / std) or lower {name}")
