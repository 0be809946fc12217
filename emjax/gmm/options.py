"""The options of every Gaussian-mixture fit, checked once at the public boundary.

:func:`check_fit` validates and normalises the data, the hyper-parameters (a frozen, hashable
:class:`FitOptions`, static in the compiled programs), the sample weights, the user-given initial
values (:class:`InitialValues`) and the PRNG key for :func:`emjax.fit`, the missing-data,
generalised-EM, grid, distributed and streaming fits alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from emjax import _validation as v
from emjax.gmm import covariance as cov_lib
from emjax.gmm.steps import GMMParams

Array = jax.Array


class FitOptions(NamedTuple):
    """Checked hyper-parameters of a GMM fit (hashable: a static argument of compiled fits).

    Attributes:
      n_components: ``K``.
      covariance_type: ``"full"``, ``"tied"``, ``"diag"`` or ``"spherical"``.
      init_params: the initialisation method (``"kmeans"``, ``"k-means++"``, ...).
      reg_covar: non-negative ridge on the covariance diagonals.
      max_iter: EM iterations at most.
      n_init: restarts.
      n_lloyd: Lloyd steps after k-means++.
    """

    n_components: int
    covariance_type: str
    init_params: str
    reg_covar: float
    max_iter: int
    n_init: int
    n_lloyd: int


class InitialValues(NamedTuple):
    """User-given initial values in the data's dtype (a pytree; any may be None).

    Attributes:
      weights: ``(n_components,)`` or None.
      means: ``(n_components, n_features)`` or None.
      covariance: a covariance pytree (:mod:`emjax.gmm.covariance`) or None.
    """

    weights: Any = None
    means: Any = None
    covariance: Any = None

    @property
    def complete(self) -> bool:
        """All three are given: no initialisation needs computing."""
        return all(a is not None for a in self)

    @property
    def given(self) -> bool:
        """At least one is given."""
        return any(a is not None for a in self)

    def params(self) -> GMMParams | None:
        """The complete start as :class:`GMMParams` (None unless :attr:`complete`)."""
        return GMMParams(*self) if self.complete else None


class CheckedFit(NamedTuple):
    """What :func:`check_fit` returns.

    Attributes:
      X: ``(n_samples, n_features)`` the checked data (a NumPy array; a JAX array when traced).
      sample_weight: ``(n_samples,)`` or None.
      key: one PRNG key.
      tol: the convergence threshold (a float; passed traced to the programs).
      options: :class:`FitOptions`.
      initial: :class:`InitialValues`.
    """

    X: Any
    sample_weight: Any
    key: Array
    tol: float
    options: FitOptions
    initial: InitialValues


def check_options(n_components, shape=None, *, covariance_type="full", init_params="kmeans",
                  tol=1e-3, reg_covar=1e-6, max_iter=100, n_init=1, n_lloyd=10,
                  min_iter: int = 1) -> tuple[float, FitOptions]:
    """``(tol, FitOptions)`` checked; ``n_components <= n_samples`` when the data's ``shape`` is
    known; ``max_iter >= min_iter`` (0 where initialising only is meaningful)."""
    if shape is None:
        k = v.check_positive_int(n_components, "n_components")
    else:
        k = v.check_n_components(n_components, shape[0], shape)
    covariance_type, init_params, tol, reg_covar, max_iter, n_init = v.check_em_options(
        covariance_type, init_params, tol, reg_covar, max_iter, n_init, min_iter=min_iter)
    n_lloyd = v.check_positive_int(n_lloyd, "n_lloyd", minimum=0)
    return tol, FitOptions(k, covariance_type, init_params, reg_covar, max_iter, n_init, n_lloyd)


def upper_cholesky(precisions: np.ndarray) -> np.ndarray:
    """Upper-triangular ``U`` with ``precisions = U U^T`` (scikit-learn's orientation of
    ``precisions_cholesky_``) for a batch ``(..., d, d)`` of SPD matrices.

    With ``J`` the order-reversing permutation, ``J P J = L L^T`` (``L`` lower) gives
    ``U = J L J``: no inverse is formed, so the factor is as accurate as the Cholesky itself.
    Works on NumPy and (traced) JAX arrays alike.
    """
    xp = np if isinstance(precisions, np.ndarray) else jnp
    flipped = xp.linalg.cholesky(precisions[..., ::-1, ::-1])
    return flipped[..., ::-1, ::-1] if xp is jnp else np.ascontiguousarray(
        flipped[..., ::-1, ::-1])


def check_initial_values(options: FitOptions, n_features: int, dtype, *, weights_init=None,
                         means_init=None, precisions_init=None,
                         params_init: GMMParams | None = None,
                         traced: bool = False) -> InitialValues:
    """The user-given initial values, checked against ``options`` and ``n_features`` and cast
    to ``dtype``. ``params_init`` (a complete :class:`GMMParams`) replaces the other three;
    ``precisions_init`` becomes a covariance through its upper Cholesky factor. ``traced``:
    inside a trace only the shapes are checked (values cannot be)."""
    k, d, ctype = options.n_components, n_features, options.covariance_type
    covariance = None
    if params_init is not None:
        if params_init.covariance_type != ctype:
            raise ValueError(f"params_init has covariance type {params_init.covariance_type!r} "
                             f"but covariance_type={ctype!r}")
        weights_init, means_init = params_init.weights, params_init.means
        covariance = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype),
                                            params_init.covariance)
        if not traced:
            v.check_spd(np.asarray(covariance.covariances), ctype, k, d, dtype,
                        name="params_init covariances")
    elif precisions_init is not None:
        if traced:
            p = jnp.asarray(precisions_init, dtype)
            shape = cov_lib.covariance_shape(ctype, k, d)
            if p.shape != shape:
                raise ValueError(f"precisions_init for covariance_type={ctype!r} must have "
                                 f"shape {shape}; got {p.shape}")
        else:
            p = v.check_spd(precisions_init, ctype, k, d, dtype).astype(np.float64)
        pc = upper_cholesky(p) if ctype in ("full", "tied") else (jnp if traced else np).sqrt(p)
        covariance = cov_lib.from_precisions_cholesky(ctype, jnp.asarray(pc, dtype))
    if traced:
        for name, a, want in (("weights_init", weights_init, (k,)),
                              ("means_init", means_init, (k, d))):
            if a is not None and jnp.shape(a) != want:
                raise ValueError(f"{name} must have shape {want}; got {jnp.shape(a)}")
    else:
        if weights_init is not None:
            weights_init = v.check_weights(weights_init, k, dtype)
        if means_init is not None:
            means_init = v.check_means(means_init, k, d, dtype)
    return InitialValues(None if weights_init is None else jnp.asarray(weights_init, dtype),
                         None if means_init is None else jnp.asarray(means_init, dtype),
                         covariance)


def check_fit(X, n_components, *, key=None, covariance_type="full", tol=1e-3, reg_covar=1e-6,
              max_iter=100, n_init=1, init_params="kmeans", n_lloyd=10, sample_weight=None,
              weights_init=None, means_init=None, precisions_init=None,
              params_init: GMMParams | None = None, min_iter: int = 1,
              read: Callable = v.as_data, traced: bool = False) -> CheckedFit:
    """Everything a GMM fit takes, checked and normalised once (``ValueError`` quoting shapes).

    Args:
      X: the data; ``read(X)`` checks it (default :func:`emjax._validation.as_data`; the
        missing-data fit passes its NaN-aware reader). ``n_components`` may be the largest of a
        grid.
      key: None (``jax.random.key(0)``), an int seed or a PRNG key
        (:func:`emjax._validation.as_key`).
      covariance_type, tol, reg_covar, max_iter, n_init, init_params, n_lloyd, sample_weight,
        weights_init, means_init, precisions_init, params_init: as in :func:`emjax.fit`.
      min_iter: the smallest ``max_iter`` accepted.
      traced: inside ``jit``/``vmap``: ``X`` is a JAX array and only shapes are checked.

    Returns:
      :class:`CheckedFit`.
    """
    if traced:
        X = jnp.asarray(X)
        if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
            raise ValueError(f"X must be a non-empty 2-D array of shape (n_samples, n_features); "
                             f"got shape {X.shape}")
        if not jnp.issubdtype(X.dtype, jnp.floating):
            X = X.astype(jnp.result_type(float))
    else:
        # a list or integers in JAX's default float: float64 data alone needs x64 mode
        X = read(X, dtype=v.jax_float(X))
        v.check_x64(X.dtype)
    n, d = X.shape
    dtype = X.dtype
    tol, options = check_options(
        n_components, X.shape, covariance_type=covariance_type, init_params=init_params,
        tol=tol, reg_covar=reg_covar, max_iter=max_iter, n_init=n_init, n_lloyd=n_lloyd,
        min_iter=min_iter)
    if traced:
        w = None if sample_weight is None else jnp.asarray(sample_weight, dtype)
        if w is not None and w.shape != (n,):
            raise ValueError(f"sample_weight must have shape ({n},); got {w.shape}")
    else:
        w = v.check_sample_weight(sample_weight, n, dtype)
    initial = check_initial_values(options, d, dtype, weights_init=weights_init,
                                   means_init=means_init, precisions_init=precisions_init,
                                   params_init=params_init, traced=traced)
    return CheckedFit(X, w, v.as_key(key), tol, options, initial)
