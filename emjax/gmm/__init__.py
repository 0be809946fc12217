"""The Gaussian mixture family: parameters and covariances, the pure dense E- and M-steps, the
fast chunked pass, the compiled fit, selection over K, generalised EM, the estimator and I/O.

``emjax.gmm.<name>`` re-exports the pure steps and utilities of :mod:`emjax.gmm.steps`, the
fused pass of :mod:`emjax.gmm.kernels` and its plan (:mod:`emjax.gmm.plan`); the rest lives in
its own module of this package.
"""

from emjax.gmm.kernels import (
    e_step_stats,
    feature_blocks,
    feature_rows,
    prepare,
    score_samples_chunked,
)
from emjax.gmm.plan import PassPlan, explain_plan, make_plan
from emjax.gmm.steps import (
    GMMParams,
    SuffStats,
    aic,
    bic,
    component_log_prob,
    e_step,
    e_step_full,
    log_prob,
    m_step,
    m_step_stats,
    make_params,
    n_parameters,
    params_from_stats,
    params_from_stats_checked,
    predict,
    predict_proba,
    responsibilities_mass,
    sample,
    score_samples,
    suff_stats,
    weighted_log_prob,
)

__all__ = [
    "GMMParams",
    "PassPlan",
    "SuffStats",
    "aic",
    "bic",
    "component_log_prob",
    "e_step",
    "e_step_full",
    "e_step_stats",
    "explain_plan",
    "feature_blocks",
    "feature_rows",
    "log_prob",
    "m_step",
    "m_step_stats",
    "make_params",
    "make_plan",
    "n_parameters",
    "params_from_stats",
    "params_from_stats_checked",
    "prepare",
    "predict",
    "predict_proba",
    "responsibilities_mass",
    "sample",
    "score_samples",
    "score_samples_chunked",
    "suff_stats",
    "weighted_log_prob",
]
