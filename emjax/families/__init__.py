"""Mixtures of any component family on the generic EM driver: exponential families with
closed-form M-steps, Gaussian and Student-t, products over column groups, user-defined densities.

    >>> fam = Product({"age": Gaussian("diag"), "smoker": Bernoulli(), "visits": Poisson()})
    >>> res = fit(X, fam, 3, n_init=8)            # or emjax.MixtureModel(fam, 3).fit(X)
"""

from emjax.families.base import Family, MixtureParams, expected_log_likelihood, make_model
from emjax.families.expfam import (
    Bernoulli,
    BernoulliParams,
    Categorical,
    CategoricalParams,
    Exponential,
    ExponentialParams,
    Gamma,
    GammaParams,
    Poisson,
    PoissonParams,
)
from emjax.families.fitting import (
    FitResult,
    aic,
    bic,
    fit,
    n_parameters,
    predict,
    predict_proba,
    sample,
    score_samples,
)
from emjax.families.gaussian import Gaussian, GaussianParams, StudentT, StudentTParams
from emjax.families.product import Custom, Product

__all__ = [
    "Bernoulli",
    "BernoulliParams",
    "Categorical",
    "CategoricalParams",
    "Custom",
    "Exponential",
    "ExponentialParams",
    "Family",
    "FitResult",
    "Gamma",
    "GammaParams",
    "Gaussian",
    "GaussianParams",
    "MixtureParams",
    "Poisson",
    "PoissonParams",
    "Product",
    "StudentT",
    "StudentTParams",
    "aic",
    "bic",
    "expected_log_likelihood",
    "fit",
    "make_model",
    "n_parameters",
    "predict",
    "predict_proba",
    "sample",
    "score_samples",
]
