"""``emjax.GaussianMixture``: scikit-learn's estimator API over :func:`emjax.fitting.fit`.

With scikit-learn importable it is a scikit-learn estimator (``DensityMixin`` + ``BaseEstimator``,
as ``sklearn.mixture.GaussianMixture``); without it a plain base gives the same API.
"""

from __future__ import annotations

import contextlib
import inspect
import numbers
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from emjax import _sizes, em
from emjax import _validation as v
from emjax.gmm import fitting, steps
from emjax.gmm import missing as missing_lib
from emjax.gmm.covariance import COVARIANCE_TYPES

try:  # scikit-learn is optional: its base classes and exceptions when it is there
    from sklearn.base import BaseEstimator as _SkBaseEstimator
    from sklearn.base import DensityMixin as _SkDensityMixin
    from sklearn.exceptions import ConvergenceWarning as _SkConvergenceWarning
    from sklearn.exceptions import NotFittedError as _SkNotFittedError
except ImportError:
    HAVE_SKLEARN = False
else:
    HAVE_SKLEARN = True


class _ParamsBase:
    """What scikit-learn's ``BaseEstimator`` gives an estimator, for when it is not installed:
    ``get_params``/``set_params`` over the constructor's arguments (so that
    ``type(est)(**est.get_params())`` is a clone) and a repr of the non-default ones."""

    @classmethod
    def _get_param_names(cls):
        sig = inspect.signature(cls.__init__)
        return sorted(p.name for p in sig.parameters.values()
                      if p.name != "self" and p.kind != p.VAR_KEYWORD)

    def get_params(self, deep=True):
        out = {}
        for name in self._get_param_names():
            value = getattr(self, name)
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                out.update((f"{name}__{k}", val) for k, val in value.get_params().items())
            out[name] = value
        return out

    def set_params(self, **params):
        valid = self._get_param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"Invalid parameter {name!r} for estimator {self}. "
                                 f"Valid parameters are: {valid!r}.")
            setattr(self, name, value)
        return self

    def __repr__(self):
        defaults = {
            n: p.default for n, p in inspect.signature(type(self).__init__).parameters.items()
        }
        changed = []
        for name in self._get_param_names():
            value, default = getattr(self, name), defaults[name]
            if isinstance(value, np.ndarray) or isinstance(default, np.ndarray):
                if value is not default:
                    changed.append(f"{name}=array(shape={np.shape(value)})")
            elif value != default:
                changed.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(changed)})"


if HAVE_SKLEARN:
    _ESTIMATOR_BASES = (_SkDensityMixin, _SkBaseEstimator)
    _NOT_FITTED_BASES = (_SkNotFittedError,)
    _CONVERGENCE_BASES = (_SkConvergenceWarning,)
else:
    _ESTIMATOR_BASES = (_ParamsBase,)
    _NOT_FITTED_BASES = (ValueError, AttributeError)  # as scikit-learn's
    _CONVERGENCE_BASES = (UserWarning,)


class NotFittedError(*_NOT_FITTED_BASES):
    """Raised when a method needing a fitted model is called before ``fit``.

    A ``ValueError`` and an ``AttributeError``; a subclass of
    ``sklearn.exceptions.NotFittedError`` when scikit-learn is installed.
    """


class ConvergenceWarning(*_CONVERGENCE_BASES):
    """The best restart did not converge within ``max_iter`` iterations.

    A ``UserWarning``; a subclass of ``sklearn.exceptions.ConvergenceWarning`` when
    scikit-learn is installed.
    """


# Jitted once per input shape: one small program each instead of op-by-op dispatch.
_score_samples = jax.jit(steps.score_samples)
_predict = jax.jit(steps.predict)
_predict_proba = jax.jit(steps.predict_proba)


def _precision_ctx(dtype):
    return jax.enable_x64(True) if np.dtype(dtype) == np.float64 else contextlib.nullcontext()


# The hyper-parameters checked at fit: (test, scikit-learn's description of what is allowed).
def _is_int(x, lo):
    return isinstance(x, numbers.Integral) and not isinstance(x, bool) and x >= lo


def _is_real(x, lo):
    return (isinstance(x, numbers.Real) and not isinstance(x, bool) and np.isfinite(x)
            and x >= lo)


_CONSTRAINTS = {
    "n_components": (lambda x: _is_int(x, 1), "an int in the range [1, inf)"),
    "covariance_type": (lambda x: isinstance(x, str) and x in COVARIANCE_TYPES,
                        f"a str among {{{str(sorted(COVARIANCE_TYPES))[1:-1]}}}"),
    "tol": (lambda x: _is_real(x, 0), "a float in the range [0.0, inf)"),
    "reg_covar": (lambda x: _is_real(x, 0), "a float in the range [0.0, inf)"),
    "max_iter": (lambda x: _is_int(x, 0), "an int in the range [0, inf)"),
    "n_init": (lambda x: _is_int(x, 1), "an int in the range [1, inf)"),
    "init_params": (lambda x: isinstance(x, str) and x in v.INIT_METHODS,
                    f"a str among {{{str(sorted(v.INIT_METHODS))[1:-1]}}}"),
    "warm_start": (lambda x: isinstance(x, (bool, np.bool_)), "an instance of 'bool'"),
    "verbose": (lambda x: _is_int(x, 0) or isinstance(x, (bool, np.bool_)),
                "an int in the range [0, inf) or a bool"),
    "verbose_interval": (lambda x: _is_int(x, 1), "an int in the range [1, inf)"),
}


def _feature_names(X):
    """``X``'s column names as an object array if they are all strings (a DataFrame's), else
    None; scikit-learn's rule, without needing scikit-learn or pandas."""
    columns = getattr(X, "columns", None)
    if columns is None or not hasattr(X, "__array__"):
        return None
    names = np.asarray(list(columns), dtype=object)
    types = sorted({type(n).__name__ for n in names})
    if len(types) > 1 and "str" in types:
        raise TypeError(
            "Feature names are only supported if all input features have string names, but "
            f"your input has {types} as feature name / column name types. If you want feature "
            "names to be stored and validated, you must convert them all to strings, by using "
            "X.columns = X.columns.astype(str) for example. Otherwise you can remove feature / "
            "column names from your input data, or convert them all to a non-string data type.")
    return names if types == ["str"] else None


class GaussianMixture(*_ESTIMATOR_BASES):
    """Gaussian mixture fitted by EM in JAX, with scikit-learn's API.

    Constructor arguments and fitted attributes follow ``sklearn.mixture.GaussianMixture``, and
    with scikit-learn installed this is a scikit-learn estimator (``clone``, ``Pipeline``,
    ``GridSearchCV``, ``cross_val_score`` and ``check_estimator`` work; :class:`NotFittedError`
    and :class:`ConvergenceWarning` subclass scikit-learn's). scikit-learn is not needed: without
    it, ``get_params``/``set_params`` work the same. Hyper-parameters are validated at ``fit``
    (``set_params`` only stores them). All ``n_init`` restarts run at once (``jax.vmap`` in one
    compiled program). It computes in the input's precision: float64 data is fitted in float64
    whatever JAX's global default, float32 in float32.

    ``max_iter=0`` only initialises (``n_iter_ == 0``, no :class:`ConvergenceWarning`). With
    ``warm_start=True`` each ``fit`` continues from the fitted parameters (one restart) and the
    convergence test continues across calls, so repeated ``fit`` calls with a small ``max_iter``
    converge as one long fit would. ``fit_predict(X)`` equals ``fit(X).predict(X)``.

    Where emjax differs from scikit-learn, deliberately:

    - A covariance that is not positive definite in the working precision is factorised with
      a jitter on its diagonal and a ``UserWarning`` is issued (scikit-learn raises): a fit of
      many restarts in one compiled program cannot raise midway, and one degenerate component
      should not discard the others. ``status_`` records it (``em.STATUS_REGULARISED``).
    - A component that empties is re-seeded inside the loop (``status_`` bit
      ``em.STATUS_RESEEDED``) instead of being left to collapse.
    - ``lower_bound_`` is the mean log-likelihood *at the returned parameters*, not the one
      before the last M-step (scikit-learn's); with ``max_iter=0`` it is that of the initial
      parameters (scikit-learn's is ``-inf``).
    - ``sample_weight`` may be passed to ``fit`` and ``fit_predict``.

    Fitted attributes: ``weights_``, ``means_``, ``covariances_``, ``precisions_``,
    ``precisions_cholesky_``, ``converged_``, ``n_iter_``, ``lower_bound_``, ``lower_bounds_``
    (scikit-learn's: the best restart's log-likelihood before each iteration's M-step),
    ``n_features_in_``, ``feature_names_in_`` (when ``X`` had string column names), and emjax's
    additions ``status_`` (0 when nothing degenerated; see :func:`emjax.em.describe_status`),
    ``restart_lower_bounds_`` / ``n_iters_`` / ``statuses_`` (every restart), ``history_``
    (the same as ``lower_bounds_``), ``params_`` (a :class:`emjax.gmm.GMMParams`).

    ``missing="marginalize"`` fits data with NaN entries (missing at random) by marginalising
    them (:mod:`emjax.gmm.missing`); the fitted model then scores, predicts and gives
    responsibilities for rows with NaN from their observed entries, and :meth:`impute` fills
    them in. With the default ``missing="error"`` NaN is an error.

    Examples:
      >>> import numpy as np, emjax
      >>> X = np.random.default_rng(0).normal(size=(300, 2))
      >>> gm = emjax.GaussianMixture(n_components=2, n_init=4, random_state=0).fit(X)
      >>> gm.predict(X[:3]).shape
      (3,)
    """

    def __init__(
        self,
        n_components=1,
        *,
        covariance_type="full",
        tol=1e-3,
        reg_covar=1e-6,
        max_iter=100,
        n_init=1,
        init_params="kmeans",
        weights_init=None,
        means_init=None,
        precisions_init=None,
        random_state=None,
        warm_start=False,
        verbose=0,
        verbose_interval=10,
        missing="error",
    ):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.missing = missing

    def __sklearn_is_fitted__(self):
        return hasattr(self, "params_")

    def __sklearn_tags__(self):
        # scikit-learn's own checks (and check_array in meta-estimators) let NaN through only
        # when the estimator says it handles it: with missing="marginalize" it does.
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = self.missing == "marginalize"
        return tags

    def _check_fitted(self):
        if not hasattr(self, "params_"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                "appropriate arguments before using this estimator."
            )

    def _check_params(self):
        for name, (ok, allowed) in _CONSTRAINTS.items():
            value = getattr(self, name)
            if not ok(value):
                raise ValueError(f"The {name!r} parameter of {type(self).__name__} must be "
                                 f"{allowed}. Got {value!r} instead.")

    def _validate_data(self, X, *, allow_nan=False):
        """``X`` as a checked float array for the fitted model: ``n_features_in_`` and
        ``feature_names_in_`` checked with scikit-learn's messages (plus the shape). NaN is
        allowed with ``missing="marginalize"`` or ``allow_nan``."""
        names = _feature_names(X)
        self._check_fitted()
        self._check_feature_names(names)  # first, as scikit-learn: names explain the most
        if allow_nan:
            Xa = missing_lib.as_data_with_nan(X, dtype=self._dtype, for_fit=False)
        else:
            Xa = self._as_array(X, dtype=self._dtype, for_fit=False)
        if Xa.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {Xa.shape[1]} features, but {type(self).__name__} is "
                             f"expecting {self.n_features_in_} features as input (X has shape "
                             f"{Xa.shape}).")
        return Xa

    def _check_feature_names(self, names):
        fitted = getattr(self, "feature_names_in_", None)
        cls = type(self).__name__
        if names is not None and fitted is None:
            warnings.warn(f"X has feature names, but {cls} was fitted without feature names",
                          UserWarning, stacklevel=5)
        elif names is None and fitted is not None:
            warnings.warn(f"X does not have valid feature names, but {cls} was fitted with "
                          "feature names", UserWarning, stacklevel=5)
        elif names is not None and (len(names) != len(fitted) or np.any(names != fitted)):
            unseen = sorted(set(names) - set(fitted))
            missing = sorted(set(fitted) - set(names))
            msg = "The feature names should match those that were passed during fit.\n"
            if unseen:
                msg += "Feature names unseen at fit time:\n" + "".join(
                    f"- {n}\n" for n in unseen[:5]) + ("- ...\n" if len(unseen) > 5 else "")
            if missing:
                msg += "Feature names seen at fit time, yet now missing:\n" + "".join(
                    f"- {n}\n" for n in missing[:5]) + ("- ...\n" if len(missing) > 5 else "")
            if not unseen and not missing:
                msg += "Feature names must be in the same order as they were in fit.\n"
            raise ValueError(msg)

    # -- fitting -------------------------------------------------------------------------------
    def fit(self, X, y=None, sample_weight=None):
        """Fit the model (best of ``n_init`` restarts).

        Args:
          X: ``(n_samples, n_features)`` array-like (a DataFrame's string column names are kept
            as ``feature_names_in_``).
          y: ignored.
          sample_weight: optional ``(n_samples,)`` non-negative weights.

        Returns:
          ``self``.

        Raises:
          ValueError: on an invalid hyper-parameter or invalid data (the message quotes it).
        """
        self._fit(X, sample_weight)
        return self

    def fit_predict(self, X, y=None, sample_weight=None):
        """Fit, then return the labels of ``X`` under the fitted model (``fit(X).predict(X)``:
        a final E-step at the returned parameters), ``(n_samples,)``."""
        return self._fit(X, sample_weight).predict(X)

    def _fit(self, X, sample_weight):
        self._check_params()
        names = _feature_names(X)
        Xa = self._as_array(X)
        dtype = Xa.dtype
        n, d = Xa.shape
        k = self.n_components
        if n < k:
            raise ValueError(f"Expected n_samples >= n_components but got n_components = {k}, "
                             f"n_samples = {n} (X has shape {Xa.shape})")
        warm = bool(self.warm_start) and hasattr(self, "params_")
        if warm and self.params_.means.shape != (k, d):
            raise ValueError(f"warm_start: fitted means have shape {self.params_.means.shape} "
                             f"but the new fit needs ({k}, {d})")
        key = v.as_seed(self.random_state, "random_state", default=None)
        with _precision_ctx(dtype):
            params_init = previous = None
            if warm:
                params_init = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), self.params_)
                if self.n_iter_ > 0:  # the convergence test goes on from the last fit
                    previous = float(self.lower_bounds_[-1])
            res = fitting.fit(
                Xa, k, key=key, covariance_type=self.covariance_type, tol=self.tol,
                reg_covar=self.reg_covar, max_iter=self.max_iter,
                n_init=1 if warm else self.n_init, init_params=self.init_params,
                weights_init=None if warm else self.weights_init,
                means_init=None if warm else self.means_init,
                precisions_init=None if warm else self.precisions_init,
                params_init=params_init, sample_weight=sample_weight, missing=self.missing,
                previous_log_likelihood=previous,
            )
            res = jax.device_get(res)
        # set with the fitted parameters: a fit that fails leaves a fitted model as it was
        self.n_features_in_ = d
        if names is not None:
            self.feature_names_in_ = names
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        self._dtype = dtype
        self.params_ = res.params
        p = res.params
        self.weights_ = np.asarray(p.weights)
        self.means_ = np.asarray(p.means)
        self.covariances_ = np.asarray(p.covariance.covariances)
        self.precisions_cholesky_ = np.asarray(p.covariance.precisions_cholesky)
        pc = self.precisions_cholesky_
        if self.covariance_type == "full":
            self.precisions_ = np.einsum("kij,klj->kil", pc, pc)
        elif self.covariance_type == "tied":
            self.precisions_ = pc @ pc.T
        else:
            self.precisions_ = pc * pc
        self.converged_ = bool(res.converged)
        self.n_iter_ = int(res.n_iter)
        self.lower_bound_ = float(res.log_likelihood)
        self.status_ = int(res.status)
        self.best_index_ = int(res.best_index)
        self.restart_lower_bounds_ = np.asarray(res.restarts.log_likelihood)
        self.n_iters_ = np.asarray(res.restarts.n_iter)
        self.statuses_ = np.asarray(res.restarts.status)
        self.history_ = np.asarray(res.history)[: self.n_iter_]
        self.lower_bounds_ = self.history_
        if self.verbose:
            for i, (ll, it, conv, st) in enumerate(zip(
                self.restart_lower_bounds_, self.n_iters_, np.asarray(res.restarts.converged),
                self.statuses_,
            )):
                print(f"restart {i}: log-likelihood {ll:.6g}, {it} iterations, "
                      f"converged={bool(conv)}, status={em.describe_status(st)}")
        if not self.converged_ and self.max_iter > 0:  # max_iter = 0 asks for no iterations
            warnings.warn(
                f"Best performing initialization did not converge (best of "
                f"{1 if warm else self.n_init} restart(s), max_iter={self.max_iter}). Try "
                "different init parameters, or increase max_iter, tol, or check for degenerate "
                "data.", ConvergenceWarning, stacklevel=3,
            )
        if self.status_ & em.STATUS_NONFINITE:
            warnings.warn(f"EM hit a non-finite step ({em.describe_status(self.status_)}); "
                          "the returned parameters are the last finite ones.", stacklevel=3)
        if self.status_ & em.STATUS_REGULARISED:
            warnings.warn("A covariance of the best restart was not positive definite in "
                          f"{np.dtype(self._dtype).name} and was regularised with a jitter on its "
                          "diagonal; increase reg_covar, use float64, or fewer components.",
                          stacklevel=3)
        return self

    # -- using the model -----------------------------------------------------------------------
    def _as_array(self, X, dtype=None, for_fit=True):
        if missing_lib.marginalizes(X, self.missing):
            return missing_lib.as_data_with_nan(X, dtype=dtype, for_fit=for_fit)
        return v.as_data(X, dtype=dtype,
                         nan_hint=v.MISSING_HINT if for_fit else v.MISSING_HINT_FITTED)

    def _call(self, fn, X, nan_fn=None, validated=False):
        Xa = X if validated else self._validate_data(X)
        with _precision_ctx(self._dtype):
            params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, self._dtype), self.params_)
            if nan_fn is not None and np.isnan(Xa).any():
                return np.asarray(nan_fn(params, Xa))
            n = Xa.shape[0]
            n_rows = _sizes.padded_rows(n, Xa.nbytes // max(n, 1))
            if n_rows is not None:
                # Rows are scored independently: padding to the fit's size class (then dropping
                # the extra rows) lets nearby row counts share one compiled program.
                Xa, _ = _sizes.pad_rows(Xa, None, n_rows)
            return np.asarray(fn(params, Xa))[:n]

    def score_samples(self, X):
        """Log-density of each sample, ``(n_samples,)`` (with ``missing="marginalize"``, of
        each row's observed entries)."""
        return self._call(_score_samples, X, missing_lib.score_samples)

    def score(self, X, y=None):
        """Mean log-likelihood of ``X`` (higher is better; what ``GridSearchCV`` maximises)."""
        return float(np.mean(self.score_samples(X)))

    def predict(self, X):
        """Component labels, ``(n_samples,)``."""
        return self._call(_predict, X, missing_lib.predict)

    def predict_proba(self, X):
        """Component posterior probabilities, ``(n_samples, n_components)``."""
        return self._call(_predict_proba, X, missing_lib.predict_proba)

    def impute(self, X, sample=False, random_state=None):
        """``X`` with each NaN replaced by its conditional mean given the row's observed entries
        under the fitted mixture; ``sample=True``: by a draw from that conditional distribution
        (seeded by ``random_state``, default the estimator's). See :func:`emjax.impute`."""
        Xa = self._validate_data(X, allow_nan=True)
        key = None
        if sample:
            key = v.as_key(self.random_state if random_state is None else random_state,
                           "random_state", default=None)
        with _precision_ctx(self._dtype):
            params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, self._dtype), self.params_)
            return np.asarray(missing_lib.impute(params, Xa, key=key))

    def sample(self, n_samples=1, random_state=None):
        """Draw samples: ``(X, labels)`` as NumPy arrays (labels sorted like scikit-learn's)."""
        self._check_fitted()
        n_samples = v.check_positive_int(n_samples, "n_samples")
        key = v.as_key(self.random_state if random_state is None else random_state,
                       "random_state", default=None)
        with _precision_ctx(self._dtype):
            params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, self._dtype), self.params_)
            Xs, labels = steps.sample(key, params, n_samples)
        order = np.argsort(np.asarray(labels), kind="stable")
        return np.asarray(Xs)[order], np.asarray(labels)[order]

    def _n_parameters(self):
        # From the fitted model, not the hyper-parameters (set_params may have changed them).
        return steps.n_parameters(self.params_.covariance_type, *self.means_.shape)

    def _total_log_likelihood(self, X):
        Xa = self._validate_data(X)
        ll = self._call(_score_samples, Xa, missing_lib.score_samples, validated=True)
        return float(np.sum(ll)), Xa.shape[0]

    def bic(self, X):
        """Bayesian information criterion on ``X`` (lower is better)."""
        ll, n = self._total_log_likelihood(X)
        return -2 * ll + self._n_parameters() * float(np.log(n))

    def aic(self, X):
        """Akaike information criterion on ``X`` (lower is better)."""
        ll, _ = self._total_log_likelihood(X)
        return -2 * ll + 2 * self._n_parameters()


__all__ = ["GaussianMixture", "NotFittedError", "ConvergenceWarning", "HAVE_SKLEARN"]
