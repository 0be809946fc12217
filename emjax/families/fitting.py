"""Fitting a mixture of any component family: one compiled program per (family, shapes), with
restarts vmapped on the generic driver (:func:`emjax.em.run_restarts`), and scoring helpers.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from emjax import _sizes, _xla, em
from emjax import _validation as v
from emjax.families.base import (
    Family,
    MixtureParams,
    init_params,
    make_model,
    params_template,
    weighted_log_prob,
)

Array = jax.Array

__all__ = ["FitResult", "aic", "bic", "check_data", "fit", "n_parameters", "predict",
           "predict_proba", "sample", "score_samples"]

@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class FitResult(em.FitResult):
    """Result of :func:`fit`: :class:`emjax.em.FitResult` (``params`` the best restart's
    :class:`~emjax.families.MixtureParams`, ``log_likelihood`` its (weighted) mean
    log-likelihood per sample) plus the family.

    Attributes:
      family: the family bound to the data (categories, column counts resolved); static.
    """

    family: Family = dataclasses.field(metadata=dict(static=True))


def check_data(X, family: Family, name: str = "X") -> np.ndarray:
    """``X`` as a 2-D float array (float32 kept, else float64), never mutated; NaN allowed only
    where ``family`` marginalises it, infinity never. Raises ``ValueError`` quoting the shape."""
    if not isinstance(family, Family):
        raise ValueError(f"family must be an emjax.families family; got {family!r}")
    try:
        arr = np.asarray(X)
    except Exception as exc:
        raise ValueError(f"{name} could not be read as a numeric array: {exc}") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number)
                                   or np.issubdtype(arr.dtype, np.bool_)):
        raise ValueError(f"{name} must be numeric; got dtype {arr.dtype} with shape {arr.shape}")
    if arr.ndim != 2 or 0 in arr.shape:
        raise ValueError(f"{name} must be a non-empty 2-D array (n_samples, n_features); got "
                         f"shape {arr.shape}")
    arr = arr.astype(np.float32 if arr.dtype == np.float32 else np.float64, copy=False)
    if np.isinf(arr).any():
        raise ValueError(f"{name} of shape {arr.shape} contains infinity")
    if np.isnan(arr).any():
        if not family.allows_missing:
            raise ValueError(f"{name} of shape {arr.shape} has NaN entries, which "
                             f"{type(family).__name__} does not marginalise")
        if np.isnan(arr).all(axis=1).any():
            raise ValueError(f"{name} of shape {arr.shape} has rows with every entry missing")
    return arr


def _fit_program(X, key, w, tol, params_init, max_iter, *, family, n_components, history_size,
                 n_init, sequential=False):
    # max_iter is traced (history_size static): other iteration limits share the program.
    data = family.encode(X)
    if params_init is None:
        keys = jax.random.split(key, n_init)
        params0 = jax.vmap(lambda k: init_params(family, k, data, w, n_components))(keys)
    else:
        params0 = params_init
    e_step, m_step = make_model(family)
    # One after the other (where the tuning says so), else vmapped in shrinking stages: either
    # way finished restarts stop costing work.
    res = em.run_restarts(e_step, m_step, params0, (data, w), tol=tol, max_iter=max_iter,
                          compact=not sequential, sequential=sequential,
                          history_size=history_size)
    return FitResult.extend(em.best_restart(res), family=family)


#: The compiled fit, one per set of XLA options (:func:`emjax._xla.compiler_options`).
_fit_compiled = _xla.JitByOptions(
    _fit_program,
    static_argnames=("family", "n_components", "history_size", "n_init", "sequential"))


def _pads_rows(family: Family) -> bool:
    """Whether a fit of ``family`` may run on rows padded with zero-weight copies: every part is
    built in, whose initialisation and M-step see rows only through their weights (a
    :class:`~emjax.families.product.Custom` family's ``init_fn`` reads ``X`` itself)."""
    from emjax.families.product import Custom, Product

    if isinstance(family, Product):
        return all(_pads_rows(f) for _, f in family.parts)
    return not isinstance(family, Custom)


def _built_in(family: Family) -> bool:
    """Whether every part of ``family`` is one of emjax's own classes (their source is part of
    the disk cache's key; a user's class or a :class:`~emjax.families.product.Custom` family's
    functions are not)."""
    from emjax.families.product import Custom, Product

    if isinstance(family, Product):
        return all(_built_in(f) for _, f in family.parts)
    return type(family).__module__.startswith("emjax.") and not isinstance(family, Custom)


def _as_params(params: MixtureParams, dtype) -> MixtureParams:
    return jax.tree_util.tree_map(
        lambda a: jnp.asarray(a, dtype) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating)
        else jnp.asarray(a), params)


def fit(
    X,
    family: Family,
    n_components: int,
    *,
    key: Array | None = None,
    n_init: int = 1,
    tol: float = 1e-3,
    max_iter: int = 100,
    sample_weight=None,
    params_init: MixtureParams | None = None,
) -> FitResult:
    r"""Fit a mixture of ``n_components`` components of ``family`` by EM, restarts vmapped in
    one compiled program.

    Each restart starts from a k-means++ partition of the family's seeding features (one
    M-step from its responsibilities) unless ``params_init`` is given; EM (seed 003, section
    3) runs until the mean log-likelihood changes by less than ``tol``; the restart with the
    highest log-likelihood is returned.

    Args:
      X: ``(n_samples, n_features)``; NaN marks a missing entry (families independent across
        columns only). float32 is kept; anything else is float64 (needs JAX's x64 mode).
      family: a family from :mod:`emjax.families` (static: equal families share a program).
      n_components: ``K``.
      key: PRNG key (default ``jax.random.key(0)``).
      n_init: restarts (vmapped).
      tol: convergence threshold on the change of the mean log-likelihood.
      max_iter: EM iterations at most.
      sample_weight: optional ``(n_samples,)`` non-negative weights.
      params_init: optional initial :class:`MixtureParams` (a leading restart axis optional;
        then ``n_init`` is its length).

    Returns:
      :class:`FitResult`.

    Raises:
      ValueError: for a bad ``X`` (shape, support of the family, NaN where not allowed), bad
        options, or ``n_components > n_samples``.

    Examples:
      >>> import numpy as np, emjax
      >>> X = np.random.default_rng(0).poisson([[1.0, 8.0]], size=(100, 2)).astype(np.float32)
      >>> res = emjax.families.fit(X, emjax.families.Poisson(), 2)
      >>> res.params.components.rates.shape
      (2, 2)
    """
    Xa = check_data(X, family)
    v.check_x64(Xa.dtype)
    n = Xa.shape[0]
    k = v.check_n_components(n_components, n, Xa.shape)
    tol = v.check_non_negative(tol, "tol")
    max_iter = v.check_positive_int(max_iter, "max_iter")
    n_init = v.check_positive_int(n_init, "n_init")
    w = v.check_sample_weight(sample_weight, n, Xa.dtype)
    bound = family.bind(Xa)
    p0 = None
    if params_init is not None:
        p0 = _as_params(params_init, Xa.dtype)
        if jnp.ndim(p0.weights) == 1:
            p0 = jax.tree_util.tree_map(lambda a: a[None], p0)
        if p0.weights.shape[1:] != (k,):
            raise ValueError(f"params_init has weights of shape {p0.weights.shape}; expected "
                             f"({k},) or (n_init, {k})")
        n_init = p0.weights.shape[0]
        # every leaf as the family's own start would be (a wrong one failed inside the trace)
        want = params_template(bound, k, Xa.dtype)
        got = jax.tree_util.tree_map(lambda a: a[0], p0)
        if jax.tree_util.tree_structure(got) != jax.tree_util.tree_structure(want):
            raise ValueError(f"params_init is not a {type(family).__name__} mixture's "
                             f"parameters: {jax.tree_util.tree_structure(got)}; expected "
                             f"{jax.tree_util.tree_structure(want)}")
        for path, a, b in zip(jax.tree_util.tree_flatten_with_path(want)[0],
                              jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            if a.shape != b.shape:
                raise ValueError(f"params_init{jax.tree_util.keystr(path[0])} has shape "
                                 f"{a.shape} per restart; expected {b.shape}")
    # Rows padded to their size class with zero-weight copies of the first row: data sets of
    # nearby sizes share one program (as emjax.fit).
    n_rows = _sizes.padded_rows(n, Xa.nbytes // n) if _pads_rows(bound) else None
    if n_rows is not None:
        Xa, w = _sizes.pad_rows(Xa, w, n_rows)
    options = _xla.compiler_options("families", Xa.shape[0] * Xa.shape[1] * k)
    static = dict(family=bound, n_components=k, history_size=_sizes.history_class(max_iter),
                  n_init=n_init, sequential=_xla.sequential_restarts("families"))
    args = (Xa, v.as_key(key), w, np.asarray(tol, Xa.dtype), p0, np.int32(max_iter))
    if _built_in(bound):  # its text names all it computes: the disk cache may keep it whole
        res = _fit_compiled.call(options, args, static, "families")
    else:
        res = _fit_compiled[options](*args, **static)
    return res.with_max_iter(max_iter)  # the history past max_iter dropped on the host


@functools.partial(jax.jit, static_argnames=("family",))
def _score_compiled(params, X, *, family):
    wlp = weighted_log_prob(family, params, family.encode(X))
    ll = logsumexp(wlp, axis=1)
    return wlp - ll[:, None], ll


def _score(family: Family, params: MixtureParams, X) -> tuple[np.ndarray, np.ndarray]:
    """``(log responsibilities, log p(x_n))`` as NumPy arrays: one compiled program per size
    class of the rows (padded with copies of the first row, cut on the host)."""
    Xa = check_data(X, family)
    # width, not n_features: a one-hot Categorical's n_features counts its blocks
    if Xa.shape[1] != family.width():
        raise ValueError(f"X has shape {Xa.shape}; the family was fitted to "
                         f"{family.width()} columns")
    # in the fitted family's support (signs, integer codes below its categories): its log_prob
    # would give finite nonsense or treat an unknown category as missing
    family.bind(Xa)
    n = Xa.shape[0]
    n_rows = _sizes.padded_rows(n, Xa.itemsize * Xa.shape[1]) if n else None
    if n_rows is not None and n_rows > n:
        Xa, _ = _sizes.pad_rows(Xa, None, n_rows)
    lr, ll = _score_compiled(_as_params(params, Xa.dtype), Xa, family=family)
    return np.asarray(lr)[:n], np.asarray(ll)[:n]


def score_samples(family: Family, params: MixtureParams, X) -> Array:
    """``log p(x_n)`` under the mixture, ``(n_samples,)`` (``family`` bound, e.g.
    ``FitResult.family``); missing entries are marginalised."""
    return jax.device_put(_score(family, params, X)[1])


def predict_proba(family: Family, params: MixtureParams, X) -> Array:
    """Responsibilities ``(n_samples, n_components)``."""
    return jax.device_put(np.exp(_score(family, params, X)[0]))


def predict(family: Family, params: MixtureParams, X) -> Array:
    """The most responsible component of each row, ``(n_samples,)``."""
    return jax.device_put(np.argmax(_score(family, params, X)[0], axis=1))


def n_parameters(family: Family, n_components: int) -> int:
    """Free parameters of a ``K``-component mixture of the bound ``family``."""
    return n_components - 1 + int(family.n_parameters(n_components))


def bic(family: Family, params: MixtureParams, X) -> float:
    """Bayesian information criterion ``-2 log L + p log n`` (lower is better)."""
    ll = _score(family, params, X)[1]
    k = params.weights.shape[0]
    return float(-2 * np.sum(ll, dtype=np.float64) + n_parameters(family, k)
                 * math.log(ll.shape[0]))


def aic(family: Family, params: MixtureParams, X) -> float:
    """Akaike information criterion ``-2 log L + 2 p`` (lower is better)."""
    ll = _score(family, params, X)[1]
    k = params.weights.shape[0]
    return float(-2 * np.sum(ll, dtype=np.float64) + 2 * n_parameters(family, k))


@functools.partial(jax.jit, static_argnames=("family", "n_samples"))
def _sample_compiled(key, params, *, family, n_samples):
    k1, k2 = jax.random.split(key)
    z = jax.random.categorical(k1, jnp.log(params.weights), shape=(n_samples,))
    return family.sample(k2, params.components, z), z


def sample(key: Array, family: Family, params: MixtureParams, n_samples: int) -> tuple:
    """``(X, labels)``: ``n_samples`` draws from the mixture and their components (one compiled
    program per class of ``n_samples``, as :func:`emjax.gmm.steps.sample`; inside
    ``jit``/``vmap``, exactly ``n_samples``). ``key``: a PRNG key (or, outside a trace, an int
    seed)."""
    n_samples = v.check_positive_int(n_samples, "n_samples")
    if v.is_traced(key, params):
        # the class's draws cut on the host cannot be: the traced draws are the rows asked for
        return _sample_compiled(key, params, family=family, n_samples=n_samples)
    n_class = _sizes.draw_class(n_samples)
    out = _sample_compiled(v.as_key(key), params, family=family, n_samples=n_class)
    return out if n_class == n_samples else _sizes.first_rows(out, n_samples)



