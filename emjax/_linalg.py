"""Small linear algebra shared by the model families: factorisations of batches of small
matrices unrolled into elementwise operations (no LAPACK call), and the ordering of LAPACK
calls on CPU (a workaround for a jaxlib 0.10 thread-pool deadlock).

jaxlib 0.10's CPU LAPACK kernels (Cholesky, triangular solve, LU, ``eigh``, ...) split a batch
of about 256 KiB or more into pieces on XLA's intra-op thread pool and block the calling pool
thread until the pieces are done. XLA:CPU runs independent operations concurrently, so two such
calls can each hold a pool thread while their pieces wait behind each other in the queue: on a
2-core machine every pool thread then waits and the program hangs with the CPU idle (observed:
``emjax.fit`` with 16 full covariances of dimension 64 in float32 hung in an EM iteration, where
the M-step's factorisations and those of the re-seeding were independent; upstream compiled the
parallel path out in jaxlib 0.11.1, which the package index here does not offer yet). A call
whose batch stays below that size runs inline and cannot hang.

emjax therefore never leaves two factorisations or solves independent of each other: where they
would be, :func:`after` adds a data dependency. (``jax.lax.optimization_barrier`` does not do
this on CPU: XLA expands the barrier before scheduling and the thunk executor orders operations
by data alone.) It costs one scalar and one addition of zero; values and gradients are unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def after(x, *deps):
    """``x`` (a pytree of floating arrays), computed only once every array in ``deps`` is.

    Adds ``z - z`` to every leaf, where ``z`` is one (finite-sanitised) element of the
    dependencies: exactly zero, with zero derivative, and a dependency XLA keeps (it does not
    fold ``z - z`` for floating point).
    """
    z = sum(jnp.ravel(d)[0].astype(jnp.float32) for d in deps)
    z = jnp.where(jnp.isfinite(z), z, 0.0)
    zero = z - z
    return jax.tree_util.tree_map(lambda a: a + zero.astype(a.dtype), x)


def diagonal(a):
    """The diagonals of the last two axes of ``a`` (square), ``(..., d, d) -> (..., d)``: a
    strided slice of the flattened matrices (``jnp.diagonal`` is a gather, about a dozen
    operations to trace and compile each time, and a scalar loop on XLA:CPU)."""
    d = a.shape[-1]
    return a.reshape(a.shape[:-2] + (d * d,))[..., :: d + 1]


def unrolled_cholesky(a: Array) -> Array:
    """Lower Cholesky factors of a batch ``(..., d, d)`` of symmetric matrices, the loops
    unrolled over ``d`` (elementwise over the batch). A non-positive pivot gives NaN from there
    on, as LAPACK's failure does in :func:`jax.numpy.linalg.cholesky`."""
    d = a.shape[-1]
    nan = jnp.asarray(jnp.nan, a.dtype)
    L = [[None] * d for _ in range(d)]
    for j in range(d):
        piv = a[..., j, j] - sum((L[j][k] * L[j][k] for k in range(j)), jnp.zeros((), a.dtype))
        L[j][j] = jnp.where(piv > 0, jnp.sqrt(jnp.where(piv > 0, piv, 1.0)), nan)
        inv = 1.0 / L[j][j]
        for i in range(j + 1, d):
            s = a[..., i, j] - sum((L[i][k] * L[j][k] for k in range(j)),
                                   jnp.zeros((), a.dtype))
            L[i][j] = s * inv
    zero = jnp.zeros(a.shape[:-2], a.dtype)
    return jnp.stack([jnp.stack([L[i][j] if j <= i else zero for j in range(d)], -1)
                      for i in range(d)], -2)


def unrolled_lower_inverse(L: Array) -> Array:
    """``inv(L)`` of a batch ``(..., d, d)`` of lower-triangular matrices by forward
    substitution, unrolled over ``d``."""
    d = L.shape[-1]
    inv = [[None] * d for _ in range(d)]
    for i in range(d):
        r = 1.0 / L[..., i, i]
        inv[i][i] = r
        for j in range(i):
            s = sum(L[..., i, k] * inv[k][j] for k in range(j, i))
            inv[i][j] = -s * r
    zero = jnp.zeros(L.shape[:-2], L.dtype)
    return jnp.stack([jnp.stack([inv[i][j] if j <= i else zero for j in range(d)], -1)
                      for i in range(d)], -2)
