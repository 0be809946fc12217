"""Remaining useful life with the failure-mode mixture: one fitted object (:class:`PrognosticModel`)
that carries what a forecast needs, and calibrated failure-time distributions in the user's units.

Times go in and come out in the user's units everywhere (cycles, hours, ...); the model keeps the
training time scale, the basis and the per-channel standardisation, and applies them to new units.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from emjax import _validation as v
from emjax._files import atomic_write, npz_path, read_npz_with_metadata
from emjax._version import __version__
from emjax.failure_mode.data import PaddedTable, observed_until
from emjax.failure_mode.model import (
    Basis,
    FMMData,
    FMMFitResult,
    FMMParams,
    check_horizon,
    fit,
    log_responsibilities,
    make_data,
    pad_to_classes,
    per_unit,
    posterior,
)

Array = jax.Array

FORMAT = "emjax.prognostic"
FORMAT_VERSION = 1

#: Candidate shapes tried by :func:`fit_prognostic` (selected by BIC): quadratic and cubic
#: polynomials, and a line plus an accelerating term (exponential or power) that can follow the
#: knee before failure.
DEFAULT_BASES = (
    Basis("polynomial", 2), Basis("polynomial", 3),
    *(Basis("exponential", 1, rate=r) for r in (1.0, 2.0, 3.0, 4.0, 6.0, 8.0)),
    *(Basis("power", 1, rate=r) for r in (3.0, 4.0, 6.0)),
)


@dataclasses.dataclass(frozen=True)
class FailureDefinition:
    """When a unit fails: its ``channel`` reaches ``level`` going in ``direction``.

    Attributes:
      channel: index of the channel the failure is defined on (a sensor or a health index).
      direction: ``+1`` if the unit fails when the channel rises to the level, ``-1`` if falls.
      level: failure level, in the channel's own units.
      level_sd: unit-to-unit spread (standard deviation) of the failure level, channel units.
      on: ``"observed"``: failure when the observed (noisy) signal reaches the level, so the
        observation noise enters the forecast; ``"latent"``: the noise-free path.
    """

    channel: int
    direction: int
    level: float
    level_sd: float
    on: str = "observed"

    def __post_init__(self):
        if self.direction not in (1, -1):
            raise ValueError(f"direction must be +1 or -1, got {self.direction!r}")
        if self.on not in ("observed", "latent"):
            raise ValueError(f"on must be 'observed' or 'latent', got {self.on!r}")
        if not (np.isfinite(self.level) and np.isfinite(self.level_sd) and self.level_sd >= 0):
            raise ValueError(f"level must be finite and level_sd >= 0, got {self.level}, "
                             f"{self.level_sd}")


class FailureForecast(NamedTuple):
    """Failure-time distribution of each unit given survival to ``t_now`` (user's time units).

    Attributes:
      t_now: ``(L,)`` the time each forecast is made at.
      times: ``(L, G)`` grid from ``t_now`` to each unit's horizon.
      cdf: ``(L, G)`` ``P(T_f <= times | T_f > t_now)`` (0 at ``t_now``, non-decreasing).
      proba: ``(L, K)`` failure-mode probabilities.
    """

    t_now: np.ndarray
    times: np.ndarray
    cdf: np.ndarray
    proba: np.ndarray

    def failure_time_quantile(self, q) -> np.ndarray:
        """Failure times at probability ``q`` (scalar -> ``(L,)``, ``(Q,)`` -> ``(L, Q)``, any
        shape -> ``(L,) + q.shape``), linearly interpolated on the grid; ``inf`` beyond the
        horizon."""
        q_arr = np.atleast_1d(np.asarray(q, np.float64))
        if np.any((q_arr <= 0) | (q_arr >= 1)):
            raise ValueError(f"quantile levels must lie in (0, 1), got {q}")
        out = np.empty(self.cdf.shape[:1] + q_arr.shape)
        for i, (t, F) in enumerate(zip(self.times, self.cdf)):
            j = np.searchsorted(F, q_arr, side="left")  # first grid point with F >= q
            hit = j < len(F)
            j1 = np.clip(j, 1, len(F) - 1)
            f0, f1 = F[j1 - 1], F[j1]
            w = np.where(f1 > f0, (q_arr - f0) / np.where(f1 > f0, f1 - f0, 1.0), 1.0)
            val = t[j1 - 1] + np.clip(w, 0, 1) * (t[j1] - t[j1 - 1])
            out[i] = np.where(hit, val, np.inf)
        return out[:, 0] if np.ndim(q) == 0 else out

    def rul_quantile(self, q) -> np.ndarray:
        """Remaining useful life at probability ``q`` (failure-time quantile minus ``t_now``)."""
        t = self.failure_time_quantile(q)
        return t - self.t_now.reshape((-1,) + (1,) * np.ndim(q))  # one t_now per unit, any q

    def rul_median(self) -> np.ndarray:
        """``(L,)`` median remaining useful life."""
        return self.rul_quantile(0.5)

    def rul_mean(self) -> np.ndarray:
        """``(L,)`` expected remaining life ``int (1 - cdf) dt`` over the grid: restricted to the
        horizon (a lower bound where probability is left beyond it). The median
        (:meth:`rul_median`) is the forecast that is early or late with equal probability; the
        mean is the one whose errors average to zero."""
        surv = 1.0 - self.cdf
        dt = np.diff(self.times, axis=1)
        return np.sum(0.5 * (surv[:, 1:] + surv[:, :-1]) * dt, 1)

    def rul_interval(self, level: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
        """Central ``level`` interval of the remaining life: ``(lower, upper)``, each ``(L,)``."""
        if not 0 < level < 1:
            raise ValueError(f"level must lie in (0, 1), got {level}")
        qs = self.rul_quantile(np.array([(1 - level) / 2, (1 + level) / 2]))
        return qs[:, 0], qs[:, 1]

    def cdf_at(self, t) -> np.ndarray:
        """``P(T_f <= t | T_f > t_now)`` at ``t`` (``()`` or ``(L,)``, user's time units):
        the probability integral transform of observed failure times."""
        t = np.asarray(t, np.float64)
        if t.shape not in ((), self.t_now.shape):
            raise ValueError(f"t must be a scalar or one time per unit, shape "
                             f"{self.t_now.shape}; got shape {t.shape}")
        t = np.broadcast_to(t, self.t_now.shape)
        return np.array([np.interp(ti, g, F, left=0.0, right=F[-1])
                         for ti, g, F in zip(t, self.times, self.cdf)])


@functools.partial(jax.jit, static_argnames=("basis", "channel", "n_grid", "include_noise"))
def _forecast(params, data, t_now, horizon, level, level_var, direction, *, basis, channel,
              n_grid, include_noise):
    post = posterior(params, data)
    dtype = data.x.dtype
    frac = jnp.linspace(0.0, 1.0, n_grid, dtype=dtype)
    grid = t_now[:, None] + frac[None] * (horizon - t_now)[:, None]  # (L, G), user's units
    phi = basis(grid / data.t_scale).astype(dtype)
    mean = jnp.einsum("lgp,lkp->lkg", phi, post.coef_mean[:, channel])
    var = jnp.einsum("lgp,lkpq,lgq->lkg", phi, post.coef_cov[:, channel], phi) + level_var
    if include_noise:
        var = var + params.noise_var[channel][None, :, None]
    z = direction * (mean - level) / jnp.sqrt(jnp.maximum(var, jnp.finfo(dtype).tiny))
    gamma = jnp.exp(post.log_resp)
    F = jnp.sum(gamma[..., None] * jax.scipy.stats.norm.cdf(z), 1)  # P(level crossed by t)
    # A path that turns back is counted as failed once it has crossed (first passage).
    F = jax.lax.cummax(F, axis=1)
    alive = 1.0 - F[:, :1]
    # Survival to t_now: for monotone paths {crossed by t_now} is inside {crossed by t}.
    cdf = jnp.where(alive > 1e-9, (F - F[:, :1]) / jnp.maximum(alive, 1e-9), 1.0)
    cdf = jnp.clip(cdf, 0.0, 1.0).at[:, 0].set(0.0)
    return grid, cdf, gamma


_forecast_compiled = jax.jit(
    _forecast, static_argnames=("basis", "channel", "n_grid", "include_noise"))


@dataclasses.dataclass(frozen=True)
class PrognosticModel:
    """Everything a forecast needs, in one object: parameters, basis, time scale, per-channel
    standardisation and the failure definition.

    Build it with :func:`fit_prognostic` (or directly from a fit); :meth:`prepare` turns new units
    (in the user's units) into model data with the training time scale and standardisation;
    :meth:`forecast` returns calibrated failure-time distributions; :meth:`save` /
    :meth:`load` round-trip it through one ``.npz`` file.

    Attributes:
      params: :class:`~emjax.failure_mode.model.FMMParams` on standardised channels and ``tau = t /
        t_scale``.
      basis: the :class:`~emjax.failure_mode.model.Basis`.
      t_scale: time scale of the fit (user's time units).
      center, scale: ``(C,)`` per-channel standardisation ``(x - center) / scale``.
      failure: the :class:`FailureDefinition` (level in the channel's units).
      channels: ``C`` channel names.
    """

    params: FMMParams
    basis: Basis
    t_scale: float
    center: np.ndarray
    scale: np.ndarray
    failure: FailureDefinition
    channels: tuple = ()

    @property
    def n_channels(self) -> int:
        """Number of channels ``C``."""
        return int(np.shape(self.center)[0])

    @property
    def dtype(self):
        """Float dtype of the parameters (and of prepared data)."""
        return np.float64 if self.params is None else np.asarray(self.params.means).dtype

    def prepare(self, times, values=None, obs=None, *, cut=None) -> FMMData:
        """New units (user's units) -> :class:`~emjax.failure_mode.model.FMMData` with the training
        time scale, basis and standardisation.

        Args:
          times: ``(L, N)`` times, or a :class:`~emjax.failure_mode.data.PaddedTable` (then
            ``values`` is taken from it).
          values: ``(L, C, N)`` raw channel values (NaN = missing).
          obs: optional ``(L, C, N)`` observation mask.
          cut: ``()`` or ``(L,)`` times: entries after a unit's cut are dropped (in-service units
            observed up to then).

        Raises:
          ValueError: on a channel count other than the model's.
        """
        if isinstance(times, PaddedTable):
            times, values = times.times, times.values
        values = np.asarray(values, np.float64)
        if values.ndim != 3 or values.shape[1] != self.n_channels:
            raise ValueError(f"values must be (L, C={self.n_channels}, N), got {values.shape}")
        mask = observed_until(times, values, cut)
        if obs is not None:
            obs = np.asarray(obs, bool)
            if obs.shape != values.shape:
                raise ValueError(f"obs must have the shape of values {values.shape}, got "
                                 f"{obs.shape}")
            mask &= obs
        z = (values - self.center[None, :, None]) / self.scale[None, :, None]
        return make_data(np.asarray(times, self.dtype), z.astype(self.dtype), mask,
                         basis=self.basis, t_scale=self.t_scale)

    def _check(self, data: FMMData) -> None:
        if not isinstance(data, FMMData):
            raise ValueError("data must be FMMData from PrognosticModel.prepare")
        if data.design.shape[-1] != self.basis.size or data.x.shape[1] != self.n_channels \
                or not np.isclose(float(data.t_scale), self.t_scale):
            raise ValueError(f"data were not prepared by this model (t_scale {float(data.t_scale)}"
                             f" vs {self.t_scale}, {data.design.shape[-1]} basis functions vs "
                             f"{self.basis.size}): use PrognosticModel.prepare")

    def predict_proba(self, data: FMMData) -> np.ndarray:
        """``(L, K)`` failure-mode probabilities of prepared units."""
        self._check(data)
        return np.exp(log_responsibilities(self.params, data))

    def forecast(self, data, t_now=None, *, horizon=None, cut=None, n_grid: int = 2000,
                 fails_by_horizon: bool = False) -> FailureForecast:
        """Failure-time distribution of each unit given that it is alive at ``t_now``.

        Per mode ``k`` the failure channel's path at ``t`` is ``N(phi(t)^T m_k, phi(t)^T P_k
        phi(t))`` (random effects given the unit's data); the failure level adds
        ``level_sd^2``, and with ``failure.on == "observed"`` the mode's noise variance; the
        modes are mixed with the unit's mode probabilities. For paths monotone in time,
        ``P(T_f <= t) = P(path(t) crosses the level)``, conditioned on survival to ``t_now``.

        Args:
          data: prepared units (:meth:`prepare`), or a
            :class:`~emjax.failure_mode.data.PaddedTable`, or ``(times, values)``.
          t_now: ``()`` or ``(L,)`` forecast origin, user's time units (default: ``cut``, else
            each unit's last observed time).
          horizon: ``()`` or ``(L,)`` end of the grid, user's time units (default: ``t_now + 2
            t_scale``). Probability beyond it is reported as ``inf`` quantiles.
          cut: when ``data`` is raw, drop entries after ``cut`` (``()`` or ``(L,)``).
          n_grid: grid points per unit (resolution ``(horizon - t_now) / (n_grid - 1)``;
            quantiles are interpolated between them).
          fails_by_horizon: assume every unit fails before its horizon (as every training unit
            of a run-to-failure fleet did): the distribution is renormalised to the grid,
            ``P(T_f <= t | t_now < T_f <= horizon)``. Gaussian random effects give some paths
            that never reach the level; without this, that probability is left beyond the
            horizon (``inf`` quantiles).

        Returns:
          :class:`FailureForecast`.
        """
        if isinstance(data, PaddedTable):
            data = self.prepare(data, cut=cut)
        elif isinstance(data, tuple) and not isinstance(data, FMMData):
            data = self.prepare(*data, cut=cut)
        self._check(data)
        L = data.x.shape[0]
        if t_now is None:
            t_now = cut
        if t_now is None:
            seen = np.asarray(data.obs).any(1)
            tau_last = np.where(seen, np.asarray(data.tau), -np.inf).max(1)
            t_now = np.where(np.isfinite(tau_last), tau_last * self.t_scale, 0.0)
        t_now = v.check_per_unit(t_now, L, "t_now")
        if horizon is None:
            horizon = t_now + 2.0 * self.t_scale
        horizon = v.check_per_unit(horizon, L, "horizon")
        check_horizon(t_now, horizon)
        if not (isinstance(n_grid, (int, np.integer)) and n_grid >= 2):
            raise ValueError(f"n_grid must be an int >= 2, got {n_grid!r}")
        f = self.failure
        c = f.channel
        level = (f.level - self.center[c]) / self.scale[c]
        level_var = (f.level_sd / self.scale[c]) ** 2
        dt = self.dtype
        # one compiled forecast per size class of the units and observations (padding units:
        # no observation, the last unit's t_now and horizon), cut on the host
        padded = pad_to_classes(data)
        n_units = padded.tau.shape[0]
        grid, cdf, gamma = _forecast_compiled(
            self.params, padded, per_unit(t_now, data, n_units),
            per_unit(horizon, data, n_units, "horizon"), np.asarray(level, dt),
            np.asarray(level_var, dt), np.asarray(f.direction, dt),
            basis=self.basis, channel=int(c), n_grid=int(n_grid),
            include_noise=f.on == "observed")
        grid, gamma = np.asarray(grid)[:L], np.asarray(gamma)[:L]
        cdf = np.asarray(cdf, np.float64)[:L]
        if fails_by_horizon:
            last = cdf[:, -1:]
            cdf = np.where(last > 0, cdf / np.where(last > 0, last, 1.0), cdf)
        return FailureForecast(t_now.copy(), np.asarray(grid, np.float64), cdf, gamma)

    # ----------------------------------------------------------------------------------------

    def save(self, path) -> str:
        """Write the model to ``path`` (``.npz`` appended if missing) atomically: a temporary
        file in the same directory, then ``os.replace``. Returns the path written."""
        path = npz_path(path)
        meta = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "emjax_version": __version__,
            "basis": dataclasses.asdict(self.basis), "t_scale": float(self.t_scale),
            "failure": dataclasses.asdict(self.failure), "channels": list(self.channels),
        }
        arrays = {f"params_{k}": np.asarray(v) for k, v in self.params._asdict().items()}
        arrays.update(center=np.asarray(self.center), scale=np.asarray(self.scale))
        with atomic_write(path, "wb") as fh:
            np.savez(fh, metadata=np.asarray(json.dumps(meta)), **arrays)
        return path

    @classmethod
    def load(cls, path) -> PrognosticModel:
        """Read a model written by :meth:`save`.

        Raises:
          FileNotFoundError: no such file.
          ValueError: not a prognostic model file, or a newer format version.
        """
        arrays, meta = read_npz_with_metadata(str(path), "prognostic model", FORMAT,
                                              FORMAT_VERSION)
        params = FMMParams(*(arrays[f"params_{k}"] for k in FMMParams._fields))
        return cls(params, Basis(**meta["basis"]), float(meta["t_scale"]), arrays["center"],
                   arrays["scale"], FailureDefinition(**meta["failure"]),
                   tuple(meta["channels"]))


def _placeholder_params(dtype) -> FMMParams:
    """Parameters that only carry the dtype (a model used to prepare data before fitting)."""
    z = np.zeros((1,), dtype)
    return FMMParams(z, z, z, z)


class PrognosticFit(NamedTuple):
    """Result of :func:`fit_prognostic`.

    Attributes:
      model: the selected :class:`PrognosticModel`.
      result: its :class:`~emjax.failure_mode.model.FMMFitResult` (with the training units'
        ``responsibilities``).
      selection: one dict per candidate ``(basis, n_components)``: ``bic``, ``log_likelihood``;
        the lowest BIC was selected.
      end_of_life_levels: ``(L,)`` the failure channel's estimated noise-free level at each
        training unit's end of life (channel units); ``None`` when the level was given.
    """

    model: PrognosticModel
    result: FMMFitResult
    selection: list
    end_of_life_levels: np.ndarray | None


def fit_prognostic(times, values=None, *, channels: Sequence[str] | None = None,
                   failure_channel=-1, direction: str = "increasing", level=None,
                   level_sd=None, failure_on: str = "observed", end_of_life=None,
                   n_components=1, basis=None, t_scale=None, standardise: bool = True,
                   key=None, n_init: int = 4, max_iter: int = 500, tol: float = 1e-7,
                   dtype=np.float64) -> PrognosticFit:
    """Fit a failure-mode mixture on run-to-failure units and wrap it as a
    :class:`PrognosticModel`, choosing the shape (and number of modes) by BIC.

    Args:
      times: ``(L, N)`` times in the user's units, or a
        :class:`~emjax.failure_mode.data.PaddedTable` (then ``values`` and ``channels`` come
        from it).
      values: ``(L, C, N)`` raw channel values (NaN = missing).
      channels: channel names.
      failure_channel: index or name of the channel failure is defined on (a sensor or a health
        index column).
      direction: ``"increasing"`` (fails when the channel rises to the level) or
        ``"decreasing"``.
      level: failure level in the channel's units. ``None``: estimated from the training units'
        end of life (each unit's noise-free level at ``end_of_life``; mean, and spread by the law
        of total variance: spread of the estimates plus their mean posterior variance).
      level_sd: spread of the failure level across units (default: estimated with the level,
        0 when ``level`` is given).
      failure_on: ``"observed"`` (the noisy signal reaching the level ends life; the noise
        variance enters the forecast) or ``"latent"``.
      end_of_life: ``(L,)`` failure times of the training units (default: each unit's last
        observed time in any channel: run-to-failure data).
      n_components: ``K``, or a sequence of candidates selected by BIC.
      basis: a :class:`~emjax.failure_mode.model.Basis`, or a sequence of candidates selected by BIC
        (default :data:`DEFAULT_BASES`).
      t_scale: time scale (default: the largest training time).
      standardise: standardise each channel by its mean and standard deviation over the fleet
        (else center 0, scale 1).
      key, n_init, max_iter, tol: passed to :func:`emjax.failure_mode.model.fit`.
      dtype: float dtype of the fit.

    Returns:
      :class:`PrognosticFit`.

    Raises:
      ValueError: on mis-shaped inputs, an unknown channel or direction, a failure channel
        without observations, or fewer than two training units when the level is estimated.
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64; got {dtype}")
    v.check_x64(dtype, "dtype", "pass dtype=np.float32")  # else float32, silently
    if isinstance(times, PaddedTable):
        channels = times.channels if channels is None else channels
        times, values = times.times, times.values
    values = np.asarray(values, np.float64)
    times = np.asarray(times, np.float64)
    if values.ndim != 3:
        raise ValueError(f"values must be (L, C, N), got shape {values.shape}")
    L, C, N = values.shape
    if times.shape != (L, N):
        raise ValueError(f"times must be (L, N) = {(L, N)} to match values {values.shape}, "
                         f"got {times.shape}")
    channels = tuple(channels) if channels is not None else tuple(f"x{c}" for c in range(C))
    if len(channels) != C:
        raise ValueError(f"{len(channels)} channel names for {C} channels")
    if isinstance(failure_channel, str):
        if failure_channel not in channels:
            raise ValueError(f"failure channel {failure_channel!r} not in {list(channels)}")
        failure_channel = channels.index(failure_channel)
    # (int() would take 1.5 as channel 1, and True as 1)
    if (isinstance(failure_channel, bool) or not isinstance(failure_channel, (int, np.integer))
            or not -C <= failure_channel < C):
        raise ValueError(f"failure_channel must be a channel's index in [{-C}, {C}) or its "
                         f"name; got {failure_channel!r}")
    fc = int(failure_channel) % C
    if direction not in ("increasing", "decreasing"):
        raise ValueError(f"direction must be 'increasing' or 'decreasing', got {direction!r}")
    sign = 1 if direction == "increasing" else -1
    mask = np.isfinite(values)
    if not mask[:, fc].any():
        raise ValueError(f"failure channel {channels[fc]!r} has no observed value")
    if standardise:
        center = np.array([np.nanmean(values[:, c]) if mask[:, c].any() else 0.0
                           for c in range(C)])
        scale = np.array([np.nanstd(values[:, c]) if mask[:, c].sum() > 1 else 1.0
                          for c in range(C)])
        scale = np.where(scale > 0, scale, 1.0)
    else:
        center, scale = np.zeros(C), np.ones(C)
    if t_scale is None:
        seen = mask.any(1)
        t_scale = float(np.max(np.where(seen, times, -np.inf)))
        t_scale = t_scale if t_scale > 0 else 1.0
    bases = DEFAULT_BASES if basis is None else (
        (basis,) if isinstance(basis, Basis) else tuple(basis))
    ks = (n_components,) if isinstance(n_components, (int, np.integer)) else tuple(n_components)
    if not bases or not ks:
        raise ValueError(f"no candidate to fit: basis {basis!r}, n_components {n_components!r}")
    if level is None and L < 2:
        raise ValueError("estimating the failure level needs at least two training units")
    if level is None and end_of_life is None:
        # a unit's last observation in any channel: its failure channel may have none
        seen = mask.any(1)
        blind = np.flatnonzero(~seen.any(1))
        if blind.size:
            raise ValueError(f"training unit {blind[0]} has no observed value, so no end of life "
                             "to estimate the failure level from: pass end_of_life= or leave "
                             "the unit out")
        end_of_life = np.where(seen, times, -np.inf).max(1)
    elif level is None:
        end_of_life = v.check_per_unit(end_of_life, L, "end_of_life")
    key = jax.random.key(0) if key is None else key
    selection, best = [], None
    for b in bases:
        model0 = PrognosticModel(_placeholder_params(dtype), b, float(t_scale), center, scale,
                                 FailureDefinition(fc, sign, 0.0, 0.0, failure_on), channels)
        data = model0.prepare(times, values.astype(dtype))
        for k in ks:
            res = fit(data, int(k), key=key, n_init=n_init, max_iter=max_iter, tol=tol)
            selection.append({"basis": dataclasses.asdict(b), "n_components": int(k),
                              "bic": float(res.bic),
                              "log_likelihood": float(res.log_likelihood)})
            if best is None or float(res.bic) < best[0]:
                best = (float(res.bic), b, res, data)
    _, b, res, data = best
    eol_levels = None
    if level is None:
        post = posterior(res.params, data)
        phi = np.asarray(b(jnp.asarray(end_of_life / t_scale)), np.float64)  # (L, p)
        g = np.exp(np.asarray(post.log_resp, np.float64))
        m = np.einsum("lp,lkp->lk", phi, np.asarray(post.coef_mean[:, fc], np.float64))
        var = np.einsum("lp,lkpq,lq->lk", phi, np.asarray(post.coef_cov[:, fc], np.float64),
                        phi)  # not v: that name is the validation module here
        lev = np.sum(g * m, 1)
        within = np.sum(g * (var + m * m), 1) - lev**2
        eol_levels = center[fc] + scale[fc] * lev
        level = float(np.mean(eol_levels))
        if level_sd is None:
            level_sd = float(scale[fc] * np.sqrt(np.var(lev, ddof=1) + np.mean(within)))
    level_sd = 0.0 if level_sd is None else float(level_sd)
    model = PrognosticModel(res.params, b, float(t_scale), center, scale,
                            FailureDefinition(fc, sign, float(level), level_sd, failure_on),
                            channels)
    return PrognosticFit(model, res, selection, eol_levels)


__all__ = ["DEFAULT_BASES", "FailureDefinition", "FailureForecast", "PrognosticFit",
           "PrognosticModel", "fit_prognostic"]
