"""Passes over the rows of an array in static-size chunks (shared by the fused E-step, the
sufficient statistics and the k-means initialisation)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

Array = jax.Array


def fold_chunks(fn: Callable[[Any, Any, int], Any], carry: Any, n: int, chunk_size: int) -> Any:
    """``carry = fn(carry, start, size)`` over consecutive row blocks covering ``range(n)``.

    Blocks have ``size = min(chunk_size, n)`` rows (static) and a last, smaller block takes the
    remainder; ``start`` is traced inside the loop. One block (``n <= chunk_size``) is a single
    call with ``start = 0``, no loop.
    """
    chunk = int(min(chunk_size, n))
    n_full, rem = divmod(n, chunk)
    if n_full == 1:
        carry = fn(carry, 0, chunk)
    elif n_full > 1:
        carry = jax.lax.fori_loop(0, n_full, lambda i, c: fn(c, i * chunk, chunk), carry)
    if rem:
        carry = fn(carry, n_full * chunk, rem)
    return carry


def rows(a: Array | None, start, size: int) -> Array | None:
    """Rows ``start : start + size`` of ``a`` (``None`` stays ``None``)."""
    if a is None:
        return None
    if isinstance(start, int) and start == 0 and size == a.shape[0]:
        return a
    return jax.lax.dynamic_slice_in_dim(a, start, size)
