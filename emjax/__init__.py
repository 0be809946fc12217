"""emjax: latent-variable models fitted by Expectation-Maximization in JAX.

Layout: :mod:`emjax.em` is the generic driver; :mod:`emjax.kmeans` and :mod:`emjax.progress` are
shared infrastructure; :mod:`emjax.gmm` is the Gaussian mixture family and
:mod:`emjax.failure_mode` the failure-mode mixture, :mod:`emjax.families` mixtures of any
component family (Bernoulli, categorical, Poisson, ..., products of them), each on that
driver; :mod:`emjax.cli`, :mod:`emjax.plotting` and :mod:`emjax.datasets` are the application
layer on top.
"""

from emjax import datasets, em, failure_mode, families, gmm, kmeans, progress
from emjax._compile_cache import enable_disk_cache
from emjax._version import __version__
from emjax.em import EMResult, describe_status
from emjax.failure_mode import data as failure_data
from emjax.gmm import (
    GMMParams,
    aic,
    bic,
    covariance,
    distributed,
    e_step,
    fitting,
    gem,
    io,
    log_prob,
    m_step,
    make_params,
    missing,
    n_parameters,
    objective,
    plan,
    predict,
    predict_proba,
    sample,
    score_samples,
    selection,
    streaming,
)
from emjax.gmm.covariance import (
    DiagCovariance,
    FullCovariance,
    SphericalCovariance,
    TiedCovariance,
)
from emjax.gmm.fitting import FitResult, fit, init_params
from emjax.gmm.gem import fit_gem
from emjax.gmm.io import load, save
from emjax.gmm.missing import impute
from emjax.gmm.objective import complete_data_log_likelihood
from emjax.gmm.plan import PassPlan, explain_plan, make_plan
from emjax.gmm.selection import GridResult, SelectionResult, fit_grid, select_model

#: The modules' names before the package was split into model subpackages.
mixture = fitting

# The estimators import scikit-learn's base classes when it is installed (about a second): they
# are loaded on first use, so that `import emjax` and the command line do not pay for it.
_ESTIMATOR_NAMES = ("ConvergenceWarning", "GaussianMixture", "NotFittedError", "estimator")


def __getattr__(name):
    if name in _ESTIMATOR_NAMES:
        from emjax.gmm import estimator

        value = estimator if name == "estimator" else getattr(estimator, name)
    elif name == "MixtureModel":
        from emjax.families.estimator import MixtureModel as value
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "ConvergenceWarning",
    "DiagCovariance",
    "EMResult",
    "FitResult",
    "FullCovariance",
    "GMMParams",
    "GaussianMixture",
    "GridResult",
    "MixtureModel",
    "NotFittedError",
    "PassPlan",
    "SelectionResult",
    "SphericalCovariance",
    "TiedCovariance",
    "__version__",
    "aic",
    "bic",
    "complete_data_log_likelihood",
    "covariance",
    "datasets",
    "describe_status",
    "distributed",
    "e_step",
    "em",
    "enable_disk_cache",
    "estimator",
    "explain_plan",
    "failure_data",
    "failure_mode",
    "families",
    "fit",
    "fit_gem",
    "fit_grid",
    "fitting",
    "gem",
    "gmm",
    "impute",
    "init_params",
    "io",
    "kmeans",
    "load",
    "log_prob",
    "m_step",
    "make_params",
    "make_plan",
    "missing",
    "mixture",
    "n_parameters",
    "objective",
    "plan",
    "predict",
    "predict_proba",
    "progress",
    "sample",
    "save",
    "score_samples",
    "select_model",
    "selection",
    "streaming",
]
