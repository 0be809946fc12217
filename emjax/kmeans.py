"""k-means++ seeding and Lloyd steps in JAX, used to initialise mixtures. Vmappable over keys."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array


def squared_distances(X: Array, centers: Array) -> Array:
    """``|x|^2 - 2 x c^T + |c|^2`` (one GEMM), clipped at zero: ``(n_samples, n_centers)``."""
    d2 = (
        jnp.sum(X * X, axis=1)[:, None]
        - 2.0 * X @ centers.T
        + jnp.sum(centers * centers, axis=1)[None, :]
    )
    return jnp.maximum(d2, 0.0)


def kmeans_plusplus(
    key: Array,
    X: Array,
    n_clusters: int,
    sample_weight: Array | None = None,
    n_local_trials: int | None = None,
) -> tuple[Array, Array]:
    """Greedy k-means++ seeding (scikit-learn's algorithm): ``(centers, indices)``.

    The first centre is drawn with probability proportional to ``sample_weight``; each further
    centre is the best of ``n_local_trials`` candidates (default ``2 + int(log(n_clusters))``)
    drawn with probability proportional to ``w * D(x)^2``, judged by the resulting potential.

    Args:
      key: PRNG key.
      X: ``(n_samples, n_features)``, best centred.
      n_clusters: static.
      sample_weight: optional ``(n_samples,)``.
      n_local_trials: static.
    """
    n = X.shape[0]
    w = jnp.ones((n,), X.dtype) if sample_weight is None else sample_weight.astype(X.dtype)
    if n_local_trials is None:
        n_local_trials = 2 + int(math.log(n_clusters))
    key, k0 = jax.random.split(key)
    first = jax.random.choice(k0, n, p=w / jnp.sum(w))
    centers = jnp.zeros((n_clusters, X.shape[1]), X.dtype).at[0].set(X[first])
    indices = jnp.zeros((n_clusters,), jnp.int32).at[0].set(first.astype(jnp.int32))
    closest = squared_distances(X, X[first][None])[:, 0]

    def body(c, carry):
        centers, indices, closest, key = carry
        key, sub = jax.random.split(key)
        pot = w * closest
        total = jnp.sum(pot)
        # All points coincide with chosen centres: fall back to weights alone.
        probs = jnp.where(total > 0, pot / jnp.where(total > 0, total, 1.0), w / jnp.sum(w))
        cand = jax.random.choice(sub, n, shape=(n_local_trials,), p=probs)
        d_cand = squared_distances(X, X[cand])  # (n, trials)
        new_closest = jnp.minimum(closest[:, None], d_cand)
        best = jnp.argmin(jnp.sum(w[:, None] * new_closest, axis=0))
        idx = cand[best]
        return (
            centers.at[c].set(X[idx]),
            indices.at[c].set(idx.astype(jnp.int32)),
            new_closest[:, best],
            key,
        )

    init = (centers, indices, closest, key)
    centers, indices, _, _ = jax.lax.fori_loop(1, n_clusters, body, init)
    return centers, indices


def lloyd(
    X: Array, centers: Array, n_iter: int, sample_weight: Array | None = None
) -> Array:
    """``n_iter`` Lloyd steps; a centre that loses all its points keeps its position."""
    w = jnp.ones((X.shape[0],), X.dtype) if sample_weight is None else sample_weight.astype(X.dtype)
    k = centers.shape[0]

    def step(_, c):
        labels = jnp.argmin(squared_distances(X, c), axis=1)
        onehot = jax.nn.one_hot(labels, k, dtype=X.dtype) * w[:, None]
        counts = jnp.sum(onehot, axis=0)
        sums = onehot.T @ X
        return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1e-30)[:, None], c)

    return jax.lax.fori_loop(0, n_iter, step, centers)


def assign(X: Array, centers: Array) -> Array:
    """Index of the nearest centre for each sample."""
    return jnp.argmin(squared_distances(X, centers), axis=1)
