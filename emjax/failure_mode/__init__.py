"""The failure-mode mixture: a mixture of random-effects regressions over multi-sensor degradation
curves sampled irregularly per unit (:mod:`.model`: steps, fit, prediction and remaining life;
:mod:`.data`: long tables and synthetic fleets)."""

from emjax.failure_mode import data
from emjax.failure_mode.model import *  # noqa: F403
from emjax.failure_mode.model import TRACE_COUNT  # noqa: F401  (read by tests)
from emjax.failure_mode.model import __all__ as _model_all

__all__ = ["data", *_model_all]
