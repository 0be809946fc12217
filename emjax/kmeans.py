"""k-means++ seeding and Lloyd steps in JAX, used to initialise mixtures. Vmappable over keys.

Every pass over the data runs ``chunk_size`` rows at a time (``emjax._chunks.fold_chunks``), so
memory is O(n_samples + chunk_size * n_clusters) on top of ``X``: no ``(n_samples, n_clusters)``
array is formed. An optional ``center`` is subtracted inside each chunk: ``f(X, center=c)``
computes what ``f(X - c)`` does without the centred copy of ``X``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from emjax import _validation as v
from emjax._chunks import fold_chunks, rows

Array = jax.Array


def default_chunk_size(n_clusters: int, n_features: int) -> int:
    """Rows per chunk: each ``(chunk, max(n_clusters, n_features))`` block has about 2^20
    elements (4 MiB in float32), at least 256 rows."""
    return max(256, 2**20 // max(1, n_clusters, n_features))


def _centred(x: Array, center: Array | None) -> Array:
    return x if center is None else x - center


def squared_distances(X: Array, centers: Array) -> Array:
    """``|x|^2 - 2 x c^T + |c|^2`` (one GEMM), clipped at zero: ``(n_samples, n_centers)``."""
    d2 = (
        jnp.sum(X * X, axis=1)[:, None]
        - 2.0 * X @ centers.T
        + jnp.sum(centers * centers, axis=1)[None, :]
    )
    return jnp.maximum(d2, 0.0)


def set_row(a: Array, i, row) -> Array:
    """``a.at[i].set(row)`` for an index ``i`` in range, as a dynamic update slice: under
    ``vmap`` with a batched ``row`` a scatter would stay a scatter, which XLA:CPU compiles into
    a loop of its own."""
    return jax.lax.dynamic_update_index_in_dim(a, jnp.asarray(row, a.dtype), i, 0)


def _draw(u: Array, p: Array) -> Array:
    """Indices drawn with probability proportional to ``p >= 0`` (not all zero), one for each
    uniform ``u`` in [0, 1): the inverse of the cumulative sum, by counting (no sort, no search
    loop). The target is kept below the total, so an index of zero probability is never drawn."""
    cum = jnp.cumsum(p)
    total = cum[-1]
    r = jnp.minimum(u * total, jnp.nextafter(total, jnp.zeros_like(total)))
    return jnp.sum(cum[None, :] <= r[:, None], axis=1).astype(jnp.int32)


def sample_rows(key: Array, n_samples: int, n_draws: int, sample_weight: Array | None = None,
                dtype=jnp.float32) -> Array:
    """``n_draws`` distinct row indices, drawn one after another with probability proportional
    to ``sample_weight`` among the rows not drawn yet (uniform without weights).

    One uniform per draw through :func:`_draw`, so rows of zero weight appended to the data
    (padding) change nothing: the same key draws the same rows.
    """
    u = jax.random.uniform(key, (n_draws,), dtype)
    avail = jnp.ones((n_samples,), dtype) if sample_weight is None else sample_weight.astype(dtype)

    def body(j, carry):
        idx, avail = carry
        i = _draw(jax.lax.dynamic_slice_in_dim(u, j, 1), avail)[0]
        return set_row(idx, j, i), jnp.where(jnp.arange(n_samples) == i, 0, avail)

    idx, _ = jax.lax.fori_loop(0, n_draws, body, (jnp.zeros((n_draws,), jnp.int32), avail))
    return idx


def kmeans_plusplus(
    key: Array,
    X: Array,
    n_clusters: int,
    sample_weight: Array | None = None,
    n_local_trials: int | None = None,
    *,
    center: Array | None = None,
    chunk_size: int | None = None,
    n_active: Array | None = None,
) -> tuple[Array, Array]:
    """Greedy k-means++ seeding (scikit-learn's algorithm): ``(centers, indices)``.

    The first centre is drawn with probability proportional to ``sample_weight``; each further
    centre is the best of ``n_local_trials`` candidates (default ``2 + int(log(n_clusters))``)
    drawn with probability proportional to ``w * D(x)^2``, judged by the resulting potential.
    When ``X`` has more than ``chunk_size`` rows, each centre takes two chunked passes over
    ``X`` (the candidates' potentials, then the new nearest distances) and only the
    ``(n_samples,)`` nearest squared distances are stored.

    Args:
      key: PRNG key.
      X: ``(n_samples, n_features)``, best centred (or give ``center``).
      n_clusters: static.
      sample_weight: optional ``(n_samples,)``.
      n_local_trials: static.
      center: optional ``(n_features,)`` subtracted from every row inside the passes; the
        centres returned are then rows of ``X - center``.
      chunk_size: static rows per pass block (default :func:`default_chunk_size`).
      n_active: optional traced int: seed only the first ``n_active <= n_clusters`` centres
        (components padded to a class), with ``2 + int(log(n_active))`` trials, drawing exactly
        what ``kmeans_plusplus(key, X, n_active)`` draws; the other centres stay 0.

    Returns:
      ``centers`` ``(n_clusters, n_features)`` and their row ``indices`` ``(n_clusters,)``.
    """
    X = jnp.asarray(X)  # NumPy data is indexed by traced rows below
    n, d = X.shape
    if n_active is None and not v.is_traced(X, key, sample_weight, center):
        # as scikit-learn's: more centres than rows would repeat rows as centres
        if v.check_positive_int(n_clusters, "n_clusters") > n:
            raise ValueError(f"n_clusters={n_clusters} must be <= n_samples={n} (X has shape "
                             f"{X.shape})")
        # concrete data: one compiled program per shape (op by op, its loops compile per call)
        return _kmeans_plusplus_compiled(key, X, n_clusters, sample_weight, n_local_trials,
                                         center=center, chunk_size=chunk_size)
    w = sample_weight if sample_weight is None else jnp.asarray(sample_weight, X.dtype)
    if n_local_trials is None:
        n_local_trials = 2 + int(math.log(n_clusters))
    if chunk_size is None:
        chunk_size = default_chunk_size(max(n_clusters, n_local_trials), d)
    # Every uniform draw in one threefry call: each random call is its own block of the compiled
    # program, and two calls per centre made k-means++ slow to compile.
    uniforms, trial_live, n_seeded = local_trials(key, n_clusters, n_local_trials, n_active,
                                                  X.dtype)
    u0 = uniforms(0)
    if w is None:  # what ``_draw`` gives for unit weights (their cumulative sums are 1..n)
        first = jnp.minimum((u0[0] * n).astype(jnp.int32), n - 1)
    else:
        first = _draw(u0[:1], w)[0]
    x_first = _centred(X[first], center)
    centers = set_row(jnp.zeros((n_clusters, d), X.dtype), 0, x_first)
    indices = set_row(jnp.zeros((n_clusters,), jnp.int32), 0, first)

    def first_pass(closest, start, size):
        x = _centred(rows(X, start, size), center)
        return jax.lax.dynamic_update_slice_in_dim(
            closest, squared_distances(x, x_first[None])[:, 0], start, 0)

    closest = fold_chunks(first_pass, jnp.zeros((n,), X.dtype), n, chunk_size)

    def body(c, carry):
        centers, indices, closest = carry
        pot = closest if w is None else w * closest
        # All points coincide with chosen centres: fall back to the weights alone.
        fallback = jnp.ones_like(closest) if w is None else w
        cand = _draw(uniforms(c), jnp.where(jnp.sum(pot) > 0, pot, fallback))
        x_cand = _centred(X[cand], center)  # (trials, d)
        if n <= chunk_size:
            # One block: the (n, trials) distances are small; judge and keep them in one go.
            nc = jnp.minimum(closest[:, None], squared_distances(_centred(X, center), x_cand))
            best = jnp.argmin(trial_live(jnp.sum(nc if w is None else w[:, None] * nc, axis=0)))
            return (set_row(centers, c, x_cand[best]),
                    set_row(indices, c, cand[best].astype(jnp.int32)), nc[:, best])

        def potential(acc, start, size):
            x = _centred(rows(X, start, size), center)
            nc = jnp.minimum(rows(closest, start, size)[:, None], squared_distances(x, x_cand))
            ws = rows(w, start, size)
            # A GEMV: XLA's CPU column reduction of a thin (size, trials) block is much slower.
            return acc + (jnp.ones((size,), X.dtype) if ws is None else ws) @ nc

        pots = fold_chunks(potential, jnp.zeros((n_local_trials,), X.dtype), n, chunk_size)
        best = jnp.argmin(trial_live(pots))
        x_best = x_cand[best]

        def update(buf, start, size):
            x = _centred(rows(X, start, size), center)
            col = jnp.minimum(rows(buf, start, size), squared_distances(x, x_best[None])[:, 0])
            return jax.lax.dynamic_update_slice_in_dim(buf, col, start, 0)

        closest = fold_chunks(update, closest, n, chunk_size)
        return (
            set_row(centers, c, x_cand[best]),
            set_row(indices, c, cand[best].astype(jnp.int32)),
            closest,
        )

    init = (centers, indices, closest)
    centers, indices, _ = jax.lax.fori_loop(1, n_seeded, body, init)
    return centers, indices


def local_trials(key: Array, n_clusters: int, n_local_trials: int, n_active: Array | None,
                 dtype):
    """k-means++'s uniforms: ``(uniforms(c), trial_live(scores), n_seeded)``.

    ``uniforms(c)`` is centre ``c``'s ``n_local_trials`` uniforms (one threefry call for all);
    with ``n_active`` (traced; ``n_local_trials`` is then that of ``n_clusters``, the most),
    its first ``2 + int(log(n_active))`` are those of ``n_active`` clusters (threefry's draws
    do not depend on the shape) and ``trial_live`` sets the scores of the others to ``+inf``.
    """
    if n_active is None:
        u = jax.random.uniform(key, (n_clusters, n_local_trials), dtype)
        return (lambda c: u[c]), (lambda scores: scores), n_clusters
    n_active = jnp.asarray(n_active, jnp.int32)
    trials = 2 + jnp.floor(jnp.log(n_active.astype(jnp.float32))).astype(jnp.int32)
    flat = jax.random.uniform(key, ((n_clusters + 1) * n_local_trials,), dtype)
    live = jnp.arange(n_local_trials) < trials

    def uniforms(c):
        return jax.lax.dynamic_slice_in_dim(flat, c * trials, n_local_trials)

    return uniforms, (lambda scores: jnp.where(live, scores, jnp.inf)), n_active


def active_centers(n_clusters: int, n_active: Array | None) -> Array | None:
    """``(n_clusters,)`` bool, the centres that exist (the first ``n_active``), or None."""
    return None if n_active is None else jnp.arange(n_clusters) < n_active


def mask_inactive(d2: Array, active: Array | None) -> Array:
    """Squared distances ``(n, n_centers)`` with the inactive centres' set to ``+inf`` (never
    nearest)."""
    return d2 if active is None else jnp.where(active[None, :], d2, jnp.inf)


def cluster_sums(
    X: Array, centers: Array, sample_weight: Array | None = None, *,
    center: Array | None = None, chunk_size: int | None = None, active: Array | None = None,
) -> tuple[Array, Array]:
    """Weighted counts ``(n_clusters,)`` and coordinate sums ``(n_clusters, n_features)`` of the
    samples nearest to each centre (one chunked pass; ``X - center`` if ``center`` is given)."""
    n, d = X.shape
    k = centers.shape[0]
    if chunk_size is None:
        chunk_size = default_chunk_size(k, d)

    def part(acc, start, size):
        x = _centred(rows(X, start, size), center)
        onehot = jax.nn.one_hot(
            jnp.argmin(mask_inactive(squared_distances(x, centers), active), axis=1), k,
            dtype=X.dtype)
        ws = rows(sample_weight, start, size)
        if ws is not None:
            onehot = onehot * ws.astype(X.dtype)[:, None]
        return acc[0] + jnp.sum(onehot, axis=0), acc[1] + onehot.T @ x

    acc = (jnp.zeros((k,), X.dtype), jnp.zeros((k, d), X.dtype))
    return fold_chunks(part, acc, n, chunk_size)


def lloyd(
    X: Array, centers: Array, n_iter: int, sample_weight: Array | None = None, *,
    center: Array | None = None, chunk_size: int | None = None, active: Array | None = None,
) -> Array:
    """``n_iter`` Lloyd steps; a centre that loses all its points keeps its position.

    Each step is one chunked pass (:func:`cluster_sums`). ``center``/``chunk_size`` as in
    :func:`kmeans_plusplus`; ``active``: optional ``(n_clusters,)`` bool, the centres that
    exist (the others are never nearest).
    """

    if not v.is_traced(X, centers, sample_weight, center, active):
        # concrete data: one compiled program per shape (op by op, its loop compiles per call)
        return _lloyd_compiled(X, centers, n_iter, sample_weight, center=center,
                               chunk_size=chunk_size, active=active)

    def step(_, c):
        counts, sums = cluster_sums(X, c, sample_weight, center=center, chunk_size=chunk_size,
                                    active=active)
        return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1e-30)[:, None], c)

    return jax.lax.fori_loop(0, n_iter, step, centers)


_kmeans_plusplus_compiled = jax.jit(kmeans_plusplus, static_argnums=(2, 4),
                                    static_argnames=("chunk_size",))
_lloyd_compiled = jax.jit(lloyd, static_argnums=2, static_argnames=("chunk_size",))


def assign(X: Array, centers: Array, *, center: Array | None = None,
           chunk_size: int | None = None, active: Array | None = None) -> Array:
    """Index of the nearest (``active``) centre for each sample: ``(n_samples,)`` int, computed
    by chunks."""
    n, d = X.shape
    if chunk_size is None:
        chunk_size = default_chunk_size(centers.shape[0], d)

    def part(labels, start, size):
        x = _centred(rows(X, start, size), center)
        lab = jnp.argmin(mask_inactive(squared_distances(x, centers), active),
                         axis=1).astype(labels.dtype)
        return jax.lax.dynamic_update_slice_in_dim(labels, lab, start, 0)

    return fold_chunks(part, jnp.zeros((n,), jnp.int32), n, chunk_size)
