"""``emjax.MixtureModel``: a scikit-learn estimator for mixtures of any component family, a thin
shell over :func:`emjax.families.fit` and its scoring functions (with scikit-learn importable
its bases are scikit-learn's, as :class:`emjax.GaussianMixture`'s; without it a plain base gives
the same API)."""

from __future__ import annotations

import contextlib
import warnings

import jax
import numpy as np

from emjax import _validation as v
from emjax import em
from emjax.families import fitting
from emjax.families import io as fio
from emjax.families.base import Family, MixtureParams
from emjax.gmm.estimator import _ESTIMATOR_BASES, NotFittedError


def _precision_ctx(dtype):
    return jax.enable_x64(True) if np.dtype(dtype) == np.float64 else contextlib.nullcontext()


class MixtureModel(*_ESTIMATOR_BASES):
    """A mixture of ``n_components`` components of ``family``, fitted by EM in JAX.

    All ``n_init`` restarts run at once (``jax.vmap`` in one compiled program). float64 data is
    fitted in float64 whatever JAX's global default, float32 in float32. NaN entries are
    marginalised where the family allows it.

    Fitted attributes: ``family_`` (bound to the data: categories, column counts), ``params_``
    (:class:`~emjax.families.MixtureParams`), ``weights_``, ``components_`` (the family's
    parameters), ``converged_``, ``n_iter_``, ``lower_bound_`` (mean log-likelihood),
    ``status_`` (see :func:`emjax.em.describe_status`), ``lower_bounds_`` (every restart),
    ``n_features_in_``.

    Examples:
      >>> import numpy as np, emjax
      >>> from emjax.families import Product, Gaussian, Bernoulli
      >>> rng = np.random.default_rng(0)
      >>> X = np.column_stack([rng.normal(size=200), rng.random(200) < 0.3])
      >>> m = emjax.MixtureModel(Product({"x": Gaussian("diag"), "flag": Bernoulli()}), 2,
      ...                        random_state=0).fit(X)
      >>> m.predict(X[:3]).shape
      (3,)
    """

    def __init__(self, family: Family, n_components: int = 1, *, n_init: int = 1,
                 random_state=None, tol: float = 1e-3, max_iter: int = 100):
        self.family = family
        self.n_components = n_components
        self.n_init = n_init
        self.random_state = random_state
        self.tol = tol
        self.max_iter = max_iter

    def __repr__(self):
        return (f"MixtureModel({self.family!r}, n_components={self.n_components}, "
                f"n_init={self.n_init}, tol={self.tol}, max_iter={self.max_iter})")

    def __sklearn_is_fitted__(self):
        return hasattr(self, "params_")

    def __sklearn_tags__(self):
        # meta-estimators' checks let NaN through where the family marginalises it
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = bool(self.family.allows_missing)
        return tags

    def _check_fitted(self):
        if not hasattr(self, "params_"):
            raise mixture_not_fitted()

    def fit(self, X, y=None, sample_weight=None):
        """Fit by EM with ``n_init`` vmapped restarts; returns ``self``."""
        del y
        Xa = fitting.check_data(X, self.family)
        key = v.as_key(self.random_state, "random_state", default=None)
        with _precision_ctx(Xa.dtype):
            res = fitting.fit(Xa, self.family, self.n_components, key=key, n_init=self.n_init,
                              tol=self.tol, max_iter=self.max_iter, sample_weight=sample_weight)
            self._set(res.family, res.params, Xa.dtype)
            self.converged_ = bool(res.converged)
            self.n_iter_ = int(res.n_iter)
            self.lower_bound_ = float(res.log_likelihood)
            self.lower_bounds_ = np.asarray(res.restarts.log_likelihood)
            self.status_ = int(res.status)
            self.history_ = np.asarray(res.history)
        if not self.converged_:
            warnings.warn(f"no restart converged in max_iter={self.max_iter} iterations; "
                          f"increase max_iter or tol", stacklevel=2)
        if self.status_:
            warnings.warn(f"fit status: {em.describe_status(self.status_)}", stacklevel=2)
        return self

    def _set(self, family, params, dtype):
        self.family_ = family
        self.params_ = jax.tree_util.tree_map(np.asarray, params)
        self.weights_ = self.params_.weights
        self.components_ = self.params_.components
        self.n_features_in_ = family.width()
        self._dtype = np.dtype(dtype)

    def fit_predict(self, X, y=None, sample_weight=None):
        return self.fit(X, y, sample_weight).predict(X)

    def _call(self, fn, X):
        self._check_fitted()
        Xa = fitting.check_data(X, self.family_).astype(self._dtype, copy=False)
        with _precision_ctx(self._dtype):
            return np.asarray(fn(self.family_, self.params_, Xa))

    def score_samples(self, X):
        """``log p(x_n)`` of each row (missing entries marginalised)."""
        return self._call(fitting.score_samples, X)

    def score(self, X, y=None):
        """Mean log-likelihood per sample."""
        return float(np.mean(self.score_samples(X)))

    def predict(self, X):
        """The most responsible component of each row."""
        return self._call(fitting.predict, X)

    def predict_proba(self, X):
        """Responsibilities ``(n_samples, n_components)``."""
        return self._call(fitting.predict_proba, X)

    def bic(self, X):
        """``-2 log L + p log n`` on ``X`` (lower is better)."""
        return self._call(lambda f, p, Xa: fitting.bic(f, p, Xa), X).item()

    def aic(self, X):
        """``-2 log L + 2 p`` on ``X`` (lower is better)."""
        return self._call(lambda f, p, Xa: fitting.aic(f, p, Xa), X).item()

    def n_parameters(self) -> int:
        self._check_fitted()
        # from the fitted model, not the hyper-parameters (set_params may have changed them)
        return fitting.n_parameters(self.family_, self.weights_.shape[0])

    def sample(self, n_samples=1, random_state=None):
        """``(X, labels)``: draws from the fitted mixture."""
        self._check_fitted()
        key = v.as_key(self.random_state if random_state is None else random_state,
                       "random_state", default=None)
        with _precision_ctx(self._dtype):
            Xs, labels = fitting.sample(key, self.family_, self.params_, n_samples)
            return np.asarray(Xs), np.asarray(labels)

    def save(self, path: str) -> str:
        """Write the fitted model atomically to ``path`` (``.npz``); see :meth:`load`."""
        self._check_fitted()
        return fio.save(path, self.family_, self.params_, config=dict(
            n_components=self.n_components, n_init=self.n_init, tol=self.tol,
            max_iter=self.max_iter, lower_bound=self.lower_bound_, status=self.status_,
            converged=bool(self.converged_), n_iter=int(self.n_iter_),
            history=[float(x) for x in np.asarray(self.history_)]))

    @classmethod
    def load(cls, path: str) -> MixtureModel:
        """A fitted estimator from a file written by :meth:`save`."""
        saved = fio.load(path)
        cfg = saved.metadata.get("config", {})
        m = cls(saved.family, saved.metadata["n_components"],
                n_init=cfg.get("n_init", 1), tol=cfg.get("tol", 1e-3),
                max_iter=cfg.get("max_iter", 100))
        m._set(saved.family, MixtureParams(*saved.params), saved.metadata["dtype"])
        m.lower_bound_ = cfg.get("lower_bound")
        m.status_ = cfg.get("status", 0)
        # the fit's outcome (a file written without it, e.g. by fio.save, has none)
        if "n_iter" in cfg:
            m.converged_, m.n_iter_ = bool(cfg["converged"]), int(cfg["n_iter"])
            m.history_ = np.asarray(cfg["history"], np.float64)
        return m


def mixture_not_fitted():
    return NotFittedError("this MixtureModel is not fitted yet: call fit first")



