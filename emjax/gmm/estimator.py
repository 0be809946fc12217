"""``emjax.GaussianMixture``: a scikit-learn-compatible estimator, a thin shell over
:func:`emjax.gmm.fitting.fit` and the pure functions of :mod:`emjax.gmm`.

scikit-learn is not needed at run time: ``get_params``/``set_params``/``clone`` conventions are
implemented here.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from emjax import _validation as v
from emjax import em
from emjax.gmm import fitting, steps
from emjax.gmm import missing as missing_lib


class NotFittedError(ValueError, AttributeError):
    """Raised when a method needing a fitted model is called before ``fit``."""


class ConvergenceWarning(UserWarning):
    """No restart converged within ``max_iter`` iterations."""


def _precision_ctx(dtype):
    return jax.enable_x64(True) if np.dtype(dtype) == np.float64 else contextlib.nullcontext()


class GaussianMixture:
    """Gaussian mixture fitted by EM in JAX, with scikit-learn's API.

    Constructor arguments and fitted attributes follow ``sklearn.mixture.GaussianMixture``.
    All ``n_init`` restarts run at once (``jax.vmap`` in one compiled program). It computes in
    the input's precision: float64 data is fitted in float64 whatever JAX's global default,
    float32 in float32.

    Fitted attributes: ``weights_``, ``means_``, ``covariances_``, ``precisions_``,
    ``precisions_cholesky_``, ``converged_``, ``n_iter_``, ``lower_bound_`` (mean log-likelihood
    of the best restart at the returned parameters), ``n_features_in_``, and emjax's additions
    ``status_`` (0 when nothing degenerated; see :func:`emjax.em.describe_status`),
    ``lower_bounds_`` / ``n_iters_`` / ``statuses_`` (every restart), ``history_``.

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

    # -- scikit-learn estimator protocol -------------------------------------------------------
    @classmethod
    def _get_param_names(cls):
        sig = inspect.signature(cls.__init__)
        return sorted(p for p in sig.parameters if p != "self")

    def get_params(self, deep=True):
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params):
        valid = self._get_param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"Invalid parameter {name!r} for {type(self).__name__}; "
                                 f"valid parameters are {valid}")
            setattr(self, name, value)
        return self

    def __repr__(self):
        defaults = {
            n: p.default for n, p in inspect.signature(type(self).__init__).parameters.items()
        }
        changed = []
        for name in self._get_param_names():
            value = getattr(self, name)
            default = defaults[name]
            if isinstance(value, np.ndarray) or isinstance(default, np.ndarray):
                if value is not default:
                    changed.append(f"{name}=array(shape={np.shape(value)})")
            elif value != default:
                changed.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(changed)})"

    def __sklearn_is_fitted__(self):
        return hasattr(self, "params_")

    def _check_fitted(self):
        if not hasattr(self, "params_"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' first."
            )

    # -- fitting -------------------------------------------------------------------------------
    def fit(self, X, y=None, sample_weight=None):
        """Fit the model (best of ``n_init`` restarts); returns ``self``."""
        self._fit(X, sample_weight)
        return self

    def fit_predict(self, X, y=None, sample_weight=None):
        """Fit, then return the labels of ``X`` under the fitted model."""
        return self._fit(X, sample_weight).predict(X)

    def _fit(self, X, sample_weight):
        Xa = self._as_array(X)
        dtype = Xa.dtype
        v.check_covariance_type(self.covariance_type)
        k = v.check_n_components(self.n_components, Xa.shape[0], Xa.shape)
        if self.verbose_interval is not None:
            v.check_positive_int(self.verbose_interval, "verbose_interval")
        warm = bool(self.warm_start) and hasattr(self, "params_")
        if warm and self.params_.means.shape != (k, Xa.shape[1]):
            raise ValueError(f"warm_start: fitted means have shape {self.params_.means.shape} "
                             f"but the new fit needs ({k}, {Xa.shape[1]})")
        key = fitting.as_key(self.random_state)
        with _precision_ctx(dtype):
            params_init = None
            if warm:
                params_init = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), self.params_)
            res = fitting.fit(
                Xa, k, key=key, covariance_type=self.covariance_type, tol=self.tol,
                reg_covar=self.reg_covar, max_iter=self.max_iter,
                n_init=1 if warm else self.n_init, init_params=self.init_params,
                weights_init=None if warm else self.weights_init,
                means_init=None if warm else self.means_init,
                precisions_init=None if warm else self.precisions_init,
                params_init=params_init, sample_weight=sample_weight, missing=self.missing,
            )
            res = jax.device_get(res)
        self._dtype = dtype
        self.n_features_in_ = Xa.shape[1]
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
        self.lower_bounds_ = np.asarray(res.restarts.log_likelihood)
        self.n_iters_ = np.asarray(res.restarts.n_iter)
        self.statuses_ = np.asarray(res.restarts.status)
        self.history_ = np.asarray(res.history)[: self.n_iter_]
        if self.verbose:
            for i, (ll, it, conv, st) in enumerate(zip(
                self.lower_bounds_, self.n_iters_, np.asarray(res.restarts.converged),
                self.statuses_,
            )):
                print(f"restart {i}: log-likelihood {ll:.6g}, {it} iterations, "
                      f"converged={bool(conv)}, status={em.describe_status(st)}")
        if not self.converged_:
            warnings.warn(
                f"Best of {self.n_init} restart(s) did not converge in max_iter={self.max_iter} "
                "iterations; try a larger max_iter or tol, or check the data.",
                ConvergenceWarning, stacklevel=3,
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
        return v.as_data(X, dtype=dtype, nan_hint=v.MISSING_HINT)

    def _data(self, X):
        self._check_fitted()
        Xa = self._as_array(X, dtype=self._dtype, for_fit=False)
        if Xa.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {Xa.shape[1]} features (shape {Xa.shape}) but the model "
                             f"was fitted with {self.n_features_in_}")
        return Xa

    def _call(self, fn, X, nan_fn=None):
        Xa = self._data(X)
        with _precision_ctx(self._dtype):
            params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, self._dtype), self.params_)
            if nan_fn is not None and np.isnan(Xa).any():
                return np.asarray(nan_fn(params, Xa))
            return np.asarray(fn(params, jnp.asarray(Xa)))

    def score_samples(self, X):
        """Log-density of each sample, ``(n_samples,)`` (with ``missing="marginalize"``, of
        each row's observed entries)."""
        return self._call(steps.score_samples, X, missing_lib.score_samples)

    def score(self, X, y=None):
        """Mean log-likelihood of ``X``."""
        return float(np.mean(self.score_samples(X)))

    def predict(self, X):
        """Component labels, ``(n_samples,)``."""
        return self._call(steps.predict, X, missing_lib.predict)

    def predict_proba(self, X):
        """Component posterior probabilities, ``(n_samples, n_components)``."""
        return self._call(steps.predict_proba, X, missing_lib.predict_proba)

    def impute(self, X, sample=False, random_state=None):
        """``X`` with each NaN replaced by its conditional mean given the row's observed entries
        under the fitted mixture; ``sample=True``: by a draw from that conditional distribution
        (seeded by ``random_state``, default the estimator's). See :func:`emjax.impute`."""
        self._check_fitted()
        Xa = missing_lib.as_data_with_nan(X, dtype=self._dtype, for_fit=False)
        if Xa.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {Xa.shape[1]} features (shape {Xa.shape}) but the model "
                             f"was fitted with {self.n_features_in_}")
        key = None
        if sample:
            key = fitting.as_key(self.random_state if random_state is None else random_state)
        with _precision_ctx(self._dtype):
            params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, self._dtype), self.params_)
            return np.asarray(missing_lib.impute(params, Xa, key=key))

    def sample(self, n_samples=1, random_state=None):
        """Draw samples: ``(X, labels)`` as NumPy arrays (labels sorted like scikit-learn's)."""
        self._check_fitted()
        n_samples = v.check_positive_int(n_samples, "n_samples")
        key = fitting.as_key(self.random_state if random_state is None else random_state)
        with _precision_ctx(self._dtype):
            params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, self._dtype), self.params_)
            Xs, labels = steps.sample(key, params, n_samples)
        order = np.argsort(np.asarray(labels), kind="stable")
        return np.asarray(Xs)[order], np.asarray(labels)[order]

    def _n_parameters(self):
        return steps.n_parameters(self.covariance_type, self.n_components, self.n_features_in_)

    def bic(self, X):
        """Bayesian information criterion on ``X`` (lower is better)."""
        Xa = self._data(X)
        return float(-2 * self.score(Xa) * Xa.shape[0] + self._n_parameters() * np.log(Xa.shape[0]))

    def aic(self, X):
        """Akaike information criterion on ``X`` (lower is better)."""
        Xa = self._data(X)
        return float(-2 * self.score(Xa) * Xa.shape[0] + 2 * self._n_parameters())


__all__ = ["GaussianMixture", "NotFittedError", "ConvergenceWarning"]
