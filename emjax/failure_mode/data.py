"""Data for the failure-mode mixture: a long-table loader and the seeded synthetic generator.

The loader turns rows ``(unit, time, channel_1, ..., channel_C)`` with gaps into the padded layout
of :mod:`emjax.failure_mode`; the generator draws the synthetic fleets of docs/failure_mode.md
(easy / hard settings, irregular sampling, dropped entries, optional run-to-failure truncation).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from emjax import _validation as v
from emjax.failure_mode.model import QUADRATIC, Basis, FMMData, FMMParams, make_data


class PaddedTable(NamedTuple):
    """A long table in padded form.

    Attributes:
      unit_ids: ``(L,)`` unit identifiers, in the loader's documented order: sorted (numerically
        when every identifier reads as a number, so ``"2"`` comes before ``"10"``), or in order of
        first appearance with ``unit_order="appearance"``.
      channels: ``(C,)`` channel names.
      times: ``(L, N)`` sorted times per unit, NaN in padded slots.
      values: ``(L, C, N)`` values, NaN where missing or padded.
    """

    unit_ids: list
    channels: list
    times: np.ndarray
    values: np.ndarray

    def to_data(self, basis: Basis = QUADRATIC, t_scale=None, *, cut=None) -> FMMData:
        """:func:`emjax.failure_mode.make_data` on these arrays.

        Args:
          basis: the basis.
          t_scale: time scale (``tau = t / t_scale``). The default, ``None``, takes this
            table's largest time, which is right for the table a model is fitted on and wrong
            for new units: pass the fit's ``t_scale`` (or prepare new units with
            :meth:`emjax.failure_mode.prognostics.PrognosticModel.prepare`, which does).
          cut: ``()`` or ``(L,)`` times, in the table's units: entries after a unit's cut are
            masked (an in-service unit observed up to ``cut``).
        """
        return make_data(self.times, self.values, observed_until(self.times, self.values, cut),
                         basis=basis, t_scale=t_scale)


def observed_until(times, values, cut=None) -> np.ndarray:
    """Observation mask ``(L, C, N)``: finite values at times ``<= cut`` (``()`` or ``(L,)``,
    ``None``: no cut)."""
    values = np.asarray(values)
    mask = np.isfinite(values)
    if cut is None:
        return mask
    times = np.asarray(times, np.float64)
    if times.shape != values.shape[:1] + values.shape[2:] or values.ndim != 3:
        raise ValueError(f"times must be (L, N) to match values (L, C, N) {values.shape}, got "
                         f"{times.shape}")
    cut = v.check_per_unit(cut, times.shape[0], "cut")
    with np.errstate(invalid="ignore"):
        keep = np.isfinite(times) & (times <= cut[:, None])
    return mask & keep[:, None, :]


def _unit_sort_key(ids: list):
    """Numeric order when every id reads as a number, else string order."""
    try:
        nums = [float(u) for u in ids]
    except (TypeError, ValueError):
        return lambda u: str(u)
    lookup = dict(zip(ids, nums))
    return lambda u: lookup[u]


def _number(text: str, where: str, allow_missing: bool) -> float:
    s = text.strip()
    if s == "" or s.lower() in ("nan", "na", "null", "none"):
        if allow_missing:
            return math.nan
        raise ValueError(f"{where}: a value is required, got {text!r}")
    try:
        if "_" in s:  # float() takes digit separators; other readers do not
            raise ValueError
        return float(s)
    except ValueError:
        raise ValueError(f"{where}: cannot parse {text!r} as a number") from None


def from_long_table(units: Sequence, times, values, channels: Sequence[str] | None = None,
                    *, row_labels: Sequence[str] | None = None,
                    dtype=np.float64, unit_order: str = "sorted") -> PaddedTable:
    """Rows ``(unit, time, values[C])`` -> :class:`PaddedTable`.

    Args:
      units: ``(R,)`` unit identifiers (any hashable).
      times: ``(R,)`` finite times.
      values: ``(R, C)`` channel values; NaN means missing.
      channels: optional ``C`` channel names (default ``x0, x1, ...``).
      row_labels: names of the rows for error messages (default ``row 0``, ``row 1``, ...).
      dtype: float dtype of the arrays.
      unit_order: ``"sorted"`` (default: numerically when every id reads as a number, else as
        strings) or ``"appearance"`` (order of first appearance in the rows).

    Raises:
      ValueError: naming the offending row, on mismatched lengths, an empty table, non-finite
        times, infinite values, a unit with two rows at the same time, or a unit without any
        observed value.
    """
    if unit_order not in ("sorted", "appearance"):
        raise ValueError(f"unit_order must be 'sorted' or 'appearance', got {unit_order!r}")
    units = list(units)
    times = np.asarray(times, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    R = len(units)
    if R == 0:
        raise ValueError("the table has no rows")
    if values.ndim == 1:
        values = values[:, None]
    if times.shape != (R,) or values.ndim != 2 or values.shape[0] != R:
        raise ValueError(f"units ({R},), times {times.shape} and values {values.shape} must have "
                         f"one row each")
    C = values.shape[1]
    if C == 0:
        raise ValueError("the table has no channel columns")
    if channels is None:
        channels = [f"x{c}" for c in range(C)]
    channels = list(channels)
    if len(channels) != C:
        raise ValueError(f"{len(channels)} channel names for {C} value columns")
    label = (lambda r: row_labels[r]) if row_labels is not None else (lambda r: f"row {r}")
    bad_t = np.flatnonzero(~np.isfinite(times))
    if bad_t.size:
        raise ValueError(f"{label(bad_t[0])}: time must be finite, got {times[bad_t[0]]}")
    bad_v = np.argwhere(np.isinf(values))
    if bad_v.size:
        r, c = bad_v[0]
        raise ValueError(f"{label(r)}, channel {channels[c]!r}: infinite value {values[r, c]}")
    order: dict = {}
    for r, u in enumerate(units):
        order.setdefault(u, []).append(r)
    if unit_order == "sorted":
        order = {u: order[u] for u in sorted(order, key=_unit_sort_key(list(order)))}
    L = len(order)
    N = max(len(rows) for rows in order.values())
    out_t = np.full((L, N), np.nan, dtype)
    out_v = np.full((L, C, N), np.nan, dtype)
    for i, (u, rows) in enumerate(order.items()):
        rows = np.asarray(rows)
        rows = rows[np.argsort(times[rows], kind="stable")]
        t = times[rows]
        dup = np.flatnonzero(np.diff(t) == 0)
        if dup.size:
            a, b = sorted((rows[dup[0]], rows[dup[0] + 1]))
            raise ValueError(f"{label(b)}: unit {u!r} already has a row at time {t[dup[0]]} "
                             f"({label(a)})")
        if not np.isfinite(values[rows]).any():
            raise ValueError(f"unit {u!r} ({label(rows[0])} ...) has no observed value in any "
                             f"channel")
        out_t[i, : len(rows)] = t
        out_v[i, :, : len(rows)] = values[rows].T
    return PaddedTable(list(order), channels, out_t, out_v)


def load_long_table(source, *, unit: str = "unit", time: str = "time",
                    channels: Sequence[str] | None = None, delimiter: str | None = None,
                    dtype=np.float64, unit_order: str = "sorted") -> PaddedTable:
    """Read a delimited UTF-8 text table with a header into a :class:`PaddedTable`.

    Empty cells (or ``nan``/``NA``) are missing values. Errors quote the file line (and the
    file, for a path).

    Args:
      source: a path or a file-like object (text).
      unit, time: names of the unit and time columns.
      channels: the channel columns in order (default: every other column, in file order).
      delimiter: field separator; default: detected from the header line as ``emjax fit``
        does (the first of ``,``, tab, ``;`` in it).
      dtype: float dtype of the arrays.
      unit_order: ``"sorted"`` (default) or ``"appearance"``: see :func:`from_long_table`.

    Raises:
      ValueError: a directory or a file that is not UTF-8 text, duplicate header names, a
        missing column, a row with the wrong number of fields, an unparsable number, a missing
        time, plus everything :func:`from_long_table` checks.
    """
    where = ""
    if isinstance(source, (str, os.PathLike)):
        where = f"{os.fspath(source)}: "
        if os.path.isdir(source):
            raise ValueError(f"{where}is a directory, not a table file")
        try:
            # utf-8-sig: a byte-order mark (as spreadsheets write) is not part of the header
            with open(source, newline="", encoding="utf-8-sig") as fh:
                text = fh.read()
        except UnicodeDecodeError as exc:
            raise ValueError(f"{where}not UTF-8 text (byte {exc.object[exc.start]:#04x} at "
                             f"offset {exc.start}); re-save it as UTF-8") from None
    else:
        text = source.read()
        if isinstance(text, bytes):
            raise ValueError("source must be opened in text mode (open(path, encoding='utf-8'))")
    text = text.removeprefix("\ufeff")
    try:
        return _parse_long_table(text, unit, time, channels, delimiter, dtype, unit_order)
    except ValueError as exc:
        raise ValueError(f"{where}{exc}") from None


def _parse_long_table(text: str, unit: str, time: str, channels, delimiter, dtype,
                      unit_order):
    if delimiter is None:
        first = next((ln for ln in text.splitlines() if ln.strip()), "")
        delimiter = next((d for d in (",", "\t", ";") if d in first), ",")
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ValueError("the table is empty (no header line)") from None
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise ValueError(f"the header names column {dup[0]!r} {header.count(dup[0])} times "
                         f"(header {header}); give every column its own name")
    for col in (unit, time):
        if col not in header:
            raise ValueError(f"column {col!r} not in header {header}")
    if channels is None:
        channels = [h for h in header if h not in (unit, time)]
    for col in channels:
        if col not in header:
            raise ValueError(f"channel column {col!r} not in header {header}")
    iu, it = header.index(unit), header.index(time)
    ic = [header.index(c) for c in channels]
    units, times, values, labels = [], [], [], []
    for row in reader:
        line = reader.line_num
        if not row or all(not f.strip() for f in row):
            continue
        if len(row) != len(header):
            raise ValueError(f"line {line}: expected {len(header)} fields, got {len(row)}")
        u = row[iu].strip()
        if u == "":
            raise ValueError(f"line {line}: empty unit id")
        units.append(u)
        times.append(_number(row[it], f"line {line}, column {time!r}", allow_missing=False))
        values.append([_number(row[j], f"line {line}, column {header[j]!r}", allow_missing=True)
                       for j in ic])
        labels.append(f"line {line}")
    if not units:
        raise ValueError("the table has no rows (only a header)")
    return from_long_table(units, times, np.asarray(values, np.float64).reshape(len(units), -1),
                           channels, row_labels=labels, dtype=dtype, unit_order=unit_order)


# --------------------------------------------------------------------------------------------
# Synthetic generator (docs/failure_mode.md, "The synthetic fleets")
# --------------------------------------------------------------------------------------------

#: Mode means ``(C=4, K=3, p=3)``: rows are channels ``s1, s2, s3, y``; columns modes 1..3.
EASY_MEANS = np.array([
    [[0, 0.5, 2.0], [0, 0.2, 0.0], [0, -0.4, -1.0]],
    [[0, 0.2, 0.0], [0, 0.8, 1.5], [0, 0.1, 0.5]],
    [[0, -0.3, -1.0], [0, 0.1, 0.0], [0, 1.0, 2.0]],
    [[0, 1.0, 3.0], [0, 2.0, 1.0], [0, 0.5, 4.0]],
])
EASY_WEIGHTS = np.array([0.5, 0.3, 0.2])
EASY_NOISE_SD = np.array([0.10, 0.15, 0.20])


def true_params(setting: str = "easy") -> FMMParams:
    """The generator's parameters (numpy float64): ``Sigma = D R D`` with ``D = diag(0.2, 0.3,
    0.5)`` and ``corr(slope, curvature) = -0.3``; hard multiplies the means by 0.35."""
    if setting not in ("easy", "hard"):
        raise ValueError(f"setting must be 'easy' or 'hard', got {setting!r}")
    D = np.diag([0.2, 0.3, 0.5])
    R = np.eye(3)
    R[1, 2] = R[2, 1] = -0.3
    cov = D @ R @ D
    C, K, p = EASY_MEANS.shape
    means = EASY_MEANS * (0.35 if setting == "hard" else 1.0)
    return FMMParams(EASY_WEIGHTS.copy(), means.astype(float),
                     np.broadcast_to(cov, (C, K, p, p)).copy(),
                     np.broadcast_to(EASY_NOISE_SD**2, (C, K)).copy())


class Synthetic(NamedTuple):
    """A synthetic data set with its ground truth.

    Attributes:
      times: ``(L, N)`` rescaled times ``tau`` (NaN padded).
      values: ``(L, C, N)`` values (NaN where dropped or padded).
      labels: ``(L,)`` true modes ``z_l``.
      coefs: ``(L, C, p)`` true random coefficients ``T_lc``.
      params: the true :class:`~emjax.failure_mode.FMMParams` (numpy).
      end: ``(L,)`` end of observation ``min(H_l, tau_f)``.
      failure_time: ``(L,)`` first ``tau`` where the noise-free ``y`` path reaches ``threshold``
        (``inf`` if not before ``max_life``); computed whether or not the data are truncated.
    """

    times: np.ndarray
    values: np.ndarray
    labels: np.ndarray
    coefs: np.ndarray
    params: FMMParams
    end: np.ndarray
    failure_time: np.ndarray

    def to_data(self, basis: Basis = QUADRATIC, dtype=np.float64) -> FMMData:
        """:func:`emjax.failure_mode.make_data` with ``t_scale = 1`` (times are already
        rescaled)."""
        return make_data(self.times.astype(dtype), self.values.astype(dtype), basis=basis,
                         t_scale=1.0)


def make_synthetic(seed: int, *, setting: str = "easy", n_units: int = 300,
                   n_obs: tuple = (10, 60), horizon: tuple | None = None,
                   drop_frac: float = 0.05, run_to_failure: bool = False,
                   threshold: float = 2.5, max_life: float = 2.0) -> Synthetic:
    """Spec section 11: ``K = 3`` modes, ``C = 4`` channels (3 sensors + ``y``), quadratic paths.

    Args:
      seed: NumPy seed (same seed, same data).
      setting: ``"easy"`` (horizons ``U(0.5, 1)``) or ``"hard"`` (means x 0.35, horizons
        ``U(0.2, 0.6)``).
      n_units: ``L``.
      n_obs: inclusive range of the number of observation times per unit.
      horizon: override of the horizon range.
      drop_frac: fraction of (unit, channel, time) entries dropped at random.
      run_to_failure: truncate each unit at ``min(H_l, tau_f)`` (informative truncation).
      threshold: failure threshold ``D`` on the noise-free ``y`` path.
      max_life: failure times are searched on ``[0, max_life]``.
    """
    rng = np.random.default_rng(seed)
    params = true_params(setting)
    if horizon is None:
        horizon = (0.5, 1.0) if setting == "easy" else (0.2, 0.6)
    C, K, p = params.means.shape
    L = n_units
    lo, hi = n_obs
    if not (1 <= lo <= hi):
        raise ValueError(f"n_obs must be (lo, hi) with 1 <= lo <= hi, got {n_obs}")
    z = rng.choice(K, size=L, p=params.weights)
    chol = np.linalg.cholesky(params.covs)  # (C, K, p, p)
    eps = rng.standard_normal((L, C, p))
    coefs = params.means[:, z].transpose(1, 0, 2) + np.einsum(
        "lcpq,lcq->lcp", chol[:, z].transpose(1, 0, 2, 3), eps)
    grid = np.linspace(0.0, max_life, 2001)
    path_y = np.stack([grid**j for j in range(p)], -1) @ coefs[:, -1].T  # (G, L)
    crossed = path_y >= threshold
    failure_time = np.where(crossed.any(0), grid[np.argmax(crossed, 0)], np.inf)
    n_l = rng.integers(lo, hi + 1, size=L)
    H = rng.uniform(horizon[0], horizon[1], size=L)
    end = np.minimum(H, failure_time) if run_to_failure else H
    N = hi
    times = np.full((L, N), np.nan)
    values = np.full((L, C, N), np.nan)
    noise_sd = np.sqrt(params.noise_var)
    for l in range(L):
        t = np.sort(rng.uniform(0.0, end[l], size=n_l[l]))
        t[0] = 0.0
        phi = np.stack([t**j for j in range(p)], -1)
        x = coefs[l] @ phi.T + noise_sd[:, z[l], None] * rng.standard_normal((C, n_l[l]))
        times[l, : n_l[l]] = t
        values[l, :, : n_l[l]] = x
    if drop_frac > 0:
        valid = np.isfinite(values)
        drop = valid & (rng.uniform(size=values.shape) < drop_frac)
        values[drop] = np.nan
    return Synthetic(times, values, z, coefs, params, end, failure_time)


__all__ = ["EASY_MEANS", "EASY_NOISE_SD", "EASY_WEIGHTS", "PaddedTable", "Synthetic",
           "from_long_table", "load_long_table", "make_synthetic", "observed_until",
           "true_params"]
