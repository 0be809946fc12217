"""Size classes: the ladders that static sizes (rows, units, restarts, history lengths) are
padded up to, so that fits of nearby sizes share one compiled program."""

from __future__ import annotations

import math


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


def _ladder_class(n: int, multiple: int) -> int:
    """The smallest ``2^(j / SIZE_CLASSES_PER_OCTAVE)``, rounded up to a multiple of
    ``multiple``, that is ``>= n``: the one geometric ladder of row and restart classes."""
    j = math.ceil(SIZE_CLASSES_PER_OCTAVE * math.log2(n)) - 1
    while True:
        c = -(-math.ceil(2.0 ** (j / SIZE_CLASSES_PER_OCTAVE)) // multiple) * multiple
        if c >= n:
            return c
        j += 1


def size_class(n: int) -> int:
    """The smallest size class ``>= n``: at least 64, else ``2^(j / 4)`` rounded up to a
    multiple of 8 (so at most 19 % padding rows)."""
    n = int(n)
    return 64 if n <= 64 else _ladder_class(n, 8)
