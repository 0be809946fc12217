"""The fused E-step: one chunked pass over the data that fuses the E-step with the next M-step's
sufficient statistics, in the layouts and forms a :class:`~emjax.gmm.plan.PassPlan` selects."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from emjax._chunks import fold_chunks, rows
from emjax.gmm import covariance as cov_lib
from emjax.gmm.plan import PassPlan, feature_row_columns, make_plan, n_quadratic
from emjax.gmm.steps import GMMParams, SuffStats, _shift

Array = jax.Array

# ----------------------------------------------------------------------------------------------
# Every covariance type is written as "features of x" @ "matrices of the parameters": per chunk,
# ``log pi_k + log N(x | mu_k, Sigma_k) = q(x) @ Wq + l(x) @ Wl + b`` with quadratic features
# ``q`` (packed full: the upper-triangular outer products x_i x_j, i <= j, (chunk, D(D+1)/2);
# diagonal and spherical: x^2) and linear features ``l = x`` (tied: the whitened ``y = x U`` and
# ``q = -|y|^2 / 2`` added directly; whitened full: ``x @ [U_1 ... U_K]``, minus half the squared
# norm of each D-block). The statistics are "responsibilities^T @ the same features" (two GEMMs
# per chunk give every moment). The (N, K, D) intermediate never exists; memory is
# O(chunk * (K + D^2)) on top of the data. Samples are centred inside each chunk (at the data's
# mean in the driver), so float32 keeps its digits. The quadratic and linear parts go to
# separate GEMMs (a concatenation of features is a scalar loop on XLA:CPU), and the log-sum-exp
# takes one ``exp``. Which layout, form and chunking runs is the plan's choice
# (:func:`emjax.gmm.plan.make_plan`); the measurements behind it are in docs/performance.md.

_HIGHEST = jax.lax.Precision.HIGHEST
#: Rows of feature rows written per block while building them: no temporary of their size.
_BUILD_BYTES = 16 * 2**20


def _dot(a: Array, b: Array) -> Array:
    # Full precision on every backend (TPU and recent GPUs otherwise round float32 products).
    return jnp.matmul(a, b, precision=_HIGHEST)


def _tdot(a: Array, b: Array, materialise: bool) -> Array:
    """``a^T @ b``: ``(c, m), (c, n) -> (m, n)`` with ``c`` large and ``m`` small.

    ``materialise``: the transpose of ``a`` is materialised behind an optimisation barrier and
    the product is a plain GEMM (XLA:CPU runs it through YNNPACK rather than Eigen's
    transposed-operand GEMM); otherwise one ``dot_general`` contracting the leading axes."""
    if materialise:
        return _dot(jax.lax.optimization_barrier(a.T), b)
    return jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())), precision=_HIGHEST)


def _dot_t(a: Array, b: Array) -> Array:
    """``(a @ b)^T`` with the product kept in the orientation given (the barrier keeps XLA from
    turning the transpose of the product back into ``b^T a^T``, a transposed-operand GEMM)."""
    return jax.lax.optimization_barrier(_dot(a, b)).T


def _triu(d: int):
    return np.triu_indices(d)


def _unpack_sym(packed: Array, d: int) -> Array:
    """``(..., D(D+1)/2)`` upper-triangular entries -> symmetric ``(..., D, D)``."""
    iu, ju = _triu(d)
    out = jnp.zeros(packed.shape[:-1] + (d, d), packed.dtype)
    out = out.at[..., iu, ju].set(packed)
    return out.at[..., ju, iu].set(packed)


def _packed_outer(x: Array, products: str = "gather") -> Array:
    """``(c, D) -> (c, D(D+1)/2)``: ``x_i x_j`` for ``i <= j`` in ``np.triu_indices`` order.

    ``products="select_gemm"``: as ``(x E1) * (x E2)`` with 0/1 selection matrices (two small
    GEMMs and an elementwise product, vectorised where XLA:CPU emits the gather as a scalar
    loop); ``"gather"``: ``x[:, iu] * x[:, ju]``."""
    d = x.shape[-1]
    iu, ju = _triu(d)
    if products == "select_gemm":
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


def _linear_form(params: GMMParams, c: Array, form: str) -> _Form:
    """The parameters of the chunk GEMMs for data centred at ``c``."""
    cov = params.covariance
    means = params.means - c
    k, d = means.shape
    dtype = means.dtype
    log_det = cov_lib.log_det_precision_cholesky(cov, d)
    const = -0.5 * d * math.log(2 * math.pi) + log_det + jnp.log(params.weights)
    pc = cov.precisions_cholesky
    if form == "whitened":
        u = jnp.transpose(pc, (1, 0, 2)).reshape(d, k * d)  # x @ u = [x U_1 ... x U_K]
        mu_u = jnp.einsum("kd,kde->ke", means, pc).reshape(k * d)
        return _Form(None, mu_u, const, u)
    if form == "packed":
        prec = pc @ jnp.swapaxes(pc, -1, -2)  # (K, D, D) = U U^T
        iu, ju = _triu(d)
        scale = jnp.where(jnp.asarray(iu == ju), 1.0, 2.0).astype(dtype)
        wq = (-0.5 * prec[:, iu, ju] * scale).T  # (T, K)
        pm = jnp.einsum("kde,ke->kd", prec, means)  # P_k mu_k
        return _Form(wq, pm.T, const - 0.5 * jnp.sum(pm * means, axis=1), None)
    if form == "tied":
        m = means @ pc  # whitened means (K, D)
        return _Form(None, m.T, const - 0.5 * jnp.sum(m * m, axis=1), pc)
    prec = pc * pc if form == "diag" else jnp.broadcast_to((pc * pc)[:, None], (k, d))
    return _Form((-0.5 * prec).T, (means * prec).T,
                 const - 0.5 * jnp.sum(means * means * prec, axis=1), None)


# ------------------------------------------------------------------ row chunks, by form
# Each returns ``(log-joint (chunk, K), what the moments reuse)`` of one centred chunk ``x``.

def _joint_whitened(x: Array, form: _Form, plan: PassPlan):
    y = _dot(x, form.u) - form.wl  # (c, K D): x U_k - mu_k U_k for every k
    k = form.b.shape[0]
    # |y_k|^2 for every k as one GEMM with the (K D, K) block indicator: XLA:CPU's reduce of
    # the (chunk, K, D) squares over D was the pass's slowest operation.
    blocks = np.repeat(np.eye(k, dtype=y.dtype), y.shape[1] // k, axis=0)
    return form.b - 0.5 * _dot(y * y, jnp.asarray(blocks)), None


def _joint_tied(x: Array, form: _Form, plan: PassPlan):
    y = _dot(x, form.u)  # l = y = x U, the quadratic term is -|y|^2 / 2
    return _dot(y, form.wl) + form.b - 0.5 * jnp.sum(y * y, axis=1, keepdims=True), None


def _joint_packed(x: Array, form: _Form, plan: PassPlan):
    if plan.packed_products == "transposed":  # q returned as q^T, (T, chunk)
        iu, ju = _triu(x.shape[1])
        xt = x.T
        qt = xt[iu] * xt[ju]
        wqt = jax.lax.optimization_barrier(form.wq.T)
        return _dot_t(wqt, qt) + _dot(x, form.wl) + form.b, qt
    q = _packed_outer(x, plan.packed_products)
    return _dot(x, form.wl) + form.b + _dot(q, form.wq), q


def _joint_diag(x: Array, form: _Form, plan: PassPlan):
    q = x * x  # spherical too: its rows of wq are equal
    return _dot(x, form.wl) + form.b + _dot(q, form.wq), q


_ROW_JOINT = {"whitened": _joint_whitened, "tied": _joint_tied, "packed": _joint_packed,
              "diag": _joint_diag, "spherical": _joint_diag}


def _whitened_scatter(g: Array, x: Array, plan: PassPlan) -> Array:
    """Every component's weighted scatter ``(K D, D)`` in one GEMM."""
    gx = (g[:, :, None] * x[:, None, :]).reshape(x.shape[0], -1)
    k, d = g.shape[1], x.shape[1]
    if plan.whitened_scatter == "x_gx":  # x first: it is K times smaller than [g_k x]
        return _tdot(x, gx, plan.materialise_transposes).reshape(d, k, d).transpose(
            1, 0, 2).reshape(k * d, d)
    return _tdot(gx, x, plan.whitened_scatter == "gx_x_materialised")


def _row_chunk(c: Array, form: _Form, plan: PassPlan, with_stats: bool):
    """The chunk function of the row-major pass: ``(ll, statistics)`` of ``x`` (rows)."""
    joint = _ROW_JOINT[plan.form]
    mat = plan.materialise_transposes

    def one(x, w):
        x = x - c
        lp, q = joint(x, form, plan)
        if not with_stats:
            return jax.nn.logsumexp(lp, axis=1), None
        ll, g = _logsumexp_resp(lp)
        if w is not None:
            g = g * w[:, None]
        nk = jnp.sum(g, axis=0)
        if plan.form == "tied":
            # The pooled scatter (one D x D GEMM) instead of K per-component ones.
            xw = x if w is None else x * w[:, None]
            return ll, (nk, _tdot(g, x, mat), _tdot(xw, x, mat))
        if plan.form == "whitened":
            sxx = _whitened_scatter(g, x, plan)
            return ll, (nk, _tdot(g, x, mat), sxx)
        if plan.form == "packed" and plan.packed_products == "transposed":
            return ll, (nk, _tdot(g, x, mat), _dot_t(q, g))
        return ll, (nk, _tdot(g, x, mat), _tdot(g, q, mat))

    return one


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
    inside the loop. Diagonal: ``q = x^2`` (``D`` rows); spherical: ``q = |x|^2`` (one row: its
    precision is the same in every direction), its statistic spread evenly over the ``D``
    entries of ``sxx`` (only their sum is used)."""
    d = c.shape[0]
    nq = 1 if spherical else d
    wq = form.wq.T[:, :1] if spherical else form.wq.T  # spherical: the columns are equal
    w_cat = jnp.concatenate([wq, form.wl.T], axis=1)  # (K, nq + D)
    b = form.b[:, None]

    def one(xt, w):
        xt = xt - c[:, None]
        # Two in-place row-block writes: a concatenate of the same blocks is a scalar loop.
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


def _write_features(f: Array, x: Array, start, covariance_type: str,
                    products: str = "gather") -> Array:
    """Rows ``start : start + len(x)`` of the features ``f`` (a buffer of ones) for the centred
    samples ``x``, as two block writes: XLA:CPU emits the equivalent concatenate as a scalar
    loop."""
    if covariance_type == "full":
        q = _packed_outer(x, products)
    elif covariance_type == "spherical":
        q = jnp.sum(x * x, axis=1, keepdims=True)
    else:
        q = x * x
    f = jax.lax.dynamic_update_slice(f, q, (start, 0))
    return jax.lax.dynamic_update_slice(f, x, (start, q.shape[1]))


def feature_rows(X: Array, center: Array, covariance_type: str,
                 products: str = "gather") -> Array:
    """The per-sample features of the log-densities, ``[q, x - c, 1]`` with ``q = (x - c)^2``
    (diagonal, ``D`` columns), ``|x - c|^2`` (spherical, one column) or the packed products
    ``x_i x_j``, ``i <= j`` (full, ``D(D+1)/2`` columns, built as ``products``, see
    :func:`_packed_outer`): ``(n_samples, nq + D + 1)``.

    Constant during a fit whose centre is fixed, so a driver builds them once (the
    ``"features"`` layout of a :class:`~emjax.gmm.plan.PassPlan`); every iteration is then one
    GEMM with the parameters (the ones column adds the bias), a row-wise log-sum-exp and one
    GEMM with the responsibilities (the ones column gives ``N_k``). Costs ``(nq + D + 1) / D``
    times the data's memory for the fit's duration."""
    n, d = X.shape
    nq = n_quadratic(covariance_type, d)
    f = jnp.ones((n, nq + d + 1), X.dtype)

    def block(f, start, size):
        return _write_features(f, rows(X, start, size) - center, start, covariance_type,
                               products)

    chunk = max(256, _BUILD_BYTES // (X.dtype.itemsize * (nq + d + 1)))
    return fold_chunks(block, f, n, chunk)


def feature_blocks(X: Array, center: Array, covariance_type: str, block_size: int,
                   products: str = "gather") -> tuple[Array, ...]:
    """:func:`feature_rows` as a tuple of row blocks of ``block_size`` rows (the last may be
    smaller), each a separate array: the pass reads them in an unrolled loop, so no block is
    sliced (copied) out of the features at every iteration."""
    cols = feature_row_columns(covariance_type, X.shape[1])
    n = X.shape[0]
    out = []
    for start in range(0, n, block_size):
        size = min(block_size, n - start)
        f = jnp.ones((size, cols), X.dtype)
        out.append(_write_features(f, rows(X, start, size) - center, 0, covariance_type,
                                   products))
    return tuple(out)


def _feature_chunk(form: _Form, with_stats: bool, spherical: bool, d: int):
    """The chunk function of the feature-row pass: ``(ll, statistics)`` of a block of
    :func:`feature_rows` (one GEMM for the log-densities, one for every moment); with the
    block's transpose ``ft`` the moments are the plain GEMM ``ft @ g``."""
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


# ------------------------------------------------------------------ layouts
# What each layout's driver builds once per fit (``prepare``), and its pass over the data.

def _prepare_blocks(X: Array, c: Array, plan: PassPlan):
    blocks = feature_blocks(X, c, plan.covariance_type, plan.chunk_size, plan.packed_products)
    return blocks, tuple(b.T for b in blocks)


_PREPARE = {
    "rows": lambda X, c, plan: None,
    "transposed": lambda X, c, plan: X.T,
    "features": lambda X, c, plan: feature_rows(X, c, plan.covariance_type,
                                                 plan.packed_products),
    "feature_blocks": _prepare_blocks,
}


def prepare(plan: PassPlan, X: Array, center: Array):
    """What the pass of ``plan`` reads besides ``X``, built once per fit about ``center``:
    ``None`` (rows), ``X^T`` (transposed), :func:`feature_rows` (features) or the pair
    (:func:`feature_blocks`, their transposes) (feature blocks). Hand it to
    :func:`e_step_stats` as ``inputs`` with the same ``center``."""
    return _PREPARE[plan.layout](X, center, plan)


def _fold(one, take, n, sample_weight, chunk_size, with_stats, dtype):
    """Run ``one(take(start, size), w)`` over the chunks, the log-likelihoods written into an
    ``(N,)`` buffer and the statistics summed."""
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

    return fold_chunks(part, (jnp.zeros((n,), dtype), acc0), n, chunk_size)


def _rows_pass(c, form, plan, X, data, w, with_stats):
    one = _row_chunk(c, form, plan, with_stats)
    return _fold(one, lambda start, size: rows(X, start, size), X.shape[0], w,
                 plan.chunk_size, with_stats, X.dtype)


def _transposed_pass(c, form, plan, X, xt, w, with_stats):
    one = _transposed_chunk(c, form, with_stats, plan.form == "spherical")
    return _fold(one, lambda start, size: jax.lax.dynamic_slice_in_dim(xt, start, size, 1),
                 X.shape[0], w, plan.chunk_size, with_stats, X.dtype)


def _features_pass(c, form, plan, X, f, w, with_stats):
    one = _feature_chunk(form, with_stats, plan.form == "spherical", X.shape[1])
    return _fold(one, lambda start, size: (rows(f, start, size), None), X.shape[0], w,
                 plan.chunk_size, with_stats, X.dtype)


def _blocks_pass(c, form, plan, X, data, w, with_stats):
    # Separate arrays read by an unrolled loop, each with its transpose: nothing is sliced.
    blocks, transposes = data
    one = _feature_chunk(form, with_stats, plan.form == "spherical", X.shape[1])
    lls, acc, start = [], None, 0
    for f, ft in zip(blocks, transposes):
        size = f.shape[0]
        ll, st = one((f, ft if with_stats else None), rows(w, start, size))
        lls.append(ll)
        acc = st if acc is None else jax.tree_util.tree_map(jnp.add, acc, st)
        start += size
    if start != X.shape[0]:
        raise ValueError(f"feature blocks cover {start} rows, X has {X.shape[0]}")
    return (jnp.concatenate(lls) if len(lls) > 1 else lls[0]), acc


_LAYOUT_PASS = {"rows": _rows_pass, "transposed": _transposed_pass,
                "features": _features_pass, "feature_blocks": _blocks_pass}


def _plan_for(params: GMMParams, X: Array, plan: PassPlan | None) -> PassPlan:
    ctype = cov_lib.covariance_type_of(params.covariance)
    if plan is None:
        return make_plan(ctype, X.dtype, X.shape[0], X.shape[1], params.means.shape[0])
    if plan.covariance_type != ctype:
        raise ValueError(f"plan is for covariance_type {plan.covariance_type!r}, the "
                         f"parameters are {ctype!r}")
    return plan


def _chunk_pass(params: GMMParams, X: Array, sample_weight: Array | None, plan: PassPlan,
                with_stats: bool, center: Array | None = None, inputs=None):
    """Per-sample log-likelihood ``(N,)`` and, if ``with_stats``, the statistics about the centre
    ``c`` as ``(nk (K,), sum g l(x) (K, D), sum g q(x) (K, T))``; for tied the last is the pooled
    scatter ``sum w x x^T`` (D, D) and the second ``sum g x``."""
    dtype = X.dtype
    c = (_shift(params) if center is None else jax.lax.stop_gradient(center)).astype(dtype)
    form = jax.tree_util.tree_map(lambda a: a.astype(dtype), _linear_form(params, c, plan.form))
    if inputs is None:
        inputs = prepare(plan, X, c)
    ll, acc = _LAYOUT_PASS[plan.layout](c, form, plan, X, inputs, sample_weight, with_stats)
    return ll, acc, c


def _sxx_whitened(acc, k, d, dtype):
    sxx = acc.reshape(k, d, d)
    return 0.5 * (sxx + jnp.swapaxes(sxx, 1, 2))  # symmetric up to rounding


#: The second moments of each form as :class:`SuffStats` holds them.
_FINISH_SXX = {
    "whitened": _sxx_whitened,
    "packed": lambda acc, k, d, dtype: _unpack_sym(acc, d),
    "tied": lambda acc, k, d, dtype: jnp.zeros((k, d, d), dtype).at[0].set(acc),
    "diag": lambda acc, k, d, dtype: acc,
    "spherical": lambda acc, k, d, dtype: acc,
}


def e_step_stats(
    params: GMMParams,
    X: Array,
    sample_weight: Array | None = None,
    *,
    plan: PassPlan | None = None,
    center: Array | None = None,
    inputs=None,
) -> tuple[SuffStats, Array]:
    """E-step fused with the next M-step's sufficient statistics, in one chunked pass over ``X``.

    Equivalent to ``gamma = e_step(params, X)[0]`` followed by
    ``suff_stats(gamma, X, ref, covariance_type=..., sample_weight=...)`` with ``ref`` the
    centre of the pass (broadcast to ``(K, D)``), but without ever forming
    ``(n_samples, n_components)`` responsibilities or ``(K, N, D)`` differences: each chunk is
    turned into features (full: the packed outer products ``x_i x_j``, ``i <= j``, and ``x``),
    one GEMM with the parameters gives every log-density, and one GEMM of the responsibilities
    with the same features gives every moment; the moments are summed over chunks.
    ``params_from_stats(stats, ...)`` then completes the M-step. The precision Cholesky
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
      plan: static :class:`~emjax.gmm.plan.PassPlan` (default :func:`~emjax.gmm.plan.make_plan`
        of this problem): its layout, form, chunk size and orientations; ``plan.fused`` is not
        read (this function is the fused pass).
      center: optional ``(n_features,)`` point subtracted from every chunk (and the reference
        point of the statistics); default the weighted mean of the means. A fixed centre (e.g.
        the data's mean) makes the pass the same function of ``params`` at every iteration.
      inputs: optional :func:`prepare` ``(plan, X, center)``, built once by a driver (the same
        ``center`` must be given); default built here, in every call.

    Returns:
      ``(stats, log_likelihood)``: :class:`SuffStats` (moments about ``ref``) and the per-sample
      ``log p(x_n)`` of shape ``(n_samples,)``.
    """
    plan = _plan_for(params, X, plan)
    n, d = X.shape
    k = params.means.shape[0]
    ll, acc, c = _chunk_pass(params, X, sample_weight, plan, True, center, inputs)
    ref = jnp.broadcast_to(c, (k, d))
    sxx = _FINISH_SXX[plan.form](acc[2], k, d, X.dtype)
    return SuffStats(acc[0], acc[1], sxx, ref), ll


def score_samples_chunked(params: GMMParams, X: Array, *,
                          plan: PassPlan | None = None) -> Array:
    """:func:`score_samples` by the chunked GEMM pass of ``plan`` (default
    :func:`~emjax.gmm.plan.make_plan`'s): ``log p(x_n)``, shape ``(n_samples,)``."""
    plan = _plan_for(params, X, plan)
    return _chunk_pass(params, X, None, plan, False)[0]
