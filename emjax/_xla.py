"""XLA compiler options of the compiled fits outside the Gaussian-mixture pass plan (the
failure-mode mixture, other component families, Gaussian mixtures with missing values, model
selection grids, generalised EM).

The options are chosen on the host, before the call, by :func:`compiler_options` from the
problem's size and a table keyed by backend (:data:`TUNING`); each option set has its own jitted
function (:class:`JitByOptions`), so the options are part of the cache key and nothing is read
at trace time. The measurements behind the table are in ``docs/performance.md``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax

from emjax import _compile_cache


class CompileTuning(NamedTuple):
    """One backend's compiler options for the fits of :data:`KINDS`."""

    opt_level: int  # XLA's backend (LLVM) optimisation level of every such program
    ir_emitters_max_values: Mapping[str, int]  # per kind: up to this size, XLA:CPU's LLVM IR
    # emitters, which compile small programs in about half the time (larger ones run slower)
    sequential_restarts: frozenset = frozenset()  # kinds whose restarts run one after the
    # other in the program (lax.map), each to its own end, rather than vmapped


#: The programs the table covers, each with what :func:`compiler_options` takes as its size.
KINDS = {
    "failure_mode": "units x channels x modes x basis functions^2",
    "families": "rows x columns x components",
    "missing": "rows x features x components",
    "grid": "rows x features x largest number of components x grid points",
    "gem": "rows x features x components",
}

#: CPU (XLA:CPU): level 1 compiles faster than 2 with the same run time; the IR emitters up to
#: the measured sizes where they stop paying for themselves.
CPU = CompileTuning(
    opt_level=1,
    ir_emitters_max_values={"failure_mode": 2**18, "families": 2**21, "missing": 2**22,
                            "grid": 2**23, "gem": 2**24},
    # the missing-data pass is many small operations: batching restarts adds compile time and
    # no speed, and every lane waits for the slowest (docs/missing.md); the family fits keep
    # their staged batches, faster for many small restarts (experiments/restarts.py)
    sequential_restarts=frozenset({"missing"}),
)

#: Unmeasured backends (GPU, TPU, others): level 1 (as every emjax fit), nothing backend-specific.
PLAIN = CompileTuning(opt_level=1, ir_emitters_max_values={})

#: ``jax.default_backend()`` -> :class:`CompileTuning`; anything else gets :data:`PLAIN`.
TUNING = {"cpu": CPU}


def compiler_options(kind: str, size: int, backend: str | None = None) -> tuple:
    """The XLA options of a ``kind`` program (one of :data:`KINDS`) of ``size``, as a sorted tuple
    of ``(name, value)`` pairs (hashable: a key of :class:`JitByOptions`)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {tuple(KINDS)}, got {kind!r}")
    t = TUNING.get(backend or jax.default_backend(), PLAIN)
    options = {"xla_backend_optimization_level": t.opt_level}
    if size <= t.ir_emitters_max_values.get(kind, -1):
        options["xla_cpu_use_fusion_emitters"] = False
    return tuple(sorted(options.items()))


def sequential_restarts(kind: str, backend: str | None = None) -> bool:
    """Whether a ``kind`` program (one of :data:`KINDS`) runs its restarts one after the other
    (``emjax.em.run_restarts(..., sequential=True)``) on ``backend``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {tuple(KINDS)}, got {kind!r}")
    return kind in TUNING.get(backend or jax.default_backend(), PLAIN).sequential_restarts


class JitByOptions:
    """``jax.jit(fun, **jit_kwargs)``, compiled separately for each set of XLA options.

    ``f[options]`` is the jitted function with ``options`` (a tuple from
    :func:`compiler_options`); ``f[()]`` has none, the one to call inside a caller's trace
    (a nested jit may not carry compiler options). :meth:`call` and :meth:`compile` also use
    the disk cache's store of whole programs when it is on. Once ``max_programs`` compiled
    programs are held, taking one clears them all, so a long-running process holds a bounded
    number.
    """

    def __init__(self, fun: Callable, max_programs: int = 32, **jit_kwargs):
        self.fun = fun
        self.max_programs = max_programs
        self.jit_kwargs = jit_kwargs
        self._jitted: dict = {}
        self._executables: dict = {}  # loaded from (or written to) the disk cache
        _INSTANCES.add(self)

    def __getitem__(self, options: tuple) -> Callable:
        if self._cache_size() >= self.max_programs:
            self.clear()
        if options not in self._jitted:
            kw = dict(self.jit_kwargs, compiler_options=dict(options)) if options else \
                self.jit_kwargs
            self._jitted[options] = jax.jit(self.fun, **kw)
        return self._jitted[options]

    def call(self, options: tuple, args: tuple, static: dict, name: str):
        """``self[options](*args, **static)``; with the disk cache on, the compiled program comes
        from its store (a new process loads it without tracing; see
        :func:`emjax._compile_cache.load_or_compile`), ``name`` prefixing its file."""
        compiled = self._stored(options, args, static, name)
        if compiled is not None:
            return compiled(*args)
        with _compile_cache.gc_paused():  # a first call traces
            return self[options](*args, **static)

    def compile(self, options: tuple, args: tuple, static: dict, name: str):
        """The compiled ``self[options]`` for ``args`` (arrays or ``jax.ShapeDtypeStruct``) and
        ``static``: from the disk cache's store when it is on, as :meth:`call`."""
        compiled = self._stored(options, args, static, name)
        if compiled is not None:
            return compiled
        with _compile_cache.gc_paused():
            return self[options].lower(*args, **static).compile()

    def _stored(self, options: tuple, args: tuple, static: dict, name: str):
        """The program from the disk cache's store, or None when it is off or cannot keep it."""
        return _compile_cache.load_or_compile(self[options], args, static, self._executables,
                                              name, options)

    def lookup(self, options: tuple, args: tuple, static: dict, name: str):
        """The program's :class:`emjax._compile_cache.Slot` in the disk cache's store (None
        when it is off or cannot keep it), for a caller that compiles it itself."""
        return _compile_cache.lookup(self[options], args, static, self._executables, name,
                                     options)

    def clear(self) -> None:
        """Drop every compiled program held (in memory; the disk cache keeps its files)."""
        for f in self._jitted.values():
            f.clear_cache()
        self._executables.clear()

    def _cache_size(self) -> int:
        """Compiled programs held, over every option set."""
        return sum(f._cache_size() for f in self._jitted.values()) + len(self._executables)


#: Every :class:`JitByOptions`, for :func:`clear_all`.
_INSTANCES: weakref.WeakSet = weakref.WeakSet()


def clear_all() -> None:
    """Drop the compiled programs of every :class:`JitByOptions` (tests release them between
    modules)."""
    for f in list(_INSTANCES):
        f.clear()
