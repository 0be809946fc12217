"""The failure-mode mixture: a mixture of random-effects regressions over multi-sensor degradation
curves sampled irregularly per unit (:mod:`.model`: steps, fit, prediction and remaining life;
:mod:`.data`: long tables and synthetic fleets; :mod:`.prognostics`: one fitted prognostic model
and calibrated remaining-life forecasts)."""

from emjax.failure_mode import data, prognostics
from emjax.failure_mode.model import *  # noqa: F403
from emjax.failure_mode.model import __all__ as _model_all
from emjax.failure_mode.prognostics import (
    FailureDefinition,
    FailureForecast,
    PrognosticFit,
    PrognosticModel,
    fit_prognostic,
)

__all__ = ["FailureDefinition", "FailureForecast", "PrognosticFit", "PrognosticModel", "data",
           "fit_prognostic", "prognostics", *_model_all]
