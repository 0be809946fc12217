"""The fast E-step: one chunked pass over the data that fuses the E-step with the next M-step's
sufficient statistics, in several layouts (transposed, feature rows, packed, whitened)."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from emjax._chunks import fold_chunks, rows
from emjax.gmm import covariance as cov_lib
from emjax.gmm.steps import GMMParams, SuffStats, _shift

Array = jax.Array

# ----------------------------------------------------------------------------------------------
# The fast path: one pass over the data in chunks, E-step and the next M-step's statistics fused.
#
# Every covariance type is written as "features of x" @ "matrices of the parameters": per chunk,
# ``log pi_k + log N(x | mu_k, Sigma_k) = q(x) @ Wq + l(x) @ Wl + b`` with quadratic features
# ``q`` (full: the packed upper-triangular outer products x_i x_j, i <= j, (chunk, D(D+1)/2);
# diagonal and spherical: x^2) and linear features ``l = x`` (tied: the whitened ``y = x U`` and
# ``q = -|y|^2 / 2`` added directly). The statistics are "responsibilities^T @ the same features"
# (two GEMMs per chunk give every moment). The (N, K, D) intermediate never exists; memory is
# O(chunk * (K + D^2)) on top of the data. Samples are centred inside each chunk (at the data's
# mean in the driver), so float32 keeps its digits.
#
# Measured on the 2-core AVX-512 CPU this was tuned on (XLA:CPU, jax 0.10; see
# experiments/profile_fast_path.py): the quadratic and linear parts go to separate GEMMs, because
# a concatenation of features is an index-remapping fusion that XLA:CPU emits as a scalar loop;
# in float32 with D <= 48 the packed outer products are formed as ``(x E1) * (x E2)`` with 0/1
# selection matrices (two small GEMMs and a plain elementwise product, all vectorised: 17 ms per
# iteration instead of 26 at N = 1e5, D = K = 16) instead of a gather ``x[:, iu] * x[:, ju]``
# (a scalar loop; float64 keeps it: its GEMMs are not faster than the gather); and the
# log-sum-exp takes one ``exp``.
#
# Past D = 48 in float32 (or with few components, 4 K <= D; see _mode) the packed features cost
# more than the whitening they replace, and the full covariances take the "whitened" form: one
# GEMM ``x @ [U_1 ... U_K]`` (D, K D) whitens the chunk for every component at once, ``log N``
# is minus half the squared norm of each D-block, and one GEMM ``[g_1 x ... g_K x]^T @ x`` gives
# every weighted second moment (float32, N = 3e4, K = 16, ms per E-step: D = 56: 61 against
# 157; D = 64: 65 against 251; D = 96: 134 against 345; at D = 48 the packed form is faster,
# 47 against 54; float64 measured no better than its gather, 72-154 against 75-143 at
# D = 48-64, so it keeps it).

DEFAULT_CHUNK_BYTES = 16 * 2**20
TRANSPOSED_CHUNK_BYTES = 256 * 2**10

#: Whether diagonal and spherical covariances run their chunk pass on the transposed data
#: (driver, N = 1e4 / 1e5, D = K = 16, ms per iteration, transposed against row-major:
#: float64 1.28 / 10.8 against 1.74 / 13.1, float32 0.66 / 5.8 against 0.95 / 6.1).
TRANSPOSED_DIAGONAL = True

#: Largest ``n_features`` for which the packed outer products are built by selection GEMMs
#: (float32, N = 1e5, K = 16, full, ms per iteration, selection vs gather: D = 8: 12.6 vs 14.1;
#: D = 24: 36 vs 55; D = 32: 104 vs 167; D = 48: 448 vs 744; larger D was not measured).
SELECT_GEMM_MAX_FEATURES = 48

#: Full covariances take the whitened form when ``FEW_COMPONENTS_RATIO * K <= D`` (see _mode).
FEW_COMPONENTS_RATIO = 4

#: Whether the packed full pass builds its products transposed, ``(T, chunk)`` from ``x^T``, with
#: both GEMMs in the plain orientation ``[Wq^T] @ q^T`` and ``q^T @ g`` (XLA:CPU runs them through
#: YNNPACK): with ``q`` as ``(chunk, T)`` XLA lays it out column-major and hands ``q @ Wq`` to
#: Eigen, whose transposed-operand GEMM took about 1.4 ms per 2048-row chunk, most of it outside
#: the profiled operation (driver, interleaved, ms per iteration, transposed against row
#: products: float64 N = 1e5, K = 16, D = 32 132 vs 177, D = 48 243 vs 326, K = 32 169 vs 226;
#: N = 1e6, D = 16 347 vs 442; D = 24 81 vs 81; float32 N = 3e5, D = 32 205 vs 258; N = 1e6,
#: D = 16 187 vs 187).
PACKED_TRANSPOSED = True

#: Whitened chunks of at most this many rows form the scatter as ``[g_1 x ... g_K x]^T @ x``
#: (the transpose of the weighted rows materialised, one plain GEMM) rather than
#: ``x^T @ [g_1 x ... g_K x]``, which XLA:CPU runs as Eigen's transposed-operand GEMM
#: (driver, interleaved, N = 1e5, ms per iteration, new against old: float32 D = 64, K = 16
#: 194 vs 202, K = 8 105 vs 114, K = 4 66 vs 67, D = 96 407 vs 449, D = 56 189 vs 190;
#: float64 D = 64, K = 8 219 vs 224, D = 32, K = 4 44 vs 46). In one large block the
#: transpose costs more than it saves (float32 D = 32, K = 4 43 vs 18; D = 16, K = 2 9.7 vs
#: 4.5), so it keeps the old form.
WHITENED_SCATTER_T_MAX_ROWS = 4096

#: The whitened pass runs in one block while its per-row intermediates, ``2 (K + 1) D`` values
#: (``y = x U``, the weighted rows ``[g_1 x ... g_K x]``, ``x - c`` and its slice), take at most
#: this many bytes over all samples: 128 MiB (driver, interleaved, N = 1e5, ms per iteration,
#: one block against the default chunks: float64 D = 16, K = 2 8.95 vs 13.7, K = 4 17.0 vs
#: 20.2; float32 D = 16, K = 2 4.6 vs 7.5, K = 4 8.0 vs 10.7; past it one block was slower:
#: float64 D = 32, K = 4 81 vs 66, float32 D = 64, K = 2 72.5 vs 66.5). With it, two changes to
#: the pass (driver, same runs, new against old): the squared norms ``|y_k|^2`` as one GEMM
#: with a block indicator instead of a reduce (float64 D = 16, K = 2 10.4 vs 14.4, K = 4 20.3
#: vs 38.4; float32 D = 32, K = 4 38.6 vs 61.7) and the scatter as ``x^T [g_k x]`` (float64
#: D = 16, K = 4 20.3 vs 37.5; float32 D = 64, K = 16 301 vs 348).
WHITENED_ONE_CHUNK_BYTES = 128 * 2**20

_HIGHEST = jax.lax.Precision.HIGHEST


#: Whether a driver builds the diagonal/spherical features once per fit and runs the
#: feature-row pass on them (:func:`feature_rows`) rather than the transposed pass; float32
#: keeps the transposed pass below :data:`FEATURE_ROWS_MIN_SAMPLES_F32` samples (driver,
#: interleaved, ms per iteration, feature rows against transposed, D = K = 16: float64 N = 1e4
#: diag 1.14 vs 1.19, spherical 0.98 vs 1.16; N = 1e5 diag 8.6 vs 12.1, spherical 6.8 vs 11.6,
#: D = 64 27.1 vs 34.2, K = 64 27.6 vs 35.5, K = 2 4.3 vs 4.4; float32 N = 1e5 diag 4.5 vs
#: 5.3, D = 64 11.7 vs 15.9, K = 64 12.8 vs 15.0; but float32 N = 1e4 diag 0.63 vs 0.58,
#: spherical 0.63 vs 0.49).
FEATURE_ROWS = True
FEATURE_ROWS_MIN_SAMPLES_F32 = 2**15


#: Full covariances (the packed form) take the feature-row pass while the features,
#: ``n_samples * (D(D+1)/2 + D + 1)`` values, fit in this many bytes: 256 MiB, speed for
#: memory at moderate sizes only (driver, interleaved, ms per iteration, feature rows against
#: the packed products built in every chunk: float32 N = 1e5, D = K = 16 13.6 vs 17.7, K = 8
#: 10.9 vs 14.7, K = 64 36.2 vs 53.8, D = 32 83 vs 115; float64 D = K = 16 29.5 vs 43.2,
#: N = 1e4 2.5 vs 3.4, D = 8 12.9 vs 26.7, K = 32 53.7 vs 65.3, K = 64 82.4 vs 112.9, but
#: D = 32 only 172 vs 183; the features of N = 1e6, D = 16 in float32 take 612 MiB, ten times
#: the data, and are not built).
FEATURE_ROWS_FULL_MAX_BYTES = 2**28

#: float64 features of at most this many bytes are held as row blocks, each with its
#: transpose materialised once per fit (:func:`feature_blocks`; twice the features' memory), and
#: the moments of a block are the plain GEMM ``f_b^T g`` (which XLA:CPU runs through YNNPACK)
#: instead of ``g^T f_b`` (Eigen's transposed-operand GEMM, 47 GFLOP/s at N = 1e5, D = 64):
#: 192 MiB. The blocks are separate arrays, read by an unrolled loop, because a slice of a
#: transposed array along its samples is a strided copy (the reason a single transposed array
#: measured slower past 4 MiB: N = 1e5, D = K = 16, 9.8 against 9.2 ms per iteration) and
#: even a row slice of the features is a copy (5 of 25 ms per iteration at N = 1e5, D = 64).
#: Prototype of the pass, float64, ms per iteration, blocks with transposes against the
#: sliced features: N = 1e5, K = 16, D = 64 16.4 vs 23.8, D = 32 11.4 vs 14.8, D = 16 7.1 vs
#: 7.9, full D = 16 23.7 vs 30.7; K = 64, D = 64 59 vs 69; N = 3e5, D = 16 31.4 vs 38.1,
#: D = 32 45.6 vs 53.3; but N = 1e6, D = 16 (264 MB of features) 115 vs 111, hence the bound.
#: In the driver (N = 1e5, K = 16, steady ms per iteration, as experiments/benchmark.py
#: measures it: ab_driver.py --iters 5 --iters2 25): D = 64 17.6 vs 22.8, D = 32 10.8 vs
#: 11.0, D = 16 6.0 vs 7.2, spherical D = 64 11.0 vs 11.0, full D = 16 20.4 vs 25.7, D = 8
#: 7.5 vs 8.7; K = 64 18.5 vs 23.7; N = 1e4 0.96 vs 0.98. Building them is a fixed cost of
#: each fit (a prototype, N = 1e5, D = 64: about 100 ms against 40 for the features alone,
#: most of it the first touch of the new memory).
FEATURE_BLOCKS_MAX_BYTES = 192 * 2**20

#: float32 takes the blocks with their transposes from this many components (Eigen's
#: ``g^T f`` is faster in float32 with few: driver, N = 1e5, steady ms per iteration, blocks
#: against sliced features: K = 16 diag D = 64 8.4 vs 7.0, D = 32 4.6 vs 3.9, D = 16 3.5 vs
#: 3.4, full 9.9 vs 10.1, spherical 2.9 vs 3.2; K = 32 diag 5.1 vs 5.5; K = 64 diag 7.0 vs
#: 11.4, D = 64 20.7 vs 31.6, full 25.2 vs 31.0, spherical 5.8 vs 10.1).
FEATURE_BLOCKS_MIN_COMPONENTS_F32 = 32


#: Rows per block of :func:`feature_blocks` at most (and at most :data:`FEATURE_CHUNK_BYTES`),
#: split evenly: with fewer, longer blocks the moments GEMM ``f_b^T g`` slows down (its
#: contraction runs over the rows; float64, N = 1e5, K = 16, steady ms per iteration, blocks
#: of 25000 rows against 100000 / 50000: D = 32 10.9 vs 14.6 / 14.6, D = 16 5.7 vs 6.7 / 5.9;
#: D = 64 18.6 with 25000-row blocks, 18.8 with 14286, 21.4 with 7692; D = 32, 12500 rows
#: 10.4).
FEATURE_BLOCK_ROWS = 32768

#: At least this many blocks (of at least :data:`FEATURE_MIN_BLOCK_ROWS` rows): the blocks'
#: operations are independent, so XLA:CPU runs two blocks side by side, one per core, where one
#: block's operations are too small to spread over both (float64, N = 1e4, D = K = 16, steady
#: ms per iteration, two blocks against one: diagonal 0.65 vs 0.90, spherical 0.51 vs 0.78,
#: full 1.34 vs 1.86; four blocks: diagonal 0.66, spherical 0.63; N = 3e4 diagonal 1.76 vs
#: 2.05; N = 3000, K = 32 spherical 0.33 vs 0.39).
FEATURE_MIN_BLOCKS = 2
FEATURE_MIN_BLOCK_ROWS = 1024


def feature_block_size(n_samples: int, n_columns: int, n_components: int,
                       itemsize: int) -> int:
    """Rows per block of :func:`feature_blocks` (see :data:`FEATURE_BLOCK_ROWS`)."""
    rows = min(FEATURE_BLOCK_ROWS, max(FEATURE_MIN_BLOCK_ROWS, FEATURE_CHUNK_BYTES // (
        itemsize * max(n_columns, n_components))))
    n_blocks = max(1, -(-n_samples // rows))
    if n_samples >= 2 * FEATURE_MIN_BLOCK_ROWS:
        n_blocks = max(n_blocks, FEATURE_MIN_BLOCKS)
    return -(-n_samples // n_blocks)


def moments_transposed(n_samples: int, n_columns: int, dtype, n_components: int = 0) -> bool:
    """Whether a driver holds the features as :func:`feature_blocks` with their transposes (see
    :data:`FEATURE_BLOCKS_MAX_BYTES`, :data:`FEATURE_BLOCKS_MIN_COMPONENTS_F32`)."""
    itemsize = jnp.dtype(dtype).itemsize
    wide = (jnp.dtype(dtype) == jnp.float64
            or n_components >= FEATURE_BLOCKS_MIN_COMPONENTS_F32)
    return wide and n_samples * n_columns * itemsize <= FEATURE_BLOCKS_MAX_BYTES


#: The chunk-pass modes (see :func:`_mode`) that can read :func:`feature_rows`.
_FEATURE_MODES = ("diag", "spherical", "full")


def _n_quadratic(covariance_type: str, d: int) -> int:
    return {"full": d * (d + 1) // 2, "spherical": 1}.get(covariance_type, d)


def feature_row_columns(covariance_type: str, d: int) -> int:
    """Columns of :func:`feature_rows`: ``[q, x - c, 1]``, ``nq + D + 1``."""
    return _n_quadratic(covariance_type, d) + d + 1


def feature_pass(covariance_type: str, dtype=jnp.float64, n_samples: int | None = None,
                 n_features: int | None = None, n_components: int | None = None) -> bool:
    """Whether a fit of this covariance type, dtype and size hands :func:`feature_rows` to the
    pass (see :data:`FEATURE_ROWS`, :data:`FEATURE_ROWS_FULL_MAX_BYTES`)."""
    if not FEATURE_ROWS or covariance_type not in _FEATURE_MODES:
        return False
    if covariance_type == "full":
        if n_samples is None or n_features is None or (
                _mode("full", n_features, dtype, n_components) != "full"):
            return False
        cols = feature_row_columns("full", n_features)
        return n_samples * cols * jnp.dtype(dtype).itemsize <= FEATURE_ROWS_FULL_MAX_BYTES
    small = n_samples is not None and n_samples < FEATURE_ROWS_MIN_SAMPLES_F32
    return jnp.dtype(dtype) != jnp.float32 or not small


def transposed_pass(covariance_type: str) -> bool:
    """Whether the chunk pass of this covariance type reads ``X^T`` (see
    :data:`TRANSPOSED_DIAGONAL`)."""
    return TRANSPOSED_DIAGONAL and covariance_type in ("diag", "spherical")


def _dot(a: Array, b: Array) -> Array:
    # Full precision on every backend (TPU and recent GPUs otherwise round float32 products).
    return jnp.matmul(a, b, precision=_HIGHEST)


def _tdot(a: Array, b: Array, materialise: bool | None = None) -> Array:
    """``a^T @ b``: ``(c, m), (c, n) -> (m, n)`` with ``c`` large and ``m`` small.

    ``materialise`` (default: float64 only): the transpose of ``a`` is materialised (``m * c``
    elements) behind an optimisation barrier and the product is a plain GEMM, which XLA:CPU runs
    through YNNPACK; otherwise one ``dot_general`` contracting the leading axes, which it hands
    to Eigen (interleaved A/B, N = 1e4, D = K = 16: float64 3.2 against 3.5 ms per iteration,
    spherical and diagonal; float32 goes the other way, 16.9 against 20.5 ms at N = 1e5, full;
    see WHITENED_SCATTER_T_MAX_ROWS for where float32 materialises too)."""
    if materialise is None:
        materialise = a.dtype == jnp.float64
    if materialise:
        return _dot(jax.lax.optimization_barrier(a.T), b)
    return jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())), precision=_HIGHEST)


def _dot_t(a: Array, b: Array) -> Array:
    """``(a @ b)^T`` with the product kept in the orientation given (the barrier keeps XLA from
    turning the transpose of the product back into ``b^T a^T``, a transposed-operand GEMM)."""
    return jax.lax.optimization_barrier(_dot(a, b)).T


def default_chunk_size(n_features: int, covariance_type: str = "full", itemsize: int = 4,
                       n_components: int = 16) -> int:
    """Rows per chunk, rounded down to a power of 2 and clipped to ``[256, 32768]``.

    Full and tied: the chunk's feature matrix takes about ``DEFAULT_CHUNK_BYTES`` (16 MiB;
    16384 rows for float32 full covariances at ``D = 16``; chunks of 8192-16384 rows measured
    fastest there, 4096 was 15 % slower and 65536 thrashes the cache). Diagonal and spherical
    (the transposed pass, :data:`TRANSPOSED_DIAGONAL`): its ``(2 max(D, K), chunk)`` blocks take
    about ``TRANSPOSED_CHUNK_BYTES`` (256 KiB: 1024 rows in float64 and 2048 in float32 at
    ``D = K = 16``, which measured fastest; 4096 rows were 1.3-1.5x slower, one 32768-row chunk
    up to 2.3x: these passes are elementwise work that must stay in the core's cache; float32,
    N = 1e5, ms per iteration: K = 32 8.0 against 12.2 with 2048 rows, K = 64 14.5 against
    20.5 with 1024, D = 64 15.4 against 27.7 with 1024)."""
    if transposed_pass(covariance_type):
        rows = TRANSPOSED_CHUNK_BYTES // (itemsize * 2 * max(n_features, n_components))
    else:
        cols = _n_feature_columns(covariance_type, n_features)
        rows = DEFAULT_CHUNK_BYTES // (itemsize * cols)
    return int(2 ** int(math.log2(max(256, min(32768, rows)))))


def _mode(covariance_type: str, d: int, dtype, k: int | None = None) -> str:
    """How the chunk pass forms the log-densities: the covariance type, or ``"whitened"`` for
    full covariances with few components, ``4 K <= D``, and float32 full covariances past
    :data:`SELECT_GEMM_MAX_FEATURES`: the packed features cost ``D(D+1)/2`` columns whatever
    ``K`` is, the whitened form ``K D`` (driver, N = 1e5, ms per iteration, whitened against
    packed: float32 D = 16: K = 2 7.2 vs 13.0, K = 4 11.4 vs 13.3, K = 8 19.3 vs 13.5; D = 32:
    K = 4 37 vs 85, K = 8 75 vs 92, K = 16 125 vs 102; float64 D = 16: K = 2 14.7 vs 26.8,
    K = 4 22.2 vs 30.0, K = 8 35.8 vs 34.7, K = 16 85 vs 45; D = 32, K = 16 188 vs 188)."""
    if covariance_type != "full":
        return covariance_type
    few = k is not None and FEW_COMPONENTS_RATIO * k <= d
    if few or (jnp.dtype(dtype) == jnp.float32 and d > SELECT_GEMM_MAX_FEATURES):
        return "whitened"
    return covariance_type


def _n_feature_columns(covariance_type: str, d: int) -> int:
    if covariance_type == "full":
        return d * (d + 1) // 2 + d
    if covariance_type == "tied":
        return 2 * d
    return 2 * d


def _triu(d: int):
    return np.triu_indices(d)


def _unpack_sym(packed: Array, d: int) -> Array:
    """``(..., D(D+1)/2)`` upper-triangular entries -> symmetric ``(..., D, D)``."""
    iu, ju = _triu(d)
    out = jnp.zeros(packed.shape[:-1] + (d, d), packed.dtype)
    out = out.at[..., iu, ju].set(packed)
    return out.at[..., ju, iu].set(packed)


def _packed_outer(x: Array) -> Array:
    """``(c, D) -> (c, D(D+1)/2)``: ``x_i x_j`` for ``i <= j`` in ``np.triu_indices`` order."""
    d = x.shape[-1]
    iu, ju = _triu(d)
    if d <= SELECT_GEMM_MAX_FEATURES and x.dtype == jnp.float32:
        t = iu.size
        e1 = np.zeros((d, t), x.dtype)
        e2 = np.zeros((d, t), x.dtype)
        e1[iu, np.arange(t)] = 1
        e2[ju, np.arange(t)] = 1
        # Exact: each output is one product with 1 plus exact zeros (the data are finite).
        return _dot(x, jnp.asarray(e1)) * _dot(x, jnp.asarray(e2))
    return x[:, iu] * x[:, ju]


class _Form(NamedTuple):
    """``log pi_k + log N(x | mu_k, Sigma_k) = q(x) @ wq + l(x) @ wl + b`` (see above)."""

    wq: Array | None  # (n_quadratic_features, K); None for tied (q = -|y|^2/2 added directly)
    wl: Array  # (D, K); whitened: the whitened means [mu_1 U_1 ... mu_K U_K], (K D,)
    b: Array  # (K,)
    u: Array | None  # tied: the shared precision Cholesky factor, l(x) = x U;
    #                  whitened: [U_1 ... U_K], (D, K D)


def _linear_form(params: GMMParams, c: Array, mode: str) -> _Form:
    """The parameters of the chunk GEMMs for data centred at ``c``."""
    cov = params.covariance
    means = params.means - c
    k, d = means.shape
    dtype = means.dtype
    log_det = cov_lib.log_det_precision_cholesky(cov, d)
    const = -0.5 * d * math.log(2 * math.pi) + log_det + jnp.log(params.weights)
    pc = cov.precisions_cholesky
    if mode == "whitened":
        u = jnp.transpose(pc, (1, 0, 2)).reshape(d, k * d)  # x @ u = [x U_1 ... x U_K]
        mu_u = jnp.einsum("kd,kde->ke", means, pc).reshape(k * d)
        return _Form(None, mu_u, const, u)
    if isinstance(cov, cov_lib.FullCovariance):
        prec = pc @ jnp.swapaxes(pc, -1, -2)  # (K, D, D) = U U^T
        iu, ju = _triu(d)
        scale = jnp.where(jnp.asarray(iu == ju), 1.0, 2.0).astype(dtype)
        wq = (-0.5 * prec[:, iu, ju] * scale).T  # (T, K)
        pm = jnp.einsum("kde,ke->kd", prec, means)  # P_k mu_k
        return _Form(wq, pm.T, const - 0.5 * jnp.sum(pm * means, axis=1), None)
    if isinstance(cov, cov_lib.TiedCovariance):
        m = means @ pc  # whitened means (K, D)
        return _Form(None, m.T, const - 0.5 * jnp.sum(m * m, axis=1), pc)
    prec = pc * pc if isinstance(cov, cov_lib.DiagCovariance) else (
        jnp.broadcast_to((pc * pc)[:, None], (k, d)))
    return _Form((-0.5 * prec).T, (means * prec).T,
                 const - 0.5 * jnp.sum(means * means * prec, axis=1), None)


def _log_joint(x: Array, form: _Form, mode: str) -> tuple[Array, Array | None]:
    """``(log pi_k + log N(x_n | mu_k, Sigma_k), q(x))`` of one centred chunk ``x``; the
    quadratic features ``q`` are reused by the statistics (None for tied and whitened; for
    packed full covariances ``q^T`` with :data:`PACKED_TRANSPOSED`)."""
    if mode == "whitened":
        y = _dot(x, form.u) - form.wl  # (c, K D): x U_k - mu_k U_k for every k
        k = form.b.shape[0]
        # |y_k|^2 for every k as one GEMM with the (K D, K) block indicator: XLA:CPU's reduce
        # of the (chunk, K, D) squares over D was the pass's slowest operation (see
        # WHITENED_ONE_CHUNK_BYTES for the A/B).
        blocks = np.repeat(np.eye(k, dtype=y.dtype), y.shape[1] // k, axis=0)
        return form.b - 0.5 * _dot(y * y, jnp.asarray(blocks)), None
    if mode == "tied":  # l = y = x U, the quadratic term is -|y|^2 / 2
        y = _dot(x, form.u)
        return _dot(y, form.wl) + form.b - 0.5 * jnp.sum(y * y, axis=1, keepdims=True), None
    if mode == "full" and PACKED_TRANSPOSED:  # q returned as q^T, (T, chunk)
        iu, ju = _triu(x.shape[1])
        xt = x.T
        qt = xt[iu] * xt[ju]
        wqt = jax.lax.optimization_barrier(form.wq.T)
        return _dot_t(wqt, qt) + _dot(x, form.wl) + form.b, qt
    q = _packed_outer(x) if mode == "full" else x * x
    return _dot(x, form.wl) + form.b + _dot(q, form.wq), q


def _logsumexp_resp(lp: Array, axis: int = 1) -> tuple[Array, Array]:
    """``(logsumexp(lp, axis), softmax(lp, axis))`` with one ``exp`` (shift as ``jax.nn``)."""
    m = jnp.max(lp, axis=axis, keepdims=True)
    m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
    e = jnp.exp(lp - m)
    s = jnp.sum(e, axis=axis, keepdims=True)
    return jnp.squeeze(m + jnp.log(s), axis), e / s


def _transposed_chunk(c: Array, form: _Form, with_stats: bool, spherical: bool = False):
    """The chunk function of diagonal and spherical covariances on ``X^T`` (``(D, N)``,
    transposed once per fit): a chunk is ``D`` contiguous rows of samples, the features
    ``f = [q; x]`` are written as two row blocks of one buffer, one GEMM ``[Wq^T Wl^T] @ f``
    gives the ``(K, chunk)`` log-densities, the log-sum-exp runs down the ``K`` rows
    (vectorised along the samples) and one GEMM ``g @ f^T`` gives every moment; no transpose
    inside the loop (see the measurements above :data:`TRANSPOSED_DIAGONAL`). Diagonal:
    ``q = x^2`` (``D`` rows); spherical: ``q = |x|^2`` (one row: its precision is the same in
    every direction; N = 1e5, D = K = 16, ms per iteration: float64 9.2 against 9.8, float32
    3.7 against 4.4, and 10.5 against 14.1 at D = 64), its statistic spread evenly over the
    ``D`` entries of ``sxx`` (only their sum is used)."""
    d = c.shape[0]
    nq = 1 if spherical else d
    wq = form.wq.T[:, :1] if spherical else form.wq.T  # spherical: the columns are equal
    w_cat = jnp.concatenate([wq, form.wl.T], axis=1)  # (K, nq + D)
    b = form.b[:, None]

    def one(xt, w):
        xt = xt - c[:, None]
        # Two in-place row-block writes: a concatenate of the same blocks is emitted as a
        # scalar loop (driver, N = 1e5, K = 16, ms per iteration, writes against concatenate:
        # float32 D = 16 5.1 vs 6.8, D = 64 13.9 vs 23.1; float64 D = 16 12.5 vs 14.4).
        q = jnp.sum(xt * xt, axis=0, keepdims=True) if spherical else xt * xt
        f = jnp.zeros((nq + d, xt.shape[1]), xt.dtype)
        f = jax.lax.dynamic_update_slice_in_dim(f, q, 0, 0)
        f = jax.lax.dynamic_update_slice_in_dim(f, xt, nq, 0)  # (nq + D, chunk) = [q; x]
        lp = _dot(w_cat, f) + b  # (K, chunk)
        if not with_stats:
            return jax.nn.logsumexp(lp, axis=0), None
        ll, g = _logsumexp_resp(lp, axis=0)
        if w is not None:
            g = g * w[None, :]
        st = jax.lax.dot_general(g, f, (((1,), (1,)), ((), ())), precision=_HIGHEST)
        sxx = st[:, :nq]
        if spherical:
            sxx = jnp.broadcast_to(sxx / d, (sxx.shape[0], d))
        return ll, (jnp.sum(g, axis=1), st[:, nq:], sxx)

    return one


#: Bytes of the widest ``(chunk, max(K, nq + D + 1))`` block of the feature-row pass (see
#: :func:`feature_rows`): 32 MiB, so that one chunk covers N = 1e5 in float64 at D = K = 16
#: (driver, 10.4 against 11.9 ms per iteration with 16 MiB chunks, whose slicing copies each
#: chunk). At N = 1e6 16 MiB measured faster (a prototype of the pass, ms per iteration: 90.6
#: with 65536-row chunks against 107 with 131072 and 113 in one block); not tuned further.
FEATURE_CHUNK_BYTES = 32 * 2**20

#: Features of at most this many bytes (the widest ``(N, max(K, nq + D + 1))`` block) are read
#: in one chunk: 64 MiB. Each chunk costs a copy (the dynamic slice is not fused into the
#: GEMMs), which one block avoids (driver, interleaved, ms per iteration, one chunk against
#: 32 MiB chunks, N = 1e5: float64 diag D = 32 13.6 vs 16.7, D = 8
#: full 10.6 vs 13.2, spherical D = 64 13.5 vs 17.0, K = 64 25.1 vs 26.3; float32 full
#: D = K = 16 15.0 vs 16.1, diag D = 64 11.8 vs 13.3). Larger features keep 32 MiB chunks: one
#: block of float64 diag D = 64 (103 MB) ran 28.6 against 28.9 ms and two blocks 31.2 against
#: 28.5, and 128 MiB changed nothing measurable (full D = K = 16 33.6 vs 33.4).
FEATURE_ONE_CHUNK_BYTES = 64 * 2**20


def _write_features(f: Array, x: Array, start, covariance_type: str) -> Array:
    """Rows ``start : start + len(x)`` of the features ``f`` (a buffer of ones) for the centred
    samples ``x``, as two block writes: XLA:CPU emits the equivalent concatenate as a scalar
    loop."""
    if covariance_type == "full":
        q = _packed_outer(x)
    elif covariance_type == "spherical":
        q = jnp.sum(x * x, axis=1, keepdims=True)
    else:
        q = x * x
    f = jax.lax.dynamic_update_slice(f, q, (start, 0))
    return jax.lax.dynamic_update_slice(f, x, (start, q.shape[1]))


def feature_rows(X: Array, center: Array, covariance_type: str) -> Array:
    """The per-sample features of the log-densities, ``[q, x - c, 1]`` with ``q = (x - c)^2``
    (diagonal, ``D`` columns), ``|x - c|^2`` (spherical, one column) or the packed products
    ``x_i x_j``, ``i <= j`` (full, ``D(D+1)/2`` columns): ``(n_samples, nq + D + 1)``.
    Constant during a fit whose centre is fixed, so a driver builds them once and hands them to
    :func:`e_step_stats` (``X_f``); every iteration is then one GEMM with the parameters (the
    ones column adds the bias), a row-wise log-sum-exp and one GEMM with the responsibilities
    (the ones column gives ``N_k``), in chunks large enough that each operation runs on all
    cores (compiled pass alone, N = 1e5, D = K = 16, ms per iteration: float64 diagonal 6.7
    against 10.6 for the transposed pass that builds the features in every chunk and 7.6
    without the ones column; float32 3.7 against 4.8). Costs ``(nq + D + 1) / D`` times the
    data's memory for the fit's duration (see :func:`feature_pass`)."""
    n, d = X.shape
    nq = _n_quadratic(covariance_type, d)
    f = jnp.ones((n, nq + d + 1), X.dtype)

    def block(f, start, size):
        return _write_features(f, rows(X, start, size) - center, start, covariance_type)

    # In blocks of about 16 MiB, so that building them needs no temporary of their size.
    chunk = max(256, DEFAULT_CHUNK_BYTES // (X.dtype.itemsize * (nq + d + 1)))
    return fold_chunks(block, f, n, chunk)


def feature_blocks(X: Array, center: Array, covariance_type: str,
                   block_size: int) -> tuple[Array, ...]:
    """:func:`feature_rows` as a tuple of row blocks of ``block_size`` rows (the last may be
    smaller), each a separate array: the pass reads them in an unrolled loop, so no block is
    sliced (copied) out of the features at every iteration (see
    :data:`FEATURE_BLOCKS_MAX_BYTES`; a driver hands their transposes as ``X_ft``)."""
    cols = feature_row_columns(covariance_type, X.shape[1])
    n = X.shape[0]
    out = []
    for start in range(0, n, block_size):
        size = min(block_size, n - start)
        f = jnp.ones((size, cols), X.dtype)
        out.append(_write_features(f, rows(X, start, size) - center, 0, covariance_type))
    return tuple(out)


def feature_chunk_size(n_samples: int, n_columns: int, n_components: int, itemsize: int) -> int:
    """Rows per chunk of the feature-row pass: all of them up to
    :data:`FEATURE_ONE_CHUNK_BYTES`, else about :data:`FEATURE_CHUNK_BYTES` per block, at least
    1024 rows, split evenly over ``n_samples`` (no small remainder chunk)."""
    if n_samples * max(n_columns, n_components) * itemsize <= FEATURE_ONE_CHUNK_BYTES:
        return n_samples
    rows = max(1024, FEATURE_CHUNK_BYTES // (itemsize * max(n_columns, n_components)))
    n_chunks = max(1, -(-n_samples // rows))
    return -(-n_samples // n_chunks)


def _feature_chunk(form: _Form, with_stats: bool, spherical: bool, d: int):
    """The chunk function of the feature-row pass: ``(ll, statistics)`` of a block of
    :func:`feature_rows` (one GEMM for the log-densities, one for every moment)."""
    nq = form.wq.shape[0] if not spherical else 1
    wq = form.wq[:1] if spherical else form.wq  # spherical: the rows of wq are equal
    w_cat = jnp.concatenate([wq, form.wl, form.b[None]], axis=0)  # (nq + D + 1, K)

    def one(fs, w):
        f, ft = fs
        lp = _dot(f, w_cat)  # (chunk, K), the bias from the ones column
        if not with_stats:
            return jax.nn.logsumexp(lp, axis=1), None
        ll, g = _logsumexp_resp(lp)
        if w is not None:
            g = g * w[:, None]
        if ft is None:
            st = jax.lax.dot_general(g, f, (((0,), (0,)), ((), ())), precision=_HIGHEST)
        else:
            st = _dot_t(ft, g)  # (K, nq + D + 1) from the plain GEMM ft @ g
        sxx = st[:, :nq]
        if spherical:
            sxx = jnp.broadcast_to(sxx / d, (sxx.shape[0], d))
        return ll, (st[:, -1], st[:, nq:nq + d], sxx)

    return one


def _row_chunk(c: Array, form: _Form, mode: str, with_stats: bool):
    """The chunk function of the row-major pass: ``(ll, statistics)`` of ``x`` (rows)."""

    def one(x, w):
        x = x - c
        lp, q = _log_joint(x, form, mode)
        if not with_stats:
            return jax.nn.logsumexp(lp, axis=1), None
        ll, g = _logsumexp_resp(lp)
        if w is not None:
            g = g * w[:, None]
        nk = jnp.sum(g, axis=0)
        if mode == "tied":
            # The pooled scatter (one D x D GEMM) instead of K per-component ones.
            xw = x if w is None else x * w[:, None]
            return ll, (nk, _tdot(g, x), _tdot(xw, x))
        if mode == "whitened":
            # Every component's weighted scatter in one GEMM: in small chunks [g_k x]^T x,
            # (K D, D), else x^T [g_k x] with x first, the operand _tdot transposes, because x is
            # K times smaller (see WHITENED_SCATTER_T_MAX_ROWS).
            gx = (g[:, :, None] * x[:, None, :]).reshape(x.shape[0], -1)
            k, d = g.shape[1], x.shape[1]
            if x.shape[0] <= WHITENED_SCATTER_T_MAX_ROWS:
                sxx = _tdot(gx, x, materialise=True)
            else:
                sxx = _tdot(x, gx).reshape(d, k, d).transpose(1, 0, 2).reshape(k * d, d)
            return ll, (nk, _tdot(g, x), sxx)
        sq = _dot_t(q, g) if mode == "full" and PACKED_TRANSPOSED else _tdot(g, q)
        return ll, (nk, _tdot(g, x), sq)

    return one


def _chunk_pass(params: GMMParams, X: Array, sample_weight: Array | None, chunk_size: int,
                with_stats: bool, center: Array | None = None, X_t: Array | None = None,
                X_f: Array | None = None, X_ft: Array | None = None):
    """Per-sample log-likelihood ``(N,)`` and, if ``with_stats``, the statistics about the centre
    ``c`` as ``(nk (K,), sum g l(x) (K, D), sum g q(x) (K, T))``; for tied the last is the pooled
    scatter ``sum w x x^T`` (D, D) and the second ``sum g x``."""
    n, d = X.shape
    dtype = X.dtype
    mode = _mode(cov_lib.covariance_type_of(params.covariance), d, dtype, params.means.shape[0])
    c = (_shift(params) if center is None else jax.lax.stop_gradient(center)).astype(dtype)
    form = jax.tree_util.tree_map(lambda a: a.astype(dtype), _linear_form(params, c, mode))
    if X_f is not None and mode in _FEATURE_MODES:
        one = _feature_chunk(form, with_stats, mode == "spherical", d)

        def take(start, size):
            if X_ft is None or not with_stats:
                return rows(X_f, start, size), None
            ft = X_ft if size == n else jax.lax.dynamic_slice_in_dim(X_ft, start, size, 1)
            return rows(X_f, start, size), ft
    elif transposed_pass(mode):
        xt_all = X.T if X_t is None else X_t
        one = _transposed_chunk(c, form, with_stats, mode == "spherical")

        def take(start, size):
            return jax.lax.dynamic_slice_in_dim(xt_all, start, size, 1)
    else:
        one = _row_chunk(c, form, mode, with_stats)

        def take(start, size):
            return rows(X, start, size)

    if isinstance(X_f, tuple) and mode in _FEATURE_MODES:
        # Row blocks (feature_blocks), each with its transpose if X_ft is given: an unrolled
        # loop over separate arrays, nothing sliced.
        fts = X_ft if X_ft is not None and with_stats else (None,) * len(X_f)
        lls, acc, start = [], None, 0
        for f, ft in zip(X_f, fts):
            size = f.shape[0]
            ll, st = one((f, ft), rows(sample_weight, start, size))
            lls.append(ll)
            acc = st if acc is None else jax.tree_util.tree_map(jnp.add, acc, st)
            start += size
        if start != n:
            raise ValueError(f"feature blocks cover {start} rows, X has {n}")
        return jnp.concatenate(lls) if len(lls) > 1 else lls[0], acc, c

    if with_stats:
        _, acc0 = jax.eval_shape(lambda: one(take(0, 1), rows(sample_weight, 0, 1)))
        acc0 = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), acc0)
    else:
        acc0 = None

    def part(carry, start, size):
        ll_buf, acc = carry
        ll, st = one(take(start, size), rows(sample_weight, start, size))
        ll_buf = jax.lax.dynamic_update_slice_in_dim(ll_buf, ll, start, 0)
        if st is not None:
            acc = jax.tree_util.tree_map(jnp.add, acc, st)
        return ll_buf, acc

    carry = fold_chunks(part, (jnp.zeros((n,), dtype), acc0), n, chunk_size)
    return carry[0], carry[1], c


def pass_chunk_size(n_samples: int, n_features: int, n_components: int, covariance_type: str,
                    dtype, features: bool = False) -> int:
    """The rows per chunk :func:`e_step_stats` takes by default: :func:`feature_chunk_size`
    when the pass reads :func:`feature_rows` (``features``), one block for the whitened form
    within :data:`WHITENED_ONE_CHUNK_BYTES`, else :func:`default_chunk_size`."""
    n, d, k = n_samples, n_features, n_components
    itemsize = jnp.dtype(dtype).itemsize
    mode = _mode(covariance_type, d, dtype, k)
    if features and mode in _FEATURE_MODES:
        return feature_chunk_size(n, feature_row_columns(covariance_type, d), k, itemsize)
    if mode == "whitened" and n * 2 * (k + 1) * d * itemsize <= WHITENED_ONE_CHUNK_BYTES:
        return n
    return default_chunk_size(d, covariance_type, itemsize, k)


def e_step_stats(
    params: GMMParams,
    X: Array,
    sample_weight: Array | None = None,
    *,
    chunk_size: int | None = None,
    center: Array | None = None,
    X_t: Array | None = None,
    X_f: Array | None = None,
    X_ft: Array | None = None,
) -> tuple[SuffStats, Array]:
    """E-step fused with the next M-step's sufficient statistics, in one chunked pass over ``X``.

    Equivalent to ``gamma = e_step(params, X)[0]`` followed by
    ``suff_stats(gamma, X, ref, covariance_type=..., sample_weight=...)`` with ``ref`` the
    weighted mean of the means (broadcast to ``(K, D)``), but without ever forming
    ``(n_samples, n_components)`` responsibilities or ``(K, N, D)`` differences: each chunk of
    ``chunk_size`` rows is turned into features (full: the packed outer products ``x_i x_j``,
    ``i <= j``, and ``x``), one GEMM with the parameters gives every log-density, and one GEMM of
    the responsibilities with the same features gives every moment; the moments are summed over
    chunks. ``params_from_stats(stats, ...)`` then completes the M-step. The precision Cholesky
    factors are used as stored (no factorisation in the E-step).

    For ``"tied"`` covariances ``stats.sxx[0]`` holds the pooled scatter
    ``sum_n w_n (x_n - ref)(x_n - ref)^T`` and the other entries are zero: only the sum over
    components is meaningful (it is all :func:`params_from_stats` needs). Likewise for
    ``"spherical"`` only the sum of each row of ``stats.sxx`` over the features is computed
    (``sum_n w_n gamma_nk |x_n - ref_k|^2``, spread evenly over the row).

    Args:
      params: the mixture.
      X: ``(n_samples, n_features)``.
      sample_weight: optional ``(n_samples,)`` non-negative weights.
      chunk_size: static rows per chunk (default :func:`pass_chunk_size`); any value works, a
        remainder chunk handles ``n_samples % chunk_size``.
      center: optional ``(n_features,)`` point subtracted from every chunk (and the reference
        point of the statistics); default the weighted mean of the means. A fixed centre (e.g.
        the data's mean) makes the pass the same function of ``params`` at every iteration.
      X_t: optional ``X.T`` (``(n_features, n_samples)``), read by the diagonal and spherical
        pass instead of transposing ``X`` (a driver transposes once per fit, not per pass:
        N = 1e5, D = K = 16, float64, the transpose is 0.95 of 13.1 ms per iteration).
      X_f: optional :func:`feature_rows` ``(X, center, covariance_type)`` (so ``center`` must be
        given with it), read by the diagonal, spherical and packed full pass instead of ``X``:
        the driver's form, faster than building the features in every chunk (see
        :func:`feature_rows`); chunks then default to :func:`feature_chunk_size`.
        ``X_f`` may also be a tuple of row blocks, :func:`feature_blocks` (read block by
        block, ``chunk_size`` unused).
      X_ft: optional ``X_f.T`` (or, with blocks, the tuple of their transposes), materialised
        once by the driver: the moments are then the GEMM ``X_ft @ g`` (see
        :data:`FEATURE_BLOCKS_MAX_BYTES`). Read only with ``X_f``.

    Returns:
      ``(stats, log_likelihood)``: :class:`SuffStats` (moments about ``ref``) and the per-sample
      ``log p(x_n)`` of shape ``(n_samples,)``.
    """
    ctype = cov_lib.covariance_type_of(params.covariance)
    n, d = X.shape
    k = params.means.shape[0]
    mode = _mode(ctype, d, X.dtype, k)
    if chunk_size is None:
        chunk_size = pass_chunk_size(n, d, k, ctype, X.dtype, X_f is not None)
    ll, acc, c = _chunk_pass(params, X, sample_weight, chunk_size, True, center, X_t, X_f,
                            X_ft)
    ref = jnp.broadcast_to(c, (k, d))
    nk, sx = acc[0], acc[1]
    if mode == "whitened":
        sxx = acc[2].reshape(k, d, d)
        sxx = 0.5 * (sxx + jnp.swapaxes(sxx, 1, 2))  # symmetric up to rounding
    elif ctype == "full":
        sxx = _unpack_sym(acc[2], d)
    elif ctype == "tied":
        sxx = jnp.zeros((k, d, d), X.dtype).at[0].set(acc[2])
    else:
        sxx = acc[2]
    return SuffStats(nk, sx, sxx, ref), ll


def score_samples_chunked(params: GMMParams, X: Array, *,
                          chunk_size: int | None = None) -> Array:
    """:func:`score_samples` by the chunked GEMM path: ``log p(x_n)``, shape ``(n_samples,)``."""
    ctype = cov_lib.covariance_type_of(params.covariance)
    if chunk_size is None:
        chunk_size = default_chunk_size(X.shape[1], ctype, X.dtype.itemsize,
                                        params.means.shape[0])
    return _chunk_pass(params, X, None, chunk_size, False)[0]

