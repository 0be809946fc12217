"""emjax: latent-variable models fitted by Expectation-Maximization in JAX."""

from emjax import (
    covariance,
    datasets,
    distributed,
    em,
    failure_data,
    failure_mode,
    gem,
    gmm,
    io,
    kmeans,
    mixture,
    objective,
    progress,
    selection,
    streaming,
)
from emjax.covariance import (
    DiagCovariance,
    FullCovariance,
    SphericalCovariance,
    TiedCovariance,
)
from emjax.em import EMResult, describe_status
from emjax.gem import fit_gem
from emjax.gmm import (
    GMMParams,
    aic,
    bic,
    e_step,
    log_prob,
    m_step,
    make_params,
    n_parameters,
    predict,
    predict_proba,
    sample,
    score_samples,
)
from emjax.io import load, save
from emjax.mixture import FitResult, fit, init_params
from emjax.objective import complete_data_log_likelihood
from emjax.selection import GridResult, SelectionResult, fit_grid, select_model
from emjax.sklearn import ConvergenceWarning, GaussianMixture, NotFittedError

__version__ = "0.1.0"

__all__ = [
    "ConvergenceWarning",
    "DiagCovariance",
    "EMResult",
    "FitResult",
    "FullCovariance",
    "GMMParams",
    "GaussianMixture",
    "GridResult",
    "NotFittedError",
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
    "failure_data",
    "failure_mode",
    "fit",
    "fit_gem",
    "gem",
    "fit_grid",
    "gmm",
    "init_params",
    "io",
    "kmeans",
    "load",
    "log_prob",
    "m_step",
    "make_params",
    "mixture",
    "n_parameters",
    "objective",
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
