"""``jax.random.split`` of a concrete key, computed on the host with NumPy, bit for bit.

A fit's initialisation draws from one key per restart. Splitting the key inside the compiled
program adds a threefry computation that JAX builds from Python while lowering it and XLA then
compiles: a tenth of a second of a first fit in a new process (docs/performance.md). The host
computes the same keys in microseconds. Only JAX's default generator (threefry2x32) with its
default ``jax_threefry_partitionable`` layout is reproduced; :func:`split` returns None
otherwise, and the program splits the key itself.
"""

from __future__ import annotations

import numpy as np

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def threefry2x32(k1: np.ndarray, k2: np.ndarray, x0: np.ndarray, x1: np.ndarray):
    """Threefry-2x32 with 20 rounds (Salmon et al. 2011), as ``jax.random``'s: uint32 arrays
    in, the two uint32 output words out (NumPy's uint32 arithmetic wraps, as the hash needs)."""
    ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = _rotl(x1, r) ^ x0
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1


def split(key, num: int) -> np.ndarray | None:
    """``jax.random.key_data(jax.random.split(key, num))`` for raw threefry key data ``key``
    (``uint32`` of shape ``(2,)``, concrete), as a NumPy ``(num, 2)`` array; None for anything
    else (a typed key, another generator or layout): then split it with ``jax.random``."""
    import jax

    if (jax.config.jax_default_prng_impl != "threefry2x32"
            or not jax.config.jax_threefry_partitionable or isinstance(key, jax.core.Tracer)
            or np.shape(key) != (2,) or np.asarray(key).dtype != np.uint32 or num >= 2**32):
        return None
    k = np.asarray(key)
    # the partitionable layout: key i hashes the counter (hi, lo) = (0, i)
    lo = np.arange(num, dtype=np.uint32)
    with np.errstate(over="ignore"):
        a, b = threefry2x32(k[:1], k[1:], np.zeros_like(lo), lo)
    return np.stack([a, b], axis=1)


def restart_keys(key, num: int):
    """The ``num`` restart keys of ``key`` split here (:func:`split`, ``(num, 2)`` raw key
    data) when it can, else ``key`` itself: what a fit program takes, to split it with
    :func:`program_keys`."""
    keys = split(key, num)
    return key if keys is None else keys


def program_keys(key, num: int):
    """Inside a fit program: ``key`` as its ``num`` restart keys, whether :func:`restart_keys`
    split them already (``(num, 2)`` key data) or not (split here by ``jax.random``: the same
    values)."""
    import jax

    return key if key.ndim == 2 else jax.random.split(key, num)
