"""Size classes: the ladders that static sizes (rows, units, restarts, history lengths) are
padded up to, so that fits of nearby sizes share one compiled program."""

from __future__ import annotations

import math

import numpy as np


def history_class(max_iter: int) -> int:
    """The history length of a fit of at most ``max_iter`` iterations: the next power of two
    (``max_iter`` itself is an argument of the program)."""
    return 1 << max(int(max_iter) - 1, 0).bit_length()


#: Row counts are padded up to the next of this many size classes per doubling.
SIZE_CLASSES_PER_OCTAVE = 4


def restart_class(n_init: int) -> int:
    """The number of restarts a small fit of ``n_init`` runs: ``n_init`` up to 8, else the
    smallest even ``2^(j / 4)`` rounded up, ``>= n_init`` (10, 12, 14, 16, 20, 24, 28, 32, ...:
    at most a fifth more restarts), so a sweep over ``n_init`` compiles few programs."""
    n_init = int(n_init)
    return n_init if n_init <= 8 else _ladder_class(n_init, 2)


def _ladder_class(n: int, multiple: int, per_octave: int | None = None) -> int:
    """The smallest ``2^(j / per_octave)``, rounded up to a multiple of ``multiple``, that is
    ``>= n``: the one geometric ladder of row and restart classes (``per_octave`` default
    :data:`SIZE_CLASSES_PER_OCTAVE`; coarser for the missing-data layout's buckets)."""
    per_octave = per_octave or SIZE_CLASSES_PER_OCTAVE
    j = math.ceil(per_octave * math.log2(n)) - 1
    while True:
        c = -(-math.ceil(2.0 ** (j / per_octave)) // multiple) * multiple
        if c >= n:
            return c
        j += 1


def size_class(n: int) -> int:
    """The smallest size class ``>= n``: at least 64, else ``2^(j / 4)`` rounded up to a
    multiple of 8 (so at most 19 % padding rows)."""
    n = int(n)
    return 64 if n <= 64 else _ladder_class(n, 8)


def power_class(n: int) -> int:
    """The next power of two ``>= n``, at least 256: the coarse class of work that costs
    little per row (draws, per-row results), where fewer programs beat less padding."""
    return max(256, 1 << (int(n) - 1).bit_length())


def draws_per_index() -> bool:
    """Whether JAX's PRNG is partitionable: each row (component, restart) is drawn from its
    index, so padding adds draws after the real ones and leaves those unchanged. Padding that
    must not change a fit's draws (components, restarts, samples) needs it."""
    import jax

    return bool(jax.config.jax_threefry_partitionable)


def draw_class(n_samples: int) -> int:
    """The draws a sampler makes for ``n_samples``: its :func:`power_class` when
    :func:`draws_per_index` (the first ``n_samples`` rows are then the draws for ``n_samples``
    itself), else ``n_samples``."""
    return power_class(n_samples) if draws_per_index() else n_samples


def first_rows(tree, n: int):
    """Every leaf of ``tree`` cut to its first ``n`` rows on the host, back on the device: what a
    program run on rows padded to a class returns for the rows asked for (slicing on the
    device would compile a small program per ``n``)."""
    import jax

    return jax.tree_util.tree_map(lambda a: jax.device_put(np.asarray(a)[:n]), tree)


#: Fits of up to this many rows are padded to their size class. Past it a fit runs long enough
#: that a compilation per row count costs little, while padding would add rows, a weighted pass
#: and a copy to every iteration.
PAD_MAX_ROWS = 2**15
#: ... and while the padded copy stays below this many bytes (emjax.gmm.fitting's large data).
PAD_MAX_BYTES = 2**26


def padded_rows(n: int, row_bytes: int) -> int | None:
    """Rows a fit of ``n`` rows runs on: its :func:`size_class`, or None (as given) past
    ``PAD_MAX_ROWS`` rows or when the padded copy would reach ``PAD_MAX_BYTES``."""
    c = size_class(n)
    return None if n > PAD_MAX_ROWS or c * row_bytes >= PAD_MAX_BYTES else c


def pad_rows(X: np.ndarray, sample_weight: np.ndarray | None, n_rows: int):
    """``(X, sample_weight)`` with rows appended up to ``n_rows``: copies of the first row, of
    weight 0, so they add nothing to any statistic (and their log-likelihood is finite). The
    weights are always explicit (ones when not given), so every size of a class runs the same
    program."""
    n = X.shape[0]
    wp = np.zeros((n_rows,), X.dtype)
    wp[:n] = 1.0 if sample_weight is None else sample_weight
    if n_rows == n:
        return X, wp
    Xp = np.empty((n_rows, X.shape[1]), X.dtype)
    Xp[:n] = X
    Xp[n:] = X[0]
    return Xp, wp


#: Fits of up to this many components run with their components padded to it (and masked)...
COMPONENT_CLASS = 8
#: ... when the padded problem has at most this many values ``rows * features * components``:
#: past it the padding's run time would outweigh a compilation.
PAD_COMPONENTS_MAX_SIZE = 2**20


def component_class(n_components: int, n_rows: int, n_features: int,
                    n_weighted: int) -> int | None:
    """The number of components a small fit of ``n_components`` runs with, the first
    ``n_components`` active: :data:`COMPONENT_CLASS` for 2 up to it, when the padded problem is
    small and at least that many rows have positive weight (a random start draws a distinct row
    per component); None (not padded) otherwise."""
    k = COMPONENT_CLASS
    if (2 <= n_components <= k and n_rows * n_features * k <= PAD_COMPONENTS_MAX_SIZE
            and n_weighted >= k):
        return k
    return None
