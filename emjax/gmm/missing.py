"""Gaussian mixtures with entries missing at random (NaN): EM on the observed-data likelihood
(Ghahramani and Jordan, 1994) with exact marginals and conditional moments, and imputation.

Each row ``n`` has observed coordinates ``o`` and missing ones ``m``. The E-step scores a row by
``log N(x_o | mu_k[o], Sigma_k[o, o])``; the M-step adds the conditional moments of the missing
entries, ``E[x_m | x_o, k] = mu_m + Sigma_mo Sigma_oo^-1 (x_o - mu_o)`` and
``Cov[x_m | x_o, k] = Sigma_mm - Sigma_mo Sigma_oo^-1 Sigma_om``, to the sufficient statistics.

Both are computed from the precision ``Lambda = Sigma^-1`` and its *missing* block only: with
``r = x - mu`` set to zero on ``m``, ``b = (Lambda r)_m`` and ``A = Lambda_mm``,

.. math::
   \\log|\\Sigma_{oo}| = \\log|\\Sigma| + \\log|A|,\\quad
   r_o^T\\Sigma_{oo}^{-1}r_o = r^T\\Lambda r - b^T A^{-1} b,\\quad
   E[x_m] = \\mu_m - A^{-1} b,\\quad \\operatorname{Cov}[x_m] = A^{-1},

so each (row, component) factorises a matrix of the size of its missing block, not of the
observed one. Rows are sorted on the host into buckets by how many entries they miss (padded to
a short ladder of sizes, :func:`slot_ladder`), so each bucket's blocks have a static size. In
the fit the missing entries are set to the centre (any value gives the same result), so the
``D x D`` work is that of complete data: one GEMM of constant per-row features gives every
``r^T Lambda_k r``, one GEMM gives ``Lambda_k r`` (from which ``b`` is gathered; on the
chunk's missing columns only where they are few), and the moments are GEMMs with the same
features; only the ``J x J`` blocks are factorised, and their conditional covariances
scattered into ``(K, D, D)``. Where rows share their missingness pattern (the small buckets,
and in the others the rows of patterns shared by at least 4), once per (pattern, component)
by :func:`_sweep`, each row gathering its pattern's ``A^-1`` and ``log|A|``; elsewhere per
(row, component), vectorised over a chunk of rows and all components (unrolled Cholesky up
to :data:`UNROLL_MAX_SLOTS` missing entries, the sweep above). Per-row results (prediction,
imputation, draws) factorise the blocks unrolled (batched LAPACK above
:data:`UNROLL_MAX_SLOTS`). docs/missing.md has the forms measured and why this one. Diagonal and
spherical covariances need no factorisation: every term is a GEMM of ``[x^2, x, observed]``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular
from jax.scipy.special import logsumexp

from emjax import _sizes, _threefry, _xla, em, kmeans
from emjax import _validation as v
from emjax._linalg import after, diagonal
from emjax.gmm import covariance as cov_lib
from emjax.gmm import fitting, steps
from emjax.gmm import reseed as reseed_lib
from emjax.gmm.options import check_fit
from emjax.gmm.steps import GMMParams, SuffStats

Array = jax.Array

MISSING_OPTIONS = ("error", "marginalize")

# ---------------------------------------------------------------------------------------------
# Host-side layout


class MissingData(NamedTuple):
    """Data with holes, laid out for the compiled passes (a pytree; build with :func:`layout`).

    Rows are sorted into buckets by their number of missing entries, each bucket padded to whole
    chunks with rows of weight zero. ``N'`` is the padded number of rows.

    Attributes:
      x: ``(N', n_features)`` the data minus ``center``, zero at missing entries.
      observed: ``(N', n_features)`` 1 where observed, 0 where missing (the data's dtype).
      weight: ``(N',)`` sample weights; 0 on padding rows.
      slots: one int32 array per bucket, ``(n_chunks, chunk_rows, n_slots)``: the missing
        coordinates of each row, padded with -1 to the bucket's ``n_slots``. Buckets follow each
        other in the rows of ``x``.
      center: ``(n_features,)`` the (weighted) mean of the observed values of each column.
      feats: full and tied covariances (else empty): one array per bucket,
        ``(n_chunks, chunk_rows, F)``, the constant features of each row
        ``[x_i x_j (i <= j), x, 1, n_observed]`` (``F = D(D+1)/2 + D + 2``): one GEMM with the
        parameters gives every log-density of the completed row (missing entries at the
        centre), one with the responsibilities every moment of it.
      feats_t: the same, transposed, ``(F, n_chunks * chunk_rows)``: the moments of a bucket are
        one plain GEMM with its responsibilities (XLA:CPU runs a transposed-operand GEMM far
        more slowly), and a chunk's ``[x, 1]`` rows are a slice of it.
      bidx: one int32 array per bucket, ``(n_chunks, n_slots, chunk_rows)``: ``row * D + slot``
        within the chunk, where each missing entry's row of ``(Lambda_k x)`` sits in the
        chunk's ``(rows * D, K)`` product (padded slots: ``row * D``, masked).
      pidx: one int32 array per bucket, ``(n_chunks, n_slots^2, chunk_rows)``: for each pair
        ``(a, b)`` of slots, ``s_a * D + s_b``, the entry of ``Lambda_k`` in the missing
        block; padded pairs point past ``D * D`` (0 off the diagonal, 1 on it).
      pat: one int32 array per bucket, ``(n_chunks, chunk_rows)``: each row's missingness
        pattern (rows are sorted by pattern within a bucket; padding rows: the pattern after
        the last, all slots padded) as an offset from the chunk's first pattern;
        ``(n_chunks, 0)`` when the bucket's blocks are factorised per row
        (:func:`shares_patterns`).
      ppidx: one int32 array per bucket, ``(n_pattern_chunks, n_slots^2, chunk_rows)``:
        ``pidx`` of each pattern, then of padding patterns (empty when factorised per row).
      pwin: one int32 array per bucket, ``(n_chunks, window)``: the patterns each chunk's rows
        may have, consecutive from its first (empty when factorised per row).
      ucols: one int32 array per bucket, ``(n_chunks, U)``: the columns missing in some row
        of each chunk (padded with repeats), when every chunk of the bucket has at most
        ``U`` of them and ``U`` is small (:func:`union_width`; else ``(n_chunks, 0)``).
      uidx: one int32 array per bucket, ``(n_chunks, n_slots, chunk_rows)``: ``row * U + u``,
        where each missing entry's column ``ucols[u]`` sits in the chunk's ``(rows * U, K)``
        products (padded slots: ``row * U``; empty when ``ucols`` is).
      init_rows: ``(N'',)`` int32, the position of each row of ``X`` in order (then of
        padding rows, up to the rows' size class in a size-class layout): the fit's
        initialisation reads the rows in this order, so that its draws do not depend on the
        layout.
    """

    x: Array
    observed: Array
    weight: Array
    slots: tuple
    center: Array
    feats: tuple = ()
    feats_t: tuple = ()
    bidx: tuple = ()
    pidx: tuple = ()
    pat: tuple = ()
    ppidx: tuple = ()
    pwin: tuple = ()
    ucols: tuple = ()
    uidx: tuple = ()
    init_rows: Array | None = None


def union_width(n_union: int, n_features: int) -> int:
    """The columns a bucket's chunks restrict their ``Lambda_k r`` products to: ``n_union``
    (the most columns missing in one chunk) when at most a quarter of ``n_features`` (or 2,
    and fewer than ``n_features``), else 0 (all columns; with more, the gathers and scatters
    of the restricted products cost what their smaller size saves)."""
    small = 4 * n_union <= n_features or n_union <= 2
    return n_union if 0 < n_union < n_features and small else 0


def _union_columns(s: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ucols, uidx)`` of :class:`MissingData` for one bucket's slots ``s``
    ``(n_chunks, c, J)`` (-1 pads)."""
    n_chunks, c, j = s.shape
    cols = [np.unique(ch[ch >= 0]) for ch in s]
    u = union_width(max((len(x) for x in cols), default=0), d)
    if u == 0:
        return np.zeros((n_chunks, 0), np.int32), np.zeros((n_chunks, j, 0), np.int32)
    ucols = np.stack([np.concatenate([x, np.full(u - len(x), x[0] if len(x) else 0)])
                      for x in cols]).astype(np.int32)
    # position of each slot's column in its chunk's union (padded slots: 0)
    pos = np.zeros((n_chunks, c, j), np.int64)
    for i in range(n_chunks):
        pos[i] = np.where(s[i] >= 0, np.searchsorted(cols[i], np.maximum(s[i], 0)), 0)
    uidx = np.arange(c)[None, :, None] * u + pos
    return ucols, np.ascontiguousarray(uidx.transpose(0, 2, 1)).astype(np.int32)


def shares_patterns(n_rows: int, n_patterns: int, n_slots: int) -> bool:
    """Whether a bucket's blocks are factorised once per missingness pattern (then per row
    only a gather and a ``J x J`` matvec remain): when its patterns are shared by at least
    four rows on average (with fewer, the gathers cost more than the factorisations saved)."""
    return n_slots > 0 and 4 * n_patterns <= n_rows


def _pair_index(sp: np.ndarray, d: int) -> np.ndarray:
    """``(J^2, n)``: for each pair ``(a, b)`` of the slots ``sp`` ``(n, J)`` (-1 pads),
    ``s_a * D + s_b``, or past ``D * D`` on padded pairs (``D * D + (a == b)``)."""
    j = sp.shape[1]
    pairs = [np.where((sp[:, a] >= 0) & (sp[:, b] >= 0), sp[:, a] * d + sp[:, b],
                      d * d + (a == b)) for a in range(j) for b in range(j)]
    return (np.stack(pairs) if pairs else np.zeros((0, len(sp)), np.int64)).astype(np.int32)


def slot_ladder(n_features: int) -> tuple:
    """The bucket sizes (missing entries per row, padded up): 0-8 exactly, then 12, 16, 24,
    32, ... below ``n_features`` (a row misses at most ``n_features - 1``)."""
    top = max(n_features - 1, 0)
    sizes = list(range(9))
    s = 8
    while s < top:
        s = s + s // 2 if (s & (s - 1)) == 0 else 1 << s.bit_length()
        sizes.append(min(s, top))
    return tuple(j for j in sizes if j <= top)


def class_slot_ladder(n_features: int) -> tuple:
    """The bucket sizes of a layout in size classes (:func:`layout`, ``size_classes=True``):
    0, 1, 2, 4, 8, ... below ``n_features - 1``, then ``n_features - 1`` (a row misses at most
    that many). Fewer buckets than :func:`slot_ladder`: a smaller program, whose shape the
    data's largest number of missing entries per row moves less."""
    top = max(n_features - 1, 0)
    sizes = [0] + [1 << i for i in range(max(top, 1).bit_length()) if (1 << i) < top]
    return tuple(sizes + [top] if top else sizes)


#: Layouts of data with up to this many rows are in size classes (:func:`layout`): fits and
#: row results of such data share compiled programs; past it a fit runs long enough that a
#: compilation per data set costs little, and the exact layout's buckets run faster.
CLASS_MAX_ROWS = _sizes.PAD_MAX_ROWS


#: Size classes per doubling of the rows a size-class layout's buckets hold (coarser than the
#: rows' classes: each bucket's rows move with the data's holes).
TAIL_CLASSES_PER_OCTAVE = 2


def _tail_class(n: int) -> int:
    """The smallest ``2^(j / TAIL_CLASSES_PER_OCTAVE)``, rounded up to a multiple of 8, that
    is ``>= n`` (at least 16)."""
    return 16 if n <= 16 else _sizes._ladder_class(n, 8, TAIL_CLASSES_PER_OCTAVE)


#: The cumulative capacities (:func:`bucket_capacities`) of the size-class layouts made in
#: this process, newest last, by (rows class, buckets): later data whose rows fit one of them
#: (without doubling any bucket) takes it, and so the compiled program made for it.
_CAPACITIES: dict = {}
_MAX_CAPACITIES = 8


def rows_class(n: int, coarse: bool = False) -> int:
    """The rows a size-class layout of ``n`` rows holds at least: their
    :func:`emjax._sizes.size_class`, or with ``coarse`` (the per-row results, whose rows cost
    little and come in batches of any size) the next power of two, at least 256."""
    return _sizes.power_class(n) if coarse else _sizes.size_class(n)


def _fresh_capacities(tail: np.ndarray, coarse: bool = False) -> np.ndarray:
    """``CC_b`` from the rows needing bucket ``b`` or above, ``tail`` (``C_b``): above bucket
    0, room for three standard deviations more (a count of rows with holes at random), so
    that other data of the same kind fit, within the rows' class."""
    nb = len(tail)
    total = rows_class(int(tail[0]), coarse)
    cc = np.zeros(nb + 1, np.int64)
    for b in range(nb - 1, -1, -1):
        t = int(tail[b])
        cls = total if b == 0 else min(_tail_class(t + math.ceil(3 * math.sqrt(t)) + 8), total)
        cc[b] = max(cls, cc[b + 1] + 16)
    return cc[:-1]


def bucket_capacities(n_miss_bucket: np.ndarray, n_buckets: int,
                      coarse: bool = False) -> np.ndarray:
    """Rows each bucket of a size-class layout holds (``(n_buckets,)``, each at least 16), from
    each row's bucket ``n_miss_bucket``.

    ``C_b``, the rows needing bucket ``b`` or above, is padded to ``CC_b``:
    :func:`rows_class` for all rows (``coarse`` as there), else :func:`_tail_class`, and at
    least 16 more than ``CC_{b+1}``; bucket ``b`` holds ``CC_b - CC_{b+1}``. A row may sit in
    a bucket with more slots than it misses (padded slots), so the rows of ``C_b`` fit in
    buckets ``b`` and above whenever ``C_b <= CC_b``: a capacity made for earlier data of the
    same rows class is taken when the rows fit it and no ``CC_b`` is over twice this data's
    own (plus 64), so data sets of nearby sizes and similar holes share one program
    (:data:`_CAPACITIES`)."""
    counts = np.bincount(n_miss_bucket, minlength=n_buckets)[:n_buckets]
    tail = np.cumsum(counts[::-1])[::-1]  # C_b
    fresh = _fresh_capacities(tail, coarse)
    made = _CAPACITIES.setdefault((rows_class(int(tail[0]), coarse), n_buckets), [])
    fits = [cc for cc in made if np.all(cc >= tail) and np.all(cc <= 2 * fresh + 64)]
    if fits:
        cc = fits[-1]  # the newest
    else:
        if made and np.all(made[-1] <= 2 * fresh + 64):
            fresh = np.maximum(fresh, made[-1])  # also holds the data the last one was made for
        cc = fresh
        made.append(cc)
        del made[:-_MAX_CAPACITIES]
    return cc - np.append(cc[1:], 0)


def chunk_rows(n_components: int, n_features: int, n_slots: int, dtype) -> int:
    """Rows per chunk of a bucket: its per-row intermediates, about ``K (3 D + 3 J^2)`` values,
    within 1 MiB (cache-sized; in the fit's pass, smaller chunks measured no faster and larger
    ones slower, docs/missing.md), at least 16 rows."""
    per_row = n_components * (3 * n_features + 3 * n_slots * n_slots + 8)
    return int(max(16, min(4096, 2**20 // (per_row * np.dtype(dtype).itemsize))))


def check_missing(missing) -> str:
    if missing not in MISSING_OPTIONS:
        raise ValueError(f"missing must be one of {MISSING_OPTIONS}; got {missing!r}")
    return missing


def has_nan(X) -> bool:
    """Whether ``X`` (anything array-like) is a float array with a NaN entry."""
    try:
        arr = np.asarray(X)
        if arr.dtype == object:  # pandas' nullable dtypes: pd.NA is missing too
            arr = v.object_as_float(arr)
    except Exception:
        return False
    return bool(np.issubdtype(arr.dtype, np.floating) and np.isnan(arr).any())


def marginalizes(X, missing) -> bool:
    """Whether ``missing`` (checked) asks for marginalisation and ``X`` has NaN to marginalise:
    then the NaN-aware fit runs; otherwise the usual one (NaN in it then raise as usual)."""
    return check_missing(missing) == "marginalize" and has_nan(X)


def as_data_with_nan(X, name: str = "X", dtype=None, *, for_fit: bool = True) -> np.ndarray:
    """``X`` as a 2-D float array whose non-finite entries are only NaN (missing); rejects
    infinities, rows with nothing observed and (``for_fit``) columns never observed."""
    try:
        arr = np.asarray(X)
    except Exception as exc:
        raise ValueError(f"{name} could not be read as a numeric array: {exc}") from None
    if arr.dtype == object:  # pandas' nullable dtypes: pd.NA is missing too
        arr = v.object_as_float(arr, name)
    if not (
        np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)
    ):
        raise ValueError(f"{name} must be numeric; got dtype {arr.dtype} with shape {arr.shape}")
    if dtype is None:
        dtype = np.float32 if arr.dtype == np.float32 else np.float64
    if arr.ndim == 2:
        arr = arr.astype(dtype, copy=False)
        finite_or_nan = np.isfinite(arr) | np.isnan(arr)
        if not finite_or_nan.all():
            rows = np.flatnonzero(~finite_or_nan.all(axis=1))
            raise ValueError(f"{name} of shape {arr.shape} contains infinity in {rows.size} "
                             f"row(s): {', '.join(map(str, rows[:10]))}"
                             + (", ..." if rows.size > 10 else ""))
        clean = np.where(np.isnan(arr), 0, arr)
        v.as_data(clean, name, dtype)  # shape checks
        observed = ~np.isnan(arr)
        empty_rows = np.flatnonzero(~observed.any(axis=1))
        if empty_rows.size:
            shown = ", ".join(map(str, empty_rows[:10])) + (", ..." if empty_rows.size > 10
                                                             else "")
            raise ValueError(f"{name} of shape {arr.shape} has {empty_rows.size} row(s) with "
                             f"no observed value (all NaN): {shown}; drop them")
        empty_cols = np.flatnonzero(~observed.any(axis=0))
        if for_fit and empty_cols.size:
            raise ValueError(f"{name} of shape {arr.shape} has column(s) never observed (all "
                             f"NaN): {', '.join(map(str, empty_cols[:10]))}; drop them")
        return arr
    return v.as_data(arr, name, dtype)  # the usual shape errors


def check_weighted_columns(X: np.ndarray, sample_weight: np.ndarray | None,
                           name: str = "X") -> None:
    """Rejects the columns of ``X`` observed only in rows of weight 0: as a column never
    observed, they carry no information (the fit gave them NaN or arbitrary parameters)."""
    if sample_weight is None:
        return
    seen = (~np.isnan(X) & (np.asarray(sample_weight)[:, None] > 0)).any(axis=0)
    cols = np.flatnonzero(~seen)
    if cols.size:
        raise ValueError(f"{name} of shape {X.shape} has column(s) observed only in rows of "
                         f"sample_weight 0: {', '.join(map(str, cols[:10]))}; drop them")


def layout(X: np.ndarray, sample_weight: np.ndarray | None, n_components: int,
           covariance_type: str = "full", chunk_size: int | None = None,
           center: np.ndarray | None = None, features: bool = True,
           size_classes: bool = False, coarse: bool = False
           ) -> tuple[MissingData, np.ndarray]:
    """Sort the rows of ``X`` (NaN = missing, checked by :func:`as_data_with_nan`) into buckets
    by their number of missing entries (host side, NumPy).

    Args:
      X: ``(n_samples, n_features)`` float32/float64 with NaN for missing entries.
      sample_weight: optional ``(n_samples,)`` weights (checked by the caller).
      n_components: sets the chunk size (:func:`chunk_rows`).
      covariance_type: diagonal and spherical covariances need no slots (one bucket).
      chunk_size: optional rows per chunk (all buckets).
      center: optional ``(n_features,)`` centre (default: the weighted mean of the observed
        values of each column).
      features: build the fit's constant per-chunk arrays (``feats``, ``feats_t``, ``bidx``,
        ``pidx``; full and tied covariances only).
      size_classes: shapes that depend on sizes only, so that data sets of nearby sizes
        share one compiled program: every bucket of :func:`class_slot_ladder`, each holding
        :func:`bucket_capacities` rows (rows fill them from the most missing entries down),
        factorised per row, with every column in ``Lambda_k r`` (no pattern or column union
        shared, which depend on the data). The same values as the exact layout's, in another
        order.
      coarse: with ``size_classes``, the rows padded to a power of two (:func:`rows_class`).

    Returns:
      ``(data, rows)``: :class:`MissingData` (NumPy leaves) and ``rows`` ``(N',)``, the row of
      ``X`` at each position (-1 on padding rows).
    """
    n, d = X.shape
    dtype = X.dtype
    obs = ~np.isnan(X)
    w = np.ones(n, dtype) if sample_weight is None else np.asarray(sample_weight, dtype)
    if center is None:
        wo = obs * w[:, None]
        center = np.where(obs, X, 0).astype(np.float64).T @ w / np.maximum(wo.sum(0), 1e-300)
    center = np.asarray(center, dtype)
    n_miss = d - obs.sum(1)
    matrix = covariance_type in ("full", "tied")
    if matrix:
        ladder = class_slot_ladder(d) if size_classes else slot_ladder(d)
    else:
        ladder = (max(d - 1, 0),)
    ladder_arr = np.asarray(ladder)
    bucket_of = np.searchsorted(ladder_arr, n_miss) if matrix else np.zeros(n, np.int64)
    order = np.argsort(bucket_of, kind="stable")
    build = features and matrix
    iu, ju = np.triu_indices(d)
    xs, os_, ws, slots, rows = [], [], [], [], []
    feats, feats_t, bidx, pidx, pat, ppidx, pwin, ucols, uidx = ([] for _ in range(9))
    groups = []
    if size_classes:
        # from the most missing entries down, each bucket takes its capacity of rows
        caps = bucket_capacities(bucket_of, len(ladder), coarse)
        desc = np.argsort(-n_miss, kind="stable")
        end = np.cumsum(caps[::-1])[::-1]  # CC_b: rows in buckets b and above
        for b in range(len(caps) - 1, -1, -1):
            if caps[b]:
                above = int(end[b + 1]) if b + 1 < len(caps) else 0
                idx = np.sort(desc[above:above + int(caps[b])])
                groups.append((ladder[b] if matrix else 0, idx, int(caps[b])))
        groups.reverse()
    for b, j in enumerate(() if size_classes else ladder):
        idx = order[bucket_of[order] == b]
        if idx.size == 0:
            continue
        j = j if matrix else 0
        if build and j:
            # a bucket whose patterns are mostly a row's own: the rows of its patterns shared
            # by at least 4 rows, if a chunk's worth, make a bucket factorised per pattern
            _, inv, cnt = np.unique(~obs[idx], axis=0, return_inverse=True,
                                    return_counts=True)
            shared = cnt[inv.reshape(-1)] >= 4
            if (not shares_patterns(idx.size, len(cnt), j) and (~shared).any()
                    and shared.sum() >= (chunk_size or chunk_rows(n_components, d, j, dtype))):
                groups += [(j, idx[shared], idx[shared].size),
                           (j, idx[~shared], idx[~shared].size)]
                continue
        groups.append((j, idx, idx.size))
    for j, idx, capacity in groups:
        c = chunk_size or chunk_rows(n_components, d, j, dtype)
        c = int(min(c, capacity))
        n_chunks = -(-capacity // c)
        if size_classes:  # chunks of equal size, a multiple of 8: little padding past the class
            c = min(c, -(-capacity // (8 * n_chunks)) * 8)
        pad = n_chunks * c - idx.size
        s_b = np.full((idx.size, j), -1, np.int32)
        if j:
            miss = ~obs[idx]
            # missing coordinates first, in increasing order; -1 pads
            pos = np.cumsum(miss, axis=1) - 1
            r_i, c_i = np.nonzero(miss)
            s_b[r_i, pos[r_i, c_i]] = c_i
        uniq, inv = s_b[:1], np.zeros(idx.size, np.int64)
        if j and idx.size:
            # rows sorted by pattern: rows sharing one follow each other
            uniq, inv = np.unique(s_b, axis=0, return_inverse=True)
            inv = inv.reshape(-1)
            by_pattern = np.argsort(inv, kind="stable")
            idx, s_b, inv = idx[by_pattern], s_b[by_pattern], inv[by_pattern]
        o_b = obs[idx]
        x_b = np.where(o_b, X[idx] - center, 0).astype(dtype)
        xs.append(np.concatenate([x_b, np.zeros((pad, d), dtype)]))
        os_.append(np.concatenate([o_b.astype(dtype), np.ones((pad, d), dtype)]))
        ws.append(np.concatenate([w[idx], np.zeros(pad, dtype)]))
        slots.append(np.concatenate([s_b, np.full((pad, j), -1, np.int32)]).reshape(
            n_chunks, c, j))
        rows.append(np.concatenate([idx, np.full(pad, -1, np.int64)]))
        if build:
            xp, op, sp = xs[-1], os_[-1], slots[-1].reshape(n_chunks * c, j)
            f = np.concatenate([xp[:, iu] * xp[:, ju], xp, np.ones((len(xp), 1), dtype),
                                op.sum(1, keepdims=True)], axis=1).reshape(n_chunks, c, -1)
            feats.append(np.ascontiguousarray(f))
            feats_t.append(np.ascontiguousarray(f.reshape(n_chunks * c, -1).T))
            local = (np.arange(n_chunks * c) % c)[:, None]
            bidx.append(np.ascontiguousarray(
                (local * d + np.maximum(sp, 0)).astype(np.int32).reshape(n_chunks, c, j)
                .transpose(0, 2, 1)))
            pidx.append(np.ascontiguousarray(
                _pair_index(sp, d).reshape(j * j, n_chunks, c).transpose(1, 0, 2)))
            uc, ui = (np.zeros((n_chunks, 0), np.int32), np.zeros((n_chunks, j, 0), np.int32)) \
                if size_classes else _union_columns(slots[-1], d)
            ucols.append(uc)
            uidx.append(ui)
            if not size_classes and shares_patterns(idx.size, len(uniq), j):
                # the padding rows' pattern: every slot padded (an identity block). A chunk's
                # rows span a window of consecutive patterns (sorted): each row stores its
                # offset in the window
                pt = np.concatenate([inv, np.full(pad, len(uniq))]).reshape(n_chunks, c)
                p0 = pt.min(axis=1)
                width = int((pt.max(axis=1) - p0).max()) + 1
                pat.append((pt - p0[:, None]).astype(np.int32))
                pwin.append((p0[:, None] + np.arange(width)).astype(np.int32))
                # patterns factorised in chunks of the bucket's chunk size, padded likewise
                # (and past the last window's end)
                n_pc = -(-max(len(uniq) + 1, int(p0.max()) + width) // c)
                pp = np.concatenate([uniq, np.full((n_pc * c - len(uniq), j), -1)])
                ppidx.append(np.ascontiguousarray(
                    _pair_index(pp, d).reshape(j * j, n_pc, c).transpose(1, 0, 2)))
            else:
                pat.append(np.zeros((n_chunks, 0), np.int32))
                ppidx.append(np.zeros((0, j * j, c), np.int32))
                pwin.append(np.zeros((n_chunks, 0), np.int32))
    x_all, o_all = np.concatenate(xs), np.concatenate(os_)
    rows = np.concatenate(rows)
    real = rows >= 0
    init_rows = np.empty(rows_class(n, coarse) if size_classes else n, np.int32)
    init_rows[rows[real]] = np.flatnonzero(real)
    init_rows[n:] = np.flatnonzero(~real)[:1]  # a padding row (weight 0)
    data = MissingData(x_all, o_all, np.concatenate(ws), tuple(slots), center,
                       tuple(feats), tuple(feats_t), tuple(bidx), tuple(pidx), tuple(pat),
                       tuple(ppidx), tuple(pwin), tuple(ucols), tuple(uidx), init_rows)
    return data, rows


# ---------------------------------------------------------------------------------------------
# The missing blocks' factorisations, batched over (component, row): arrays (J, J, *batch)

#: Per-row results: blocks of at most this many missing entries are factorised by unrolled
#: elementwise code (a
#: few hundred operations at J = 6); larger ones by batched LAPACK calls, which compile in a
#: fraction of the time of unrolled J >= 8 code and run as fast (see docs/missing.md).
UNROLL_MAX_SLOTS = 6


class _Factor(NamedTuple):
    logdet: Array  # (*batch) log|A|
    z: Array  # (J, *batch) L^-1 b, so b^T A^-1 b = |z|^2
    y: Array  # (J, *batch) A^-1 b
    Li: Array | None  # (J, J, *batch) L^-1 (lower)
    V: Array | None  # (J, J, *batch) A^-1


def _factor_unrolled(A: Array, b: Array, floor: float, want: bool) -> _Factor:
    J = A.shape[0]
    L = [[None] * J for _ in range(J)]
    inv_d = [None] * J
    logdet = 0.0
    for j in range(J):
        s = A[j, j]
        for p in range(j):
            s = s - L[j][p] * L[j][p]
        s = jnp.maximum(s, floor * A[j, j])
        inv_d[j] = jax.lax.rsqrt(s)
        L[j][j] = s * inv_d[j]
        logdet = logdet + jnp.log(s)
        for i in range(j + 1, J):
            t = A[i, j]
            for p in range(j):
                t = t - L[i][p] * L[j][p]
            L[i][j] = t * inv_d[j]
    z = []
    for i in range(J):
        t = b[i]
        for p in range(i):
            t = t - L[i][p] * z[p]
        z.append(t * inv_d[i])
    y = [None] * J
    for i in reversed(range(J)):
        t = z[i]
        for p in range(i + 1, J):
            t = t - L[p][i] * y[p]
        y[i] = t * inv_d[i]
    logdet = jnp.broadcast_to(logdet, b.shape[1:])
    if not want:
        return _Factor(logdet, jnp.stack(z), jnp.stack(y), None, None)
    Li = [[None] * J for _ in range(J)]
    for j in range(J):
        Li[j][j] = inv_d[j]
        for i in range(j + 1, J):
            t = L[i][j] * Li[j][j]
            for p in range(j + 1, i):
                t = t + L[i][p] * Li[p][j]
            Li[i][j] = -t * inv_d[i]
    V = [[None] * J for _ in range(J)]
    for a in range(J):
        for c in range(a + 1):
            t = Li[a][a] * Li[a][c]
            for i in range(a + 1, J):
                t = t + Li[i][a] * Li[i][c]
            V[a][c] = V[c][a] = t
    zero = jnp.zeros_like(inv_d[0])
    Li_arr = jnp.stack([jnp.stack([Li[i][j] if j <= i else zero for j in range(J)])
                        for i in range(J)])
    return _Factor(logdet, jnp.stack(z), jnp.stack(y), Li_arr, jnp.stack([jnp.stack(r)
                                                                           for r in V]))


def _factor_lapack(A: Array, b: Array, floor: float, want: bool) -> _Factor:
    """Batched LAPACK Cholesky and triangular inverse (rows with many missing entries)."""
    J = A.shape[0]
    batch = A.shape[2:]
    M = jnp.moveaxis(A.reshape(J, J, -1), -1, 0)  # (B, J, J)
    L = jnp.linalg.cholesky(M)
    eye = jnp.broadcast_to(jnp.eye(J, dtype=A.dtype), M.shape)
    Li = solve_triangular(L, after(eye, L), lower=True)  # after: no LAPACK call beside another
    logdet = 2.0 * jnp.sum(jnp.log(diagonal(L)), axis=1)

    def back(a, lead):  # (B, *lead) -> (*lead, *batch)
        return jnp.moveaxis(a, 0, -1).reshape(lead + batch)

    # b's batch may be wider than A's (tied: A (c, 1), b (c, K)): broadcast as the unrolled form
    Lib = back(Li, (J, J))
    z = jnp.einsum("ij...,j...->i...", Lib, b)
    y = jnp.einsum("ij...,i...->j...", Lib, z)
    V = jnp.einsum("bij,bik->bjk", Li, Li) if want else None
    return _Factor(jnp.broadcast_to(back(logdet, ()), b.shape[1:]), z, y,
                   Lib if want else None, back(V, (J, J)) if want else None)


def _sweep(A: Array, b: Array, floor: Array) -> tuple[Array, Array, Array, Array]:
    """The sweep operator on ``[[A, b], [b^T, 0]]`` over the pivots of ``A`` ``(J, J, *batch)``
    (symmetric positive definite), ``b`` ``(J, *batch)``: ``(log|A|, A^-1 b, b^T A^-1 b,
    -A^-1)``.

    Each pivot is one elementwise update of the whole block, the same for every entry, in a
    loop: XLA:CPU fuses unrolled scalar recurrences (or unrolled pivots) into uneven loops that
    recompute. The pivots are those of the Cholesky factorisation, each at least ``floor``
    (broadcast against ``batch``).
    """
    J = A.shape[0]
    batch = b.shape[1:]

    def pivot(k, carry):
        M, v, q, logdet = carry
        col = jax.lax.dynamic_index_in_dim(M, k, axis=1, keepdims=False)  # (J, *batch)
        d = jnp.maximum(jax.lax.dynamic_index_in_dim(col, k, keepdims=False), floor)
        inv = 1.0 / d
        col = jax.lax.dynamic_update_index_in_dim(col, d, k, 0)
        w = col * inv
        bk = jax.lax.dynamic_index_in_dim(v, k, keepdims=False)
        M = M - col[:, None] * w[None, :]
        w = jax.lax.dynamic_update_index_in_dim(w, -inv, k, 0)
        M = jax.lax.dynamic_update_index_in_dim(M, w[None], k, 0)
        M = jax.lax.dynamic_update_index_in_dim(M, w[:, None], k, 1)
        v = jax.lax.dynamic_update_index_in_dim(v - col * (bk * inv), bk * inv, k, 0)
        return M, v, q - bk * bk * inv, logdet + jnp.log(d)

    zero = jnp.zeros(batch, b.dtype)
    M, v, q, logdet = jax.lax.fori_loop(0, J, pivot, (A, b, zero, zero))
    return logdet, v, -q, M


def _factor(A, b, floor, want):
    if A.shape[0] <= UNROLL_MAX_SLOTS:
        return _factor_unrolled(A, b, floor, want)
    return _factor_lapack(A, b, floor, want)


# ---------------------------------------------------------------------------------------------
# One chunk: log-densities of the observed entries and the conditional moments


class _Chunk(NamedTuple):
    x: Array  # (c, D)
    o: Array  # (c, D)
    w: Array  # (c,)
    s: Array  # (c, J) int32, -1 pads


class _Cond(NamedTuple):
    log_prob: Array  # (c, K) log N(x_o | mu_k[o], Sigma_k[oo])
    factor: _Factor | None  # of the missing blocks, batch (c, K) (tied: (c, 1)); y = -E[x_m] + mu_m


def _residual(params: GMMParams, ch: _Chunk, cond: _Cond) -> Array:
    """``E[x | x_o, k] - mu_k``, ``(c, K, D)``: ``x - mu_k`` on observed entries, ``-A^-1 b`` on
    missing ones (diagonal and spherical: 0 on missing ones)."""
    e = ch.o[:, None, :] * (ch.x[:, None, :] - params.means[None])
    if cond.factor is not None:
        for a, Za in enumerate(_slot_onehot(ch.s, ch.x.shape[1], ch.x.dtype)):
            e = e - cond.factor.y[a][:, :, None] * Za[:, None, :]
    return e


def _precision(params: GMMParams) -> Array:
    pc = params.covariance.precisions_cholesky
    return pc @ jnp.swapaxes(pc, -1, -2)


def _slot_onehot(s: Array, d: int, dtype) -> list:
    """``J`` arrays ``(c, D)``: 1 at each valid slot's coordinate."""
    return [(s[:, a, None] == jnp.arange(d)[None, :]).astype(dtype) for a in range(s.shape[1])]


def _cond_matrix(params: GMMParams, ch: _Chunk, want_moments: bool) -> _Cond:
    """Full and tied covariances: the observed marginal of each (row, component) and, with
    ``want_moments``, the conditional mean residual and covariance of its missing block."""
    x, o, s = ch.x, ch.o, ch.s
    c, d = x.shape
    means = params.means
    k = means.shape[0]
    dtype = x.dtype
    tied = isinstance(params.covariance, cov_lib.TiedCovariance)
    prec = _precision(params)  # (K, D, D) or (D, D)
    hi = jax.lax.Precision.HIGHEST
    r = x[:, None, :] - o[:, None, :] * means[None]  # (c, K, D), zero on missing entries
    if tied:
        g = jnp.dot(r.reshape(c * k, d), prec, precision=hi).reshape(c, k, d)
    else:
        # Lambda_k r = Lambda_k x - Lambda_k (o * mu_k): two plain GEMMs for all components
        P = jnp.transpose(prec, (1, 0, 2)).reshape(d, k * d)
        Q = jnp.transpose(means[:, :, None] * prec, (1, 0, 2)).reshape(d, k * d)
        g = (jnp.dot(x, P, precision=hi) - jnp.dot(o, Q, precision=hi)).reshape(c, k, d)
    quad = jnp.sum(r * g, axis=-1)  # (c, K) r^T Lambda r
    J = s.shape[1]
    log_det_u = cov_lib.log_det_precision_cholesky(params.covariance, d)
    const = jnp.sum(o, axis=1)[:, None] * math.log(2 * math.pi)
    if J == 0:
        return _Cond(-0.5 * (const + quad) + log_det_u, None)
    valid = s >= 0
    sc = jnp.maximum(s, 0)
    Z = _slot_onehot(s, d, dtype)
    # b = (Lambda r)_m, (J, c, K), by one-hot reductions (XLA:CPU gathers are scalar loops)
    b = jnp.stack([jnp.sum(g * Za[:, None, :], axis=-1) for Za in Z])
    # A = Lambda_mm, (J, J, c, K) (tied: (J, J, c, 1)): rows of K values gathered by position;
    # padded slots get an identity block
    pair = (sc[:, :, None] * d + sc[:, None, :]).transpose(1, 2, 0)  # (J, J, c)
    pvalid = (valid[:, :, None] & valid[:, None, :]).transpose(1, 2, 0)[..., None]
    table = prec.reshape(d * d, 1) if tied else jnp.transpose(prec.reshape(k, d * d))
    A = jnp.take(table, pair, axis=0)
    A = jnp.where(pvalid, A, jnp.eye(J, dtype=dtype)[:, :, None, None])
    floor = 10 * float(jnp.finfo(dtype).eps)
    f = _factor(A, b, floor, want_moments)
    lp = -0.5 * (const + f.logdet + quad - jnp.sum(f.z * f.z, axis=0)) + log_det_u
    return _Cond(lp, f)


def _log_prob_diag(params: GMMParams, ch: _Chunk) -> Array:
    """Diagonal and spherical covariances: ``log N(x_o | ...)`` as one GEMM of ``[x^2, x, o]``."""
    x, o = ch.x, ch.o
    var = params.covariance.covariances
    if var.ndim == 1:
        var = jnp.broadcast_to(var[:, None], params.means.shape)
    p = 1.0 / var
    mu = params.means
    const = mu * mu * p + jnp.log(var) + math.log(2 * math.pi)
    w = jnp.concatenate([-0.5 * p, mu * p, -0.5 * const], axis=1)  # (K, 3D)
    f = jnp.concatenate([x * x, x, o], axis=1)
    return jnp.dot(f, w.T, precision=jax.lax.Precision.HIGHEST)


def _chunk_log_prob(params: GMMParams, ch: _Chunk, want_moments: bool) -> _Cond:
    if isinstance(params.covariance, (cov_lib.FullCovariance, cov_lib.TiedCovariance)):
        return _cond_matrix(params, ch, want_moments)
    return _Cond(_log_prob_diag(params, ch), None)


def _chunk_stats_diag(params: GMMParams, ch: _Chunk, gw: Array):
    """Diagonal and spherical covariances: ``(nk, sx, sxx)`` of one chunk about the component
    means, from the weighted responsibilities ``gw`` ``(c, K)``: one GEMM of ``[x^2, x, o]``."""
    x, o = ch.x, ch.o
    d = x.shape[1]
    nk = jnp.sum(gw, axis=0)
    var = params.covariance.covariances
    var = jnp.broadcast_to(var[:, None], params.means.shape) if var.ndim == 1 else var
    mu = params.means
    G = jnp.dot(gw.T, jnp.concatenate([x * x, x, o], axis=1),
                precision=jax.lax.Precision.HIGHEST)  # (K, 3D)
    g2, g1, go = G[:, :d], G[:, d:2 * d], G[:, 2 * d:]
    sx = g1 - go * mu
    sxx = g2 - 2.0 * g1 * mu + go * mu * mu + (nk[:, None] - go) * var
    return nk, sx, sxx


def _chunks(data: MissingData):
    """``(start, n_chunks, chunk_rows, slots)`` of each bucket."""
    start = 0
    out = []
    for s in data.slots:
        n_chunks, c = s.shape[0], s.shape[1]
        out.append((start, n_chunks, c, s))
        start += n_chunks * c
    return out


def _get_chunk(data: MissingData, slots: Array, start, i, c) -> _Chunk:
    row = start + i * c
    sl = functools.partial(jax.lax.dynamic_slice_in_dim, start_index=row, slice_size=c)
    return _Chunk(sl(data.x), sl(data.observed), sl(data.weight),
                  jax.lax.dynamic_index_in_dim(slots, i, keepdims=False))


def _fold(data: MissingData, fn, carry):
    """``carry = fn(carry, chunk, row)`` over every chunk of every bucket."""
    for start, n_chunks, c, slots in _chunks(data):
        def body(i, cr, start=start, c=c, slots=slots):
            ch = _get_chunk(data, slots, start, i, c)
            # each chunk after the previous one: no two LAPACK calls at once (emjax._linalg)
            ch = ch._replace(x=after(ch.x, jax.tree_util.tree_leaves(cr)[0]))
            return fn(cr, ch, start + i * c)
        if n_chunks == 1:
            carry = body(0, carry)
        else:
            carry = jax.lax.fori_loop(0, n_chunks, body, carry)
    return carry


class _Tables(NamedTuple):
    """The parameters as the matrix pass reads them (built once per E-step)."""

    W: Array  # (F, K): feats @ W = log pi_k + log N(x | mu_k, Sigma_k), x completed by 0
    Wg: Array  # (D + 1, D K): [x, 1] @ Wg = Lambda_k (x - mu_k), entry d * K + k
    A: Array  # (D D + 2, K): Lambda_k[i, j] at row i * D + j, then a row of 0 and one of 1


def _tables(params: GMMParams) -> _Tables:
    mu = params.means
    k, d = mu.shape
    dtype = mu.dtype
    prec = jnp.broadcast_to(_precision(params), (k, d, d))
    iu, ju = np.triu_indices(d)
    scale = jnp.asarray(np.where(iu == ju, 1.0, 2.0), dtype)
    pm = jnp.einsum("kde,ke->kd", prec, mu)  # Lambda_k mu_k
    bias = (jnp.log(params.weights) + cov_lib.log_det_precision_cholesky(params.covariance, d)
            - 0.5 * jnp.sum(pm * mu, axis=1))
    W = jnp.concatenate([(-0.5 * prec[:, iu, ju] * scale).T, pm.T, bias[None],
                         jnp.full((1, k), -0.5 * math.log(2 * math.pi), dtype)], axis=0)
    Wg = jnp.concatenate([jnp.transpose(prec, (2, 1, 0)).reshape(d, d * k),
                          -pm.T.reshape(1, d * k)], axis=0)
    A = jnp.concatenate([prec.reshape(k, d * d).T, jnp.zeros((1, k), dtype),
                         jnp.ones((1, k), dtype)], axis=0)
    return _Tables(W, Wg, A)


def _matrix_pass(params: GMMParams, data: MissingData):
    """Full and tied covariances: the E-step fused with the moments, over the buckets' chunks.

    Each row is completed with 0 (the centre) at its missing entries. With ``r = x - mu_k``,
    ``b = (Lambda_k r)_m`` and ``A = (Lambda_k)_mm``, the log-density of the observed entries
    is that of the completed row (one GEMM of the constant features, as for complete data)
    plus ``(b^T A^-1 b - log|A|) / 2``, and ``E[x_m | x_o, k] = -A^-1 b``,
    ``Cov = A^-1``. Only the ``J x J`` block is factorised: once per (missingness pattern,
    component) in buckets whose patterns are shared (:func:`shares_patterns`; rows then gather
    ``A^-1`` and ``log|A|``), else per (row, component) (unrolled Cholesky up to
    :data:`UNROLL_MAX_SLOTS`, the sweep above). ``b`` and ``A`` are gathered from one GEMM and
    a table, the moments of the completion are two GEMMs with the features and a scatter of
    the ``J x J`` blocks.

    Returns:
      ``(nk, s1, s2, ll)``: ``sum g``, ``sum g E[x]``, ``sum g E[x x^T]`` (``(K, D, D)``), and
      ``log p(x_n,o)`` per row ``(N',)``.
    """
    k, d = params.means.shape
    dtype = data.x.dtype
    hi = jax.lax.Precision.HIGHEST
    nq = d * (d + 1) // 2
    nf = nq + d + 2
    tab = _tables(params)
    # the pivots' floor, as the unrolled factorisation's, against each precision's diagonal
    eps10 = 10 * float(jnp.finfo(dtype).eps)
    floor = eps10 * jnp.max(tab.A[:d * d:d + 1], axis=0)  # (K,)
    acc0 = (jnp.zeros((nf, k), dtype), jnp.zeros((d + 1, d * k), dtype),
            jnp.zeros((d * d + 2, k), dtype), jnp.zeros(data.x.shape[:1], dtype))
    carry = acc0
    start = 0
    Wg3 = tab.Wg.reshape(d + 1, d, k)
    for f_b, ft_b, bi_b, pi_b, s_b, pat_b, pp_b, pw_b, uc_b, ui_b in zip(
            data.feats, data.feats_t, data.bidx, data.pidx, data.slots, data.pat, data.ppidx,
            data.pwin, data.ucols, data.uidx):
        n_chunks, c, J = s_b.shape
        n_pat = pp_b.shape[0] * c
        if n_pat:
            # one factorisation per (pattern, component), by chunks of patterns; rows gather
            # -A^-1 and log|A|
            def factor(i, tabs, pp_b=pp_b, c=c, J=J):
                pp = jax.lax.dynamic_index_in_dim(pp_b, i, keepdims=False)
                Ap = tab.A.at[pp].get(mode="promise_in_bounds").reshape(J, J, c, k)
                logdet, _, _, ni = _sweep(Ap, jnp.zeros((J, c, k), dtype), floor)
                return (jax.lax.dynamic_update_slice_in_dim(tabs[0], logdet, i * c, 0),
                        jax.lax.dynamic_update_slice_in_dim(tabs[1], ni, i * c, 2))

            tabs = (jnp.zeros((n_pat, k), dtype), jnp.zeros((J, J, n_pat, k), dtype))
            logdet_p, ni_p = (factor(0, tabs) if pp_b.shape[0] == 1
                              else jax.lax.fori_loop(0, pp_b.shape[0], factor, tabs))
            # a row per pattern: -A^-1 then log|A|
            ptab = jnp.concatenate([jnp.transpose(ni_p, (2, 0, 1, 3)).reshape(n_pat, J * J * k),
                                    logdet_p], axis=1)
        else:
            ptab = None

        # The completed rows' log-densities of the whole bucket in one GEMM (large GEMMs run
        # faster than one per chunk, on every core), read by each chunk in place.
        lp_b = jnp.dot(f_b.reshape(n_chunks * c, nf), tab.W, precision=hi).reshape(
            n_chunks, c, k)

        def body(i, cr, lp_b=lp_b, ft_b=ft_b, bi_b=bi_b, pi_b=pi_b, s_b=s_b, c=c, J=J,
                 start=start, pat_b=pat_b, n_pat=n_pat, ptab=ptab, pw_b=pw_b, uc_b=uc_b,
                 ui_b=ui_b):
            g_buf, xh, shh, ll_buf = cr
            idx = functools.partial(jax.lax.dynamic_index_in_dim, index=i, keepdims=False)
            # the chunk's [x, 1]: columns of the completed rows' features, transposed
            x1t = jax.lax.dynamic_slice(ft_b, (nq, i * c), (d + 1, c))
            row = start + i * c
            w = jax.lax.dynamic_slice_in_dim(data.weight, row, c)
            lp = idx(lp_b)  # (c, K)
            if J:
                bi, pi = idx(bi_b), idx(pi_b)
                valid = (idx(s_b) >= 0).T.astype(dtype)[:, :, None]  # (J, c, 1)
                u = uc_b.shape[1]
                if u:
                    # Lambda_k r on the chunk's missing columns only
                    uc, bi = idx(uc_b), idx(ui_b)
                    Wg = Wg3.at[:, uc].get(mode="promise_in_bounds").reshape(d + 1, u * k)
                else:
                    u, Wg = d, tab.Wg
                xr = jax.lax.dynamic_slice_in_dim(data.x, row, c)  # the chunk's x, by rows
                G = (jnp.dot(xr, Wg[:d], precision=hi) + Wg[d]).reshape(c * u, k)
                b = G.at[bi].get(mode="promise_in_bounds") * valid  # (J, c, K)
                if n_pat:
                    # each row's pattern by a one-hot GEMM over the chunk's window of
                    # patterns (XLA:CPU gathers are scalar loops; exact: one term is nonzero)
                    width = pw_b.shape[1]
                    one = (idx(pat_b)[:, None] == jnp.arange(width)[None]).astype(dtype)
                    win = jax.lax.dynamic_slice_in_dim(ptab, idx(pw_b)[0], width, 0)
                    got = jnp.dot(one, win, precision=hi)
                    ni = got[:, :J * J * k].reshape(c, J, J, k)
                    logdet = got[:, J * J * k:]
                    y = -jnp.einsum("cabk,bck->ack", ni, b)  # A^-1 b
                    quad = jnp.einsum("ack,ack->ck", b, y)
                    neg_inv = jnp.transpose(ni, (1, 2, 0, 3))
                else:
                    A = tab.A.at[pi].get(mode="promise_in_bounds").reshape(J, J, c, k)
                    if J <= UNROLL_MAX_SLOTS:
                        # small blocks: the unrolled Cholesky, its outputs materialised
                        fu = _factor_unrolled(A, b, eps10, True)
                        logdet, y, quad, neg_inv = jax.lax.optimization_barrier(
                            (fu.logdet, fu.y, jnp.sum(fu.z * fu.z, axis=0), -fu.V))
                    else:
                        logdet, y, quad, neg_inv = _sweep(A, b, floor)
                lp = lp - 0.5 * (logdet - quad)
            ll, g = _lse_resp(lp)
            g = g * w[:, None]
            g_buf = jax.lax.dynamic_update_slice_in_dim(g_buf, g, i * c, 0)
            if J:
                # sum g h over rows, h = -A^-1 b on the missing entries, placed in (c, U, K)
                gh = -(g[None] * y)
                H = jnp.zeros((c * u, k), dtype).at[bi.reshape(-1)].add(
                    gh.reshape(J * c, k), mode="promise_in_bounds")
                xhc = jnp.dot(x1t, H.reshape(c, u * k), precision=hi)
                if u < d:  # padded union columns carry zeros
                    xh = xh.reshape(d + 1, d, k).at[:, uc].add(
                        xhc.reshape(d + 1, u, k), mode="promise_in_bounds").reshape(
                            d + 1, d * k)
                else:
                    xh = xh + xhc
                # + sum g (Cov + h h^T) on the missing block, scattered by position
                vals = g[None, None] * (y[:, None] * y[None, :] - neg_inv)
                shh = shh.at[pi.reshape(-1)].add(vals.reshape(J * J * c, k),
                                                 mode="promise_in_bounds")
            ll_buf = jax.lax.dynamic_update_slice_in_dim(ll_buf, ll, row, 0)
            return g_buf, xh, shh, ll_buf

        st, xh, shh, ll_buf = carry
        cr = (jnp.zeros((n_chunks * c, k), dtype), xh, shh, ll_buf)
        cr = body(0, cr) if n_chunks == 1 else jax.lax.fori_loop(0, n_chunks, body, cr)
        # the bucket's moments of the completed rows: one GEMM
        carry = (st + jnp.dot(ft_b, cr[0], precision=hi),) + cr[1:]
        start += n_chunks * c
    st, xh, shh, ll = carry
    iu, ju = np.triu_indices(d)
    xx = jnp.zeros((k, d, d), dtype).at[:, iu, ju].set(st[:nq].T)
    xx = xx + jnp.swapaxes(xx, 1, 2) - xx * jnp.eye(d, dtype=dtype)
    nk = st[nq + d]
    xh = xh.reshape(d + 1, d, k)
    cross = jnp.transpose(xh[:d], (2, 0, 1))  # sum g x_i h_j
    s1 = st[nq:nq + d].T + xh[d].T
    s2 = xx + cross + jnp.swapaxes(cross, 1, 2) + jnp.transpose(shh[:d * d]).reshape(k, d, d)
    return nk, s1, s2, ll


def _lse_resp(lp: Array) -> tuple[Array, Array]:
    """``(logsumexp(lp, 1), softmax(lp, 1))`` with one ``exp``."""
    m = jnp.max(lp, axis=1, keepdims=True)
    m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
    e = jnp.exp(lp - m)
    t = jnp.sum(e, axis=1, keepdims=True)
    return jnp.squeeze(m + jnp.log(t), 1), e / t


def e_step_stats(params: GMMParams, data: MissingData) -> tuple[SuffStats, Array]:
    """The E-step on the observed entries fused with the next M-step's statistics.

    Returns:
      ``(stats, log_likelihood)``: :class:`~emjax.gmm.SuffStats` about the current means
      (``ref = params.means``; the missing entries enter through their conditional means and
      covariances), and ``log p(x_n,o)`` per row ``(N',)`` (padding rows included).
    """
    k, d = params.means.shape
    dtype = data.x.dtype
    mu = params.means
    if isinstance(params.covariance, (cov_lib.FullCovariance, cov_lib.TiedCovariance)):
        if not data.feats:
            raise ValueError("full and tied covariances need layout(..., features=True)")
        nk, s1, s2, ll = _matrix_pass(params, data)
        sx = s1 - nk[:, None] * mu
        m1 = mu[:, :, None] * s1[:, None, :]
        sxx = s2 - m1 - jnp.swapaxes(m1, 1, 2) + nk[:, None, None] * mu[:, :, None] \
            * mu[:, None, :]
        return SuffStats(nk, sx, sxx, mu), ll
    log_w = jnp.log(params.weights)

    def fn(carry, ch, row):
        nk, sx, sxx, ll = carry
        wlp = _log_prob_diag(params, ch) + log_w[None, :]
        lse = logsumexp(wlp, axis=1)
        gw = jnp.exp(wlp - lse[:, None]) * ch.w[:, None]
        a, b_, c_ = _chunk_stats_diag(params, ch, gw)
        ll = jax.lax.dynamic_update_slice_in_dim(ll, lse, row, 0)
        return nk + a, sx + b_, sxx + c_, ll

    init = (jnp.zeros((k,), dtype), jnp.zeros((k, d), dtype), jnp.zeros((k, d), dtype),
            jnp.zeros(data.x.shape[:1], dtype))
    nk, sx, sxx, ll = _fold(data, fn, init)
    return SuffStats(nk, sx, sxx, mu), ll


def mean_log_likelihood(ll: Array, weight: Array) -> Array:
    return jnp.sum(weight * ll) / jnp.sum(weight)


def make_model(covariance_type: str, reg_covar: float, empty_threshold: float = 1e-3,
               active: Array | None = None):
    """The mixture with missing entries as :func:`emjax.em.run` sees it, over
    ``data = MissingData``: ``(e_step, m_step, repair)``.

    The E-step is :func:`e_step_stats` (the monitored value is the weighted mean observed-data
    log-likelihood); the M-step is :func:`emjax.gmm.params_from_stats` flagged as in
    :func:`emjax.fitting.m_step_from_stats`; ``repair`` re-seeds empty components at the
    worst-explained rows, their missing entries at the column means. ``active``: optional
    ``(n_components,)`` bool (traced), the components that exist, as in
    :func:`emjax.gmm.fitting.make_model` (the others: weight 0, never re-seeded).
    """
    def e_step(params, data):
        stats, ll = e_step_stats(params, data)
        k = params.means.shape[0]
        w = data.weight
        empty = reseed_lib.empty_components(stats.nk, w, empty_threshold)
        cand = jax.lax.cond(
            jnp.any(empty if active is None else empty & active),
            lambda ll: reseed_lib.worst_explained(ll, w, k), lambda ll: jnp.zeros((k,), jnp.int32),
            ll)
        return (stats, cand), mean_log_likelihood(ll, w)

    def m_step(estats, data):
        flagged = fitting.m_step_from_stats(estats[0], covariance_type=covariance_type,
                                            reg_covar=reg_covar)
        if active is None:
            return flagged
        return em.Flagged(steps.mask_params(flagged.params, active), flagged.flags)

    def repair(params, estats, data):
        return reseed_lib.reseed_empty(params, None, None, data.x, data.weight, nk=estats[0].nk,
                                    candidates=estats[1], covariance_type=covariance_type,
                                    empty_threshold=empty_threshold, active=active)

    return e_step, m_step, repair


# ---------------------------------------------------------------------------------------------
# Fitting


def _fit_program(data, key, initial, tol, n_active=None, *, options, callback,
                 sequential=False):
    # A traced n_active: the first n_active of options.n_components components exist, the
    # others are padding (fits of 2..8 components share one program).
    k, covariance_type, init_method, reg_covar, max_iter, n_init, n_lloyd = options
    d = data.x.shape[1]
    dtype = data.x.dtype
    # key: the fit's key, or the restarts' keys split on the host ((n_init, 2) raw key data)
    keys = _threefry.program_keys(key, n_init)
    e_step, m_step, repair = make_model(covariance_type, reg_covar,
                                        active=kmeans.active_centers(k, n_active))
    run = functools.partial(em.run_restarts, e_step, m_step, data=data, tol=tol,
                            max_iter=max_iter, repair=repair, callback=callback,
                            sequential=sequential)
    # the rows of X in order (then padding): the draws do not depend on the layout
    x0, w0 = ((data.x, data.weight) if data.init_rows is None
              else (data.x[data.init_rows], data.weight[data.init_rows]))
    init_kw = dict(covariance_type=covariance_type, init_params=init_method,
                   sample_weight=w0, n_lloyd=n_lloyd, n_active=n_active)

    def stats0(kk):
        # k-means and the first M-step on the mean-imputed data (x is zero at missing entries)
        return (fitting.init_stats(kk, x0, k, **init_kw), jnp.zeros((k,), jnp.int32))

    weights_init, means_init, cov_init = initial
    if initial.given:
        def initial(kk):
            p = m_step(stats0(kk), data).params
            if weights_init is not None:
                p = p._replace(weights=weights_init)
            if means_init is not None:
                p = p._replace(means=means_init - data.center)
            if cov_init is not None:
                p = p._replace(covariance=cov_init)
            return p

        res = run(jax.vmap(initial)(keys))
    else:
        cls = cov_lib.COVARIANCE_CLASSES[covariance_type]
        shape = cov_lib.covariance_shape(covariance_type, k, d)
        template = GMMParams(jnp.zeros((k,), dtype), jnp.zeros((k, d), dtype),
                             cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)))
        params0 = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (n_init,) + a.shape),
                                         template)
        res = run(params0, estats0_batched=jax.vmap(stats0)(keys))
    res = res._replace(params=res.params._replace(means=res.params.means + data.center))
    return em.best_restart(res)


#: The compiled fit, one per set of XLA options (:func:`emjax._xla.compiler_options`).
_fit_compiled = _xla.JitByOptions(_fit_program,
                                  static_argnames=("options", "callback", "sequential"))


def _component_class(X: np.ndarray, w: np.ndarray | None, options, initial, callback):
    """The components a fit runs with (:func:`emjax._sizes.component_class`: 2..8 padded to
    8 on small data, as :func:`emjax.fit`), or None (as asked)."""
    if initial.given or callback is not None or not _sizes.draws_per_index():
        return None
    n, d = X.shape
    return _sizes.component_class(options.n_components, n, d,
                                  n if w is None else int(np.count_nonzero(w)))


def _run_fit(X: np.ndarray, w: np.ndarray | None, key, initial, tol, options, callback,
             chunk_size=None):
    """Lay out ``X`` and run the compiled fit with the XLA options of its size (from the disk
    cache's store of whole programs when it is on): up to :data:`CLASS_MAX_ROWS` rows in size
    classes, components padded to their class."""
    n_components = options.n_components
    k_class = _component_class(X, w, options, initial, callback)
    if k_class is not None:
        options = options._replace(n_components=k_class)
    data, _ = layout(X, w, options.n_components, options.covariance_type, chunk_size,
                     size_classes=len(X) <= CLASS_MAX_ROWS)
    data = jax.device_put(data)
    n, d = data.x.shape
    xla = _xla.compiler_options("missing", n * d * options.n_components)
    static = dict(options=options, callback=callback,
                  sequential=_xla.sequential_restarts("missing"))
    n_active = None if k_class is None else np.int32(n_components)
    key = _threefry.restart_keys(key, options.n_init)  # the same keys, split on the host
    res = _fit_compiled.call(xla, (data, key, initial, jnp.asarray(tol, X.dtype), n_active),
                             static, "missing")
    if k_class is None:
        return res
    return jax.device_put(fitting.first_components(jax.tree_util.tree_map(np.asarray, res),
                                                   n_components))


def fit(
    X,
    n_components: int,
    *,
    key: Array | None = None,
    covariance_type: str = "full",
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    max_iter: int = 100,
    n_init: int = 1,
    init_params: str = "kmeans",
    weights_init=None,
    means_init=None,
    precisions_init=None,
    params_init: GMMParams | None = None,
    sample_weight=None,
    n_lloyd: int = 10,
    callback: Callable | None = None,
    chunk_size: int | None = None,
):
    """Fit a Gaussian mixture to data with missing entries (NaN) by EM on the observed-data
    likelihood: what ``emjax.fit(X, ..., missing="marginalize")`` runs when ``X`` has NaN.

    Arguments as in :func:`emjax.fit` (``chunk_size``: optional rows per chunk of the passes).
    The initialisation (``init_params``) runs on the mean-imputed data; EM then uses only the
    observed entries. ``log_likelihood`` and ``history`` are the weighted mean observed-data
    log-likelihood per row.

    Returns:
      :class:`emjax.gmm.fitting.FitResult`.

    Raises:
      ValueError: as :func:`emjax.fit`, and for infinities, rows with no observed value or
        columns never observed (or only in rows of sample weight 0).
    """
    # max_iter=0 initialises only, as emjax.fit (and GaussianMixture) document; an int seed as
    # raw key data (no program of its own builds the key)
    c = check_fit(X, n_components, key=v.as_key_data(key), covariance_type=covariance_type, tol=tol,
                  reg_covar=reg_covar, max_iter=max_iter, n_init=n_init, init_params=init_params,
                  n_lloyd=n_lloyd, sample_weight=sample_weight, weights_init=weights_init,
                  means_init=means_init, precisions_init=precisions_init,
                  params_init=params_init, min_iter=0, read=as_data_with_nan)
    check_weighted_columns(c.X, c.sample_weight)
    return _run_fit(c.X, c.sample_weight, c.key, c.initial, c.tol, c.options, callback,
                    chunk_size)


def fit_grid(X, n_components, *, key=None, covariance_type: str = "full", tol: float = 1e-3,
             reg_covar: float = 1e-6, max_iter: int = 100, n_init: int = 1,
             init_params: str = "kmeans", sample_weight=None, n_lloyd: int = 10,
             callback: Callable | None = None):
    """:func:`emjax.gmm.selection.fit_grid` for data with missing entries: one :func:`fit` per
    ``K`` (its restarts vmapped), returned as the same padded
    :class:`~emjax.gmm.selection.GridResult`. BIC and AIC use the observed-data
    log-likelihood and the usual parameter count."""
    import time

    from emjax.gmm import selection

    ks = selection._check_grid(n_components)
    k_max = max(ks)
    c = check_fit(X, k_max, key=v.as_key_data(key), covariance_type=covariance_type, tol=tol,
                  reg_covar=reg_covar, max_iter=max_iter, n_init=n_init, init_params=init_params,
                  n_lloyd=n_lloyd, sample_weight=sample_weight, read=as_data_with_nan)
    Xa, w = c.X, c.sample_weight
    check_weighted_columns(Xa, w)
    n, d = Xa.shape
    n_eff = float(n if w is None else np.sum(w))
    t0 = time.perf_counter()

    def fit_k(k):
        return _run_fit(Xa, w, c.key, c.initial, c.tol, c.options._replace(n_components=k),
                        callback)

    fits = [fit_k(k) for k in ks]
    fits = jax.device_get(fits)
    run_s = time.perf_counter() - t0

    def padded(p, k):
        if k == k_max:
            return p
        fill = steps.filler_params(covariance_type, k_max - k, d, Xa.dtype, p.weights.shape[:1])
        cov = p.covariance
        if covariance_type != "tied":
            cov = jax.tree_util.tree_map(lambda a, f: jnp.concatenate([a, f], 1), cov,
                                         fill.covariance)
        return GMMParams(jnp.concatenate([p.weights, fill.weights], 1),
                         jnp.concatenate([p.means, fill.means], 1), cov)

    params = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *[
        padded(f.restarts.params, k) for f, k in zip(fits, ks)])
    r = [f.restarts for f in fits]
    ll = np.stack([np.asarray(x.log_likelihood) for x in r])
    p_count = np.asarray([steps.n_parameters(covariance_type, k, d) for k in ks])
    bic = -2.0 * n_eff * ll + p_count[:, None] * math.log(n_eff)
    aic = -2.0 * n_eff * ll + 2.0 * p_count[:, None]
    return selection.GridResult(
        covariance_type=covariance_type, n_components=np.asarray(ks), params=params,
        active=np.arange(k_max)[None, :] < np.asarray(ks)[:, None], log_likelihood=ll,
        n_iter=np.stack([np.asarray(x.n_iter) for x in r]),
        converged=np.stack([np.asarray(x.converged) for x in r]),
        status=np.stack([np.asarray(x.status) for x in r]),
        history=np.stack([np.asarray(x.history) for x in r]), bic=bic, aic=aic,
        n_parameters=p_count, best_index=np.asarray([int(f.best_index) for f in fits]),
        compile_seconds=0.0, run_seconds=run_s)  # run_seconds includes any compilation


# ---------------------------------------------------------------------------------------------
# Using a fitted model on rows with missing entries


class RowResults(NamedTuple):
    """Per-row outputs of :func:`row_results`, in the rows of ``X``.

    Attributes:
      weighted_log_prob: ``(n_samples, n_components)`` ``log pi_k + log N(x_o | ...)``.
      imputed: ``(n_samples, n_features)`` ``X`` with every missing entry replaced by its
        conditional mean under the mixture, ``sum_k gamma_nk E[x_m | x_o, k]``.
      sampled: ``(n_samples, n_features)`` or None: ``X`` with the missing entries drawn from
        their conditional distribution (a component from the posterior, then a Gaussian).
    """

    weighted_log_prob: Array
    imputed: Array
    sampled: Array | None


def _rows_program(params: GMMParams, data: MissingData, key, *, sample: bool):
    k, d = params.means.shape
    n_rows = data.x.shape[0]
    dtype = data.x.dtype
    centred = params._replace(means=params.means - data.center)
    log_w = jnp.log(params.weights)
    matrix = isinstance(params.covariance, (cov_lib.FullCovariance, cov_lib.TiedCovariance))

    def fn(carry, ch, row):
        wlp_all, imp_all, smp_all = carry
        cond = _chunk_log_prob(centred, ch, True)
        wlp = cond.log_prob + log_w[None, :]
        gamma = jax.nn.softmax(wlp, axis=1)
        mu = centred.means
        # E[x | x_o, k] in centred coordinates, (c, K, D)
        cm = _residual(centred, ch, cond) + mu[None]
        imp = jnp.einsum("nk,nkd->nd", gamma, cm)
        out = (jax.lax.dynamic_update_slice_in_dim(wlp_all, wlp, row, 0),
               jax.lax.dynamic_update_slice_in_dim(imp_all, imp, row, 0), smp_all)
        if sample:
            k1, k2 = jax.random.split(jax.random.fold_in(key, row))
            z = jax.random.categorical(k1, wlp, axis=1)  # (c,)
            c = ch.x.shape[0]
            eps = jax.random.normal(k2, (c, d), dtype)
            sel = jax.nn.one_hot(z, k, dtype=dtype)  # (c, K)
            picked = jnp.sum(cm * sel[:, :, None], axis=1)
            J = ch.s.shape[1]
            if matrix and J:
                # x_m = mean + L^-T eps (Cov = A^-1 = L^-T L^-1), for the drawn component
                Li = cond.factor.Li
                Li = jnp.sum(Li * sel[None, None], axis=3) if Li.shape[3] == k else Li[..., 0]
                e_s = jnp.take_along_axis(eps, jnp.maximum(ch.s, 0), axis=1).T  # (J, c)
                noise = jnp.sum(Li * e_s[:, None], axis=0)  # (J, c)
                add = sum(noise[a][:, None] * Za
                          for a, Za in enumerate(_slot_onehot(ch.s, d, dtype)))
            elif matrix:
                add = jnp.zeros((c, d), dtype)
            else:
                var = centred.covariance.covariances
                var = jnp.broadcast_to(var[:, None], (k, d)) if var.ndim == 1 else var
                add = eps * jnp.sqrt(var[z]) * (1 - ch.o)
            smp = picked + add
            out = out[:2] + (jax.lax.dynamic_update_slice_in_dim(smp_all, smp, row, 0),)
        return out

    init = (jnp.zeros((n_rows, k), dtype), jnp.zeros((n_rows, d), dtype),
            jnp.zeros((n_rows, d), dtype) if sample else None)
    wlp, imp, smp = _fold(data, fn, init)
    return wlp, imp + data.center, None if smp is None else smp + data.center


#: One per set of XLA options (:func:`emjax._xla.compiler_options`), as the fit.
_rows_compiled = _xla.JitByOptions(_rows_program, static_argnames=("sample",))


def row_results(params: GMMParams, X, *, key: Array | None = None) -> RowResults:
    """Per-row log-probabilities, conditional-mean imputation and (with ``key``) conditional
    samples of the rows of ``X`` (NaN = missing) under ``params``; one compiled pass."""
    # the functional API's checks of the model (emjax._validation.check_model_data)
    v.check_params(params)
    v.check_model_x64(params)
    Xa = as_data_with_nan(X, dtype=np.dtype(params.means.dtype), for_fit=False)
    n, d = Xa.shape
    if d != params.means.shape[-1]:
        raise ValueError(f"X has {d} features (shape {Xa.shape}) but the model has "
                         f"{params.means.shape[-1]}")
    data, rows = layout(Xa, None, params.means.shape[0], params.covariance_type,
                        center=np.asarray(params.weights @ params.means, Xa.dtype),
                        features=False, size_classes=n <= CLASS_MAX_ROWS, coarse=True)
    data = jax.device_put(data)
    sample = key is not None
    options = _xla.compiler_options("missing", data.x.shape[0] * d * params.means.shape[0])
    wlp, imp, smp = _rows_compiled.call(options, (params, data, v.as_key(key)),
                                        dict(sample=sample), "missing_rows")
    keep = rows >= 0
    order = np.argsort(rows[keep])
    take = np.flatnonzero(keep)[order]
    # back in the rows of X on the host: device ops on these shapes would compile per size
    obs = ~np.isnan(Xa)

    def back(a, fill=False):
        if a is None:
            return None
        a = np.asarray(a)[take]
        return jax.device_put(np.where(obs, Xa, a) if fill else a)

    return RowResults(back(wlp), back(imp, True), back(smp, True))


def _lse_host(wlp: Array) -> tuple[np.ndarray, np.ndarray]:
    """``(logsumexp(wlp, 1), wlp - it)`` in NumPy: a device op on ``(n_samples, K)`` would
    compile per number of rows (and so would ``jnp.asarray`` of the result: ``device_put``)."""
    a = np.asarray(wlp)
    m = np.max(a, axis=1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    lse = m + np.log(np.sum(np.exp(a - m), axis=1, keepdims=True))
    return lse[:, 0], a - lse


def score_samples(params: GMMParams, X) -> Array:
    """``log p(x_n,o)``: each row's log-density of its observed entries, ``(n_samples,)``."""
    return jax.device_put(_lse_host(row_results(params, X).weighted_log_prob)[0])


def predict_proba(params: GMMParams, X) -> Array:
    """``p(z_n = k | x_n,o)``, ``(n_samples, n_components)``."""
    return jax.device_put(np.exp(_lse_host(row_results(params, X).weighted_log_prob)[1]))


def predict(params: GMMParams, X) -> Array:
    """The most probable component of each row given its observed entries."""
    return jax.device_put(np.argmax(np.asarray(row_results(params, X).weighted_log_prob), axis=1))


def impute(params: GMMParams, X, *, key: Array | None = None) -> Array:
    """``X`` with each missing entry (NaN) replaced by its conditional mean under the mixture,
    ``E[x_m | x_o] = sum_k p(k | x_o) E[x_m | x_o, k]``; with a PRNG ``key``, by a draw from
    the conditional distribution ``p(x_m | x_o)`` instead. Observed entries are returned as
    given.

    Examples:
      >>> import numpy as np, emjax
      >>> X = np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32)
      >>> X[::7, 1] = np.nan
      >>> res = emjax.fit(X, 2, missing="marginalize")
      >>> bool(np.isnan(emjax.impute(res.params, X)).any())
      False
    """
    rr = row_results(params, X, key=key)
    return rr.imputed if key is None else rr.sampled


__all__ = [
    "MISSING_OPTIONS",
    "MissingData",
    "RowResults",
    "e_step_stats",
    "fit",
    "fit_grid",
    "impute",
    "layout",
    "make_model",
    "predict",
    "predict_proba",
    "row_results",
    "score_samples",
]
