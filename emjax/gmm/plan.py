"""The static plan of the fused E-step pass: which layout, form, chunking and orientation runs
for a given (covariance type, dtype, N, D, K, backend), from a tuning table keyed by backend.

:func:`make_plan` is the one place the choice is made; the compiled fit takes the resulting
:class:`PassPlan` as a static argument (part of jit's cache key) and :mod:`emjax.gmm.kernels`
dispatches on its fields. :func:`explain_plan` prints it in words. Tuning measurements are in
``docs/performance.md``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

import jax
import numpy as np

from emjax._sizes import component_class, draws_per_index, padded_rows

#: How the log-densities are formed (see :mod:`emjax.gmm.kernels`).
FORMS = ("packed", "whitened", "tied", "diag", "spherical")
#: What the pass reads: row chunks of X, chunks of X^T, precomputed feature rows, or feature row
#: blocks with their transposes.
LAYOUTS = ("rows", "transposed", "features", "feature_blocks")
#: How the packed outer products of a row chunk are built.
PACKED_PRODUCTS = ("transposed", "select_gemm", "gather")
#: How the whitened form's weighted scatter is contracted.
WHITENED_SCATTERS = ("gx_x_materialised", "gx_x", "x_gx")

_FORMS_OF = {"full": ("packed", "whitened"), "tied": ("tied",), "diag": ("diag",),
             "spherical": ("spherical",)}
_LAYOUTS_OF = {"packed": ("rows", "features", "feature_blocks"), "whitened": ("rows",),
               "tied": ("rows",), "diag": LAYOUTS, "spherical": LAYOUTS}


@dataclasses.dataclass(frozen=True)
class PassPlan:
    """How one fit's E-step pass runs. Frozen and hashable: a static argument of the compiled fit.

    Attributes:
      covariance_type: ``"full"``, ``"tied"``, ``"diag"`` or ``"spherical"``.
      fused: the fused chunked pass (E-step and the next M-step's statistics in one pass over
        the data); ``False``: the dense reference steps (``(N, K)`` responsibilities).
      form: how the log-densities are formed: ``"packed"`` (full: packed outer products
        ``x_i x_j`` times the packed precisions), ``"whitened"`` (full: ``x @ [U_1 ... U_K]``),
        ``"tied"``, ``"diag"``, ``"spherical"``.
      layout: what the pass reads: ``"rows"`` (chunks of ``X``), ``"transposed"`` (chunks of
        ``X^T``), ``"features"`` (feature rows ``[q(x), x - c, 1]`` built once per fit) or
        ``"feature_blocks"`` (the same as separate row blocks with their transposes).
      chunk_size: rows per chunk (per block for ``"feature_blocks"``).
      materialise_transposes: contractions ``a^T b`` over the samples materialise ``a^T`` and
        run a plain GEMM, rather than one ``dot_general`` over the leading axes.
      packed_products: packed form on ``"rows"``/``"features"``: the products built from
        ``x^T`` (``"transposed"``), by 0/1 selection GEMMs (``"select_gemm"``) or a gather.
      whitened_scatter: whitened form: ``[g_k x]^T x`` with the transpose materialised,
        ``[g_k x]^T x`` as one ``dot_general``, or ``x^T [g_k x]``.
      reseed_cond: rank the re-seeding candidates under a ``lax.cond`` on an empty component
        (else at every iteration).
      blocked_inverse: the M-step inverts the Cholesky factors by batched block products
        rather than a triangular solve.
      lapack: the M-step factorises covariances by LAPACK's Cholesky (a custom call); ``False``:
        by a loop over columns of batched products (with ``blocked_inverse``, the program then
        calls no LAPACK kernel, whose first use in a process costs a SciPy import).
      opt_level: XLA's backend optimisation level of the compiled fit (0 compiles faster and
        runs slower: for problems that run for a few milliseconds).
      fusion_emitters: XLA:CPU's MLIR fusion emitters (``False``: its older LLVM IR emitters,
        which compile the dense reference steps' many small fusions faster).
      skipped_passes: XLA HLO passes left out of the compilation (``xla_disable_hlo_passes``):
        loop passes whose fixed-point iterations are a fifth of a small program's
        compilation and whose gain is tiny where an iteration takes a millisecond.
      unrolled: few features and components: the M-step factorises and inverts by closed
        forms unrolled over the features (no LAPACK call), and a non-fused fit runs the
        unrolled steps of :mod:`emjax.gmm.unrolled` (elementwise on ``(K, N)`` arrays, one per
        feature) instead of the dense reference steps.
      compact: unrolled steps: under ``jax.vmap`` over more than this many fits, step only the
        unfinished ones, this many at a time (:func:`emjax.em.run_compacted`); 0: the vmapped
        loop steps every fit until the slowest one stops.
      active_loop: dense steps of full (and tied) covariances with padded components compute
        each active component's whitened distances and scatter in a loop over the active ones
        (a traced count), so the padding costs nothing; ``False``: one batched product over
        every component, padding included.
      pool_branches: dense full steps run with a traced pooling code (small tied, diagonal and
        spherical fits sharing the full program, :func:`pooled_type`): each pooled type's
        distances, moments and factorisation are a branch of the program (``lax.switch``), as
        cheap as that type's own steps; ``False``: every type computes the full ones and the
        M-step pools them (a smaller program, which compiles faster).
      sequential_restarts: the restarts run one after the other in the program (``lax.map``),
        each to its own convergence, rather than vmapped (every lane stepped until the
        slowest stops): for steps whose GEMMs are large enough that batching gains little.
      backend: the backend whose tuning table produced the plan.
    """

    covariance_type: str
    fused: bool = True
    form: str = "diag"
    layout: str = "rows"
    chunk_size: int = 1024
    materialise_transposes: bool = False
    packed_products: str = "gather"
    whitened_scatter: str = "gx_x"
    reseed_cond: bool = True
    blocked_inverse: bool = False
    lapack: bool = True
    opt_level: int = 1
    fusion_emitters: bool = True
    skipped_passes: tuple[str, ...] = ()
    unrolled: bool = False
    compact: int = 0
    active_loop: bool = False
    pool_branches: bool = False
    sequential_restarts: bool = False
    backend: str = "any"

    def __post_init__(self):
        if self.covariance_type not in _FORMS_OF:
            raise ValueError(f"covariance_type must be one of {tuple(_FORMS_OF)}, "
                             f"got {self.covariance_type!r}")
        if self.form not in _FORMS_OF[self.covariance_type]:
            raise ValueError(f"form {self.form!r} does not fit covariance_type "
                             f"{self.covariance_type!r} (one of "
                             f"{_FORMS_OF[self.covariance_type]})")
        if self.layout not in _LAYOUTS_OF[self.form]:
            raise ValueError(f"layout {self.layout!r} does not fit form {self.form!r} "
                             f"(one of {_LAYOUTS_OF[self.form]})")
        if self.packed_products not in PACKED_PRODUCTS:
            raise ValueError(f"packed_products must be one of {PACKED_PRODUCTS}, "
                             f"got {self.packed_products!r}")
        if self.layout != "rows" and self.packed_products == "transposed":
            raise ValueError("packed_products='transposed' applies to layout='rows' only")
        if self.whitened_scatter not in WHITENED_SCATTERS:
            raise ValueError(f"whitened_scatter must be one of {WHITENED_SCATTERS}, "
                             f"got {self.whitened_scatter!r}")
        if not (isinstance(self.chunk_size, (int, np.integer)) and self.chunk_size >= 1):
            raise ValueError(f"chunk_size must be a positive int, got {self.chunk_size!r}")
        if self.opt_level not in (0, 1, 2, 3):
            raise ValueError(f"opt_level must be 0, 1, 2 or 3, got {self.opt_level!r}")
        if not (isinstance(self.compact, (int, np.integer)) and self.compact >= 0):
            raise ValueError(f"compact must be an int >= 0, got {self.compact!r}")

    def compiler_options(self) -> dict:
        """The XLA compiler options of the compiled fit."""
        options = {"xla_backend_optimization_level": self.opt_level}
        if not self.fusion_emitters:
            options["xla_cpu_use_fusion_emitters"] = False
        if self.skipped_passes:
            options["xla_disable_hlo_passes"] = ",".join(self.skipped_passes)
        return options

    def replace(self, **changes) -> PassPlan:
        """A copy with ``changes`` (checked like a new plan)."""
        return dataclasses.replace(self, **changes)


class Tuning(NamedTuple):
    """One backend's tuned constants (the reason for each is in ``docs/performance.md``)."""

    fused_min_size: Mapping[str, int]  # per covariance type: n_samples * n_features *
    # n_components from which the pass is fused (below it the dense steps, which compile faster)
    dense_max_samples: int  # ... and past this many samples whatever the size
    full_form: str  # "auto": packed unless few components or wide float32; else that form
    few_components_ratio: int  # full: whitened when ratio * K <= D ("auto")
    select_gemm_max_features: int  # float32 packed products by selection GEMMs up to this D
    packed_transposed: bool  # packed form on rows builds its products from x^T
    transposed_diagonal: bool  # diagonal/spherical read X^T in chunks
    chunk_bytes: int  # budget of one rows-layout chunk's features
    transposed_chunk_bytes: int  # budget of one transposed chunk (cache-sized)
    power_of_two_chunks: bool  # rows chunks rounded down to 2^j in [256, 32768]
    feature_rows: bool  # diagonal/spherical/packed read feature rows built once per fit
    feature_rows_min_samples_f32: int  # float32 diagonal/spherical: feature rows from this N
    feature_rows_full_max_bytes: int  # packed full: feature rows while they fit in this
    feature_blocks_max_bytes: int  # features in row blocks with transposes up to this
    feature_blocks_min_components_f32: int  # float32 takes the blocks from this many K
    feature_block_rows: int  # rows per block at most
    feature_min_blocks: int  # at least this many blocks (independent: one per core)
    feature_min_block_rows: int  # of at least this many rows
    feature_chunk_bytes: int  # budget of one feature-row chunk
    feature_one_chunk_bytes: int  # features up to this are read in one chunk
    whitened_one_chunk_bytes: int  # whitened intermediates up to this: one chunk
    whitened_scatter_t_max_rows: int  # chunks up to this form [g_k x]^T x materialised
    materialise_f64: bool  # float64 a^T b materialises a^T (float32 does not)
    reseed_cond: bool
    blocked_inverse_min_features: int  # blocked inverse of the Cholesky factors from this D
    small_max_size: int  # up to this n_samples * n_features * n_components: the small plan
    small_max_features: int  # the small plan factorises without LAPACK up to this D
    small_opt_level: int  # the small plan's XLA backend optimisation level
    small_skipped_passes: tuple[str, ...]  # ... and the HLO passes it leaves out
    opt_level: int  # XLA backend optimisation level of every other plan
    dense_fusion_emitters: bool  # the dense (unfused) plans keep XLA:CPU's fusion emitters
    fused_fusion_emitters_min_size: int  # fused plans from this n * d * k keep them (below it
    # the LLVM IR emitters: about 1 s less compilation, iterations 5-20 % slower)
    unrolled_max_features: int  # unrolled steps and factorisations up to this D
    unrolled_max_components: int  # ... and this K
    compact_chunk: int  # unrolled: fits stepped at a time under vmap (0: all until the slowest)
    active_loop_min_features: int  # dense full/tied steps loop over the active components
    # from this D (PassPlan.active_loop)
    pool_branches_min_features: int  # dense full steps branch per pooled type from this D
    # (PassPlan.pool_branches)
    sequential_restarts_min_work: int  # restarts one after the other from this E-step size
    diagonal_as_full_max_features: int  # small diagonal and spherical fits up to this D run
    # the full fit's program (pooled_plan): one program per data set instead of two
    tiny_features: int  # fits of at most this many features ...
    tiny_max_rows: int  # ... and rows run on this many features (zero columns) and a power of
    # two of rows: tiny data sets of different shapes share one program (0: never) ...
    tiny_opt_level: int  # ... compiled at this XLA backend optimisation level
    # per restart, n_samples * n_components * (n_quadratic + n_features) multiply-adds


#: The CPU tuning (XLA:CPU, 2-core AVX-512; docs/performance.md has the measurements).
CPU = Tuning(
    fused_min_size=MappingProxyType({"full": 2**23, "tied": 2**20, "diag": 2**24,
                                     "spherical": 2**24}),
    dense_max_samples=2**16,
    full_form="auto",
    few_components_ratio=4,
    select_gemm_max_features=48,
    packed_transposed=True,
    transposed_diagonal=True,
    chunk_bytes=16 * 2**20,
    transposed_chunk_bytes=256 * 2**10,
    power_of_two_chunks=True,
    feature_rows=True,
    feature_rows_min_samples_f32=2**15,
    feature_rows_full_max_bytes=2**28,
    feature_blocks_max_bytes=192 * 2**20,
    feature_blocks_min_components_f32=32,
    feature_block_rows=32768,
    feature_min_blocks=2,
    feature_min_block_rows=1024,
    feature_chunk_bytes=32 * 2**20,
    feature_one_chunk_bytes=64 * 2**20,
    whitened_one_chunk_bytes=128 * 2**20,
    whitened_scatter_t_max_rows=4096,
    materialise_f64=True,
    reseed_cond=True,
    blocked_inverse_min_features=24,
    small_max_size=2**16,
    small_max_features=16,
    small_opt_level=0,
    small_skipped_passes=("while-loop-invariant-code-motion", "simplify-while-loops"),
    opt_level=1,
    dense_fusion_emitters=False,
    fused_fusion_emitters_min_size=2**22,
    unrolled_max_features=4,
    unrolled_max_components=8,
    compact_chunk=128,
    active_loop_min_features=12,
    pool_branches_min_features=24,
    sequential_restarts_min_work=2**20,
    diagonal_as_full_max_features=64,
    tiny_features=16,
    tiny_max_rows=512,
    tiny_opt_level=1,
)

#: Unmeasured backends (GPU, TPU, others): the plain, batched, GEMM-shaped pass. Full
#: covariances whitened (one ``(chunk, D) @ (D, K D)`` GEMM), everything on row chunks of a
#: large budget, contractions as single ``dot_general``s, triangular solves from LAPACK-like
#: kernels.
PLAIN = Tuning(
    fused_min_size=MappingProxyType(dict.fromkeys(_FORMS_OF, 2**20)),
    dense_max_samples=2**62,
    full_form="whitened",
    few_components_ratio=0,
    select_gemm_max_features=0,
    packed_transposed=False,
    transposed_diagonal=False,
    chunk_bytes=64 * 2**20,
    transposed_chunk_bytes=0,
    power_of_two_chunks=False,
    feature_rows=False,
    feature_rows_min_samples_f32=0,
    feature_rows_full_max_bytes=0,
    feature_blocks_max_bytes=0,
    feature_blocks_min_components_f32=0,
    feature_block_rows=0,
    feature_min_blocks=1,
    feature_min_block_rows=0,
    feature_chunk_bytes=0,
    feature_one_chunk_bytes=0,
    whitened_one_chunk_bytes=0,
    whitened_scatter_t_max_rows=0,
    materialise_f64=False,
    reseed_cond=True,
    blocked_inverse_min_features=2**31,
    small_max_size=0,
    small_max_features=0,
    small_opt_level=1,
    small_skipped_passes=(),
    opt_level=1,
    dense_fusion_emitters=True,
    fused_fusion_emitters_min_size=0,
    unrolled_max_features=0,
    unrolled_max_components=0,
    compact_chunk=0,
    active_loop_min_features=2**31,
    pool_branches_min_features=0,
    sequential_restarts_min_work=2**62,
    diagonal_as_full_max_features=0,
    tiny_features=0,
    tiny_max_rows=0,
    tiny_opt_level=1,
)

#: The tuning table: ``jax.default_backend()`` -> :class:`Tuning`; anything else gets PLAIN.
TUNING = {"cpu": CPU}


def tuning(backend: str | None = None) -> Tuning:
    """The :class:`Tuning` of ``backend`` (default ``jax.default_backend()``)."""
    return TUNING.get(backend or jax.default_backend(), PLAIN)


def n_quadratic(covariance_type: str, d: int) -> int:
    """Columns of the quadratic features ``q(x)``: ``D(D+1)/2`` (full), 1 (spherical), else D."""
    return {"full": d * (d + 1) // 2, "spherical": 1}.get(covariance_type, d)


def feature_row_columns(covariance_type: str, d: int) -> int:
    """Columns of the feature rows ``[q, x - c, 1]``: ``nq + D + 1``."""
    return n_quadratic(covariance_type, d) + d + 1


def blocked_inverse_default(n_features: int, backend: str | None = None) -> bool:
    """Whether the M-step inverts Cholesky factors by block products, for callers without a
    plan (the backend's :attr:`Tuning.blocked_inverse_min_features`)."""
    return n_features >= tuning(backend).blocked_inverse_min_features


def _form(t: Tuning, covariance_type: str, d: int, dtype: np.dtype, k: int) -> str:
    if covariance_type != "full":
        return covariance_type
    if t.full_form != "auto":
        return t.full_form
    few = t.few_components_ratio * k <= d
    wide_f32 = dtype == np.float32 and d > t.select_gemm_max_features
    return "whitened" if few or wide_f32 else "packed"


def _feature_layout(t: Tuning, form: str, covariance_type: str, n: int, d: int,
                    dtype: np.dtype, k: int) -> str | None:
    """``"features"``/``"feature_blocks"`` where the feature rows are built once per fit."""
    if not t.feature_rows or form not in ("packed", "diag", "spherical"):
        return None
    cols = feature_row_columns(covariance_type, d)
    if form == "packed":
        if n * cols * dtype.itemsize > t.feature_rows_full_max_bytes:
            return None
    elif dtype == np.float32 and n < t.feature_rows_min_samples_f32:
        return None
    wide = dtype == np.float64 or k >= t.feature_blocks_min_components_f32
    if wide and n * cols * dtype.itemsize <= t.feature_blocks_max_bytes:
        return "feature_blocks"
    return "features"


def _even(n: int, rows: int) -> int:
    """Rows per chunk when ``n`` is split evenly into chunks of at most ``rows``."""
    n_chunks = max(1, -(-n // max(1, rows)))
    return -(-n // n_chunks)


def _chunk_size(t: Tuning, form: str, layout: str, covariance_type: str, n: int, d: int,
                itemsize: int, k: int) -> int:
    if layout in ("features", "feature_blocks"):
        width = max(feature_row_columns(covariance_type, d), k)
        if layout == "feature_blocks":
            rows = min(t.feature_block_rows, max(t.feature_min_block_rows,
                                                 t.feature_chunk_bytes // (itemsize * width)))
            n_blocks = max(1, -(-n // rows))
            if n >= 2 * t.feature_min_block_rows:
                n_blocks = max(n_blocks, t.feature_min_blocks)
            return -(-n // n_blocks)
        if n * width * itemsize <= t.feature_one_chunk_bytes:
            return n
        return _even(n, max(1024, t.feature_chunk_bytes // (itemsize * width)))
    if form == "whitened" and n * 2 * (k + 1) * d * itemsize <= t.whitened_one_chunk_bytes:
        return n
    if layout == "transposed":
        rows = t.transposed_chunk_bytes // (itemsize * 2 * max(d, k))
    elif t.power_of_two_chunks:
        cols = d * (d + 1) // 2 + d if covariance_type == "full" else 2 * d
        rows = t.chunk_bytes // (itemsize * cols)
    else:
        # The widest per-row intermediate of the form: features, K log-densities, K D whitened.
        width = {"packed": d * (d + 1) // 2 + d, "whitened": 2 * (k + 1) * d}.get(form, 2 * d)
        return min(n, _even(n, t.chunk_bytes // (itemsize * max(width, k))))
    if t.power_of_two_chunks:
        return int(2 ** int(math.log2(max(256, min(32768, rows)))))
    return min(n, _even(n, rows))


def make_plan(covariance_type: str, dtype, n_samples: int, n_features: int, n_components: int,
              backend: str | None = None) -> PassPlan:
    """The :class:`PassPlan` of a fit, from the tuning table of ``backend``.

    Pure: the same arguments give the same plan. CPU takes its measured choices
    (:data:`CPU`); any other backend (GPU, TPU, unknown) the plain batched GEMM pass
    (:data:`PLAIN`).

    Args:
      covariance_type: ``"full"``, ``"tied"``, ``"diag"`` or ``"spherical"``.
      dtype: the data's dtype (float32 or float64).
      n_samples, n_features, n_components: the problem's static sizes.
      backend: ``"cpu"``, ``"gpu"``, ``"tpu"``, ... (default ``jax.default_backend()``).

    Returns:
      :class:`PassPlan`.
    """
    backend = backend or jax.default_backend()
    t = tuning(backend)
    dtype = np.dtype(dtype)
    n, d, k = int(n_samples), int(n_features), int(n_components)
    if covariance_type not in _FORMS_OF:
        raise ValueError(f"covariance_type must be one of {tuple(_FORMS_OF)}, "
                         f"got {covariance_type!r}")
    form = _form(t, covariance_type, d, dtype, k)
    layout = _feature_layout(t, form, covariance_type, n, d, dtype, k)
    if layout is None:
        diagonal = form in ("diag", "spherical")
        layout = "transposed" if diagonal and t.transposed_diagonal else "rows"
    chunk = _chunk_size(t, form, layout, covariance_type, n, d, dtype.itemsize, k)
    if form == "packed" and layout == "rows" and t.packed_transposed:
        products = "transposed"
    elif dtype == np.float32 and d <= t.select_gemm_max_features:
        products = "select_gemm"
    else:
        products = "gather"
    materialise = t.materialise_f64 and dtype == np.float64
    if form == "whitened" and chunk <= t.whitened_scatter_t_max_rows:
        scatter = "gx_x_materialised"
    elif form == "whitened" and t.whitened_scatter_t_max_rows > 0:
        scatter = "x_gx"
    else:
        scatter = "gx_x"
    # Small problems run for milliseconds: compiling fast matters more than running fast.
    small = n * d * k <= t.small_max_size
    no_lapack = small and d <= t.small_max_features
    # Below these sizes the dense steps compile about 1 s faster and run at most 1.5x slower.
    fused = n * d * k >= t.fused_min_size[covariance_type] or n > t.dense_max_samples
    unrolled = not fused and d <= t.unrolled_max_features and k <= t.unrolled_max_components
    return PassPlan(
        covariance_type=covariance_type,
        fused=fused,
        form=form,
        layout=layout,
        chunk_size=max(1, chunk),
        materialise_transposes=materialise,
        packed_products=products,
        whitened_scatter=scatter,
        reseed_cond=t.reseed_cond,
        blocked_inverse=no_lapack or d >= t.blocked_inverse_min_features,
        lapack=not no_lapack,
        opt_level=t.small_opt_level if small else t.opt_level,
        skipped_passes=t.small_skipped_passes if small else (),
        fusion_emitters=(n * d * k >= t.fused_fusion_emitters_min_size if fused
                         else t.dense_fusion_emitters),
        unrolled=unrolled,
        compact=t.compact_chunk if unrolled else 0,
        active_loop=(not fused and not unrolled and covariance_type in ("full", "tied")
                     and d >= t.active_loop_min_features),
        pool_branches=(not fused and not unrolled and covariance_type == "full"
                       and pool_branches(d, backend)),
        sequential_restarts=(not unrolled and n * k * (n_quadratic(covariance_type, d) + d)
                             >= t.sequential_restarts_min_work),
        backend=backend,
    )


#: The covariance type each type's small fits run as, their M-step pooling the covariances
#: (see :func:`pooled_plan`); with few features, diagonal and spherical fits run as full ones.
POOLED_AS = {"full": "full", "tied": "full", "diag": "diag", "spherical": "diag"}


def pooled_type(covariance_type: str, n_features: int, backend: str | None = None) -> str:
    """The covariance type whose program a small fit of ``covariance_type`` runs."""
    if (covariance_type in ("diag", "spherical")
            and n_features <= tuning(backend).diagonal_as_full_max_features):
        return "full"
    return POOLED_AS[covariance_type]


def pool_branches(n_features: int, backend: str | None = None) -> bool:
    """Whether dense full steps of ``n_features`` that pool other types compute each pooled
    type's steps as a branch of their own (:attr:`PassPlan.pool_branches`; the selection grid
    asks too)."""
    return n_features >= tuning(backend).pool_branches_min_features


def pooled_plan(plan: PassPlan, dtype, n_samples: int, n_features: int,
                n_components: int) -> PassPlan | None:
    """The plan of the fit that a fit planned as ``plan`` runs as (:func:`pooled_type`: tied as
    full, spherical as diagonal; with few features diagonal and spherical as full), its M-step
    pooling the covariances to the same values, so that fits of these types share one program;
    the plan itself when it runs as planned; None when either plan is fused (the fused forms
    differ), where each type runs its own program; a tied fit runs the full program when that
    one is not fused, even where its own pass would be (pooled, its steps whiten once and form
    one scatter, as fast as that pass at these sizes)."""
    if plan.fused and plan.covariance_type != "tied":
        return None
    base = pooled_type(plan.covariance_type, n_features, plan.backend)
    if base == plan.covariance_type:
        return plan
    base_plan = make_plan(base, dtype, n_samples, n_features, n_components, plan.backend)
    return None if base_plan.fused else base_plan


def tiny_shape(covariance_type: str, n_samples: int, n_features: int,
               backend: str | None = None) -> tuple[int, int] | None:
    """The ``(rows, features)`` a small fit of tiny data runs on: a power of two of rows (at
    least 64) and ``Tuning.tiny_features`` features, which every tiny data set shares (as full
    covariances, :func:`pooled_type`); None when the data are not tiny on ``backend``."""
    t = tuning(backend)
    if (n_samples <= t.tiny_max_rows and n_features <= t.tiny_features
            and pooled_type(covariance_type, t.tiny_features, backend) == "full"):
        return max(64, 1 << (n_samples - 1).bit_length()), t.tiny_features
    return None


class RunShape(NamedTuple):
    """What :func:`emjax.fit` runs a small fit on (:func:`run_shape`)."""

    rows: int  # the rows' size class (the padding rows of weight 0)
    features: int  # the features (tiny data: Tuning.tiny_features, the extra ones zero)
    component_class: int | None  # the components (the first n_components active); None: K
    tiny: bool  # tiny data (rows and features padded: one program for every tiny data set)


def run_shape(covariance_type: str, n_samples: int, n_features: int, n_components: int,
              row_bytes: int, n_weighted: int, *, pad_components: bool = True,
              backend: str | None = None) -> RunShape | None:
    """The shape of the program :func:`emjax.fit` runs a fit without a given start or plan on:
    its rows padded to their size class (tiny data also to :attr:`Tuning.tiny_features`
    features, :func:`tiny_shape`), and with ``pad_components`` its components to their class
    (``n_weighted``: the rows of positive weight); None when the data are too large to pad."""
    rows = padded_rows(n_samples, row_bytes)
    if rows is None:
        return None
    tiny = tiny_shape(covariance_type, n_samples, n_features, backend)
    d = n_features
    if tiny is not None:
        rows, d = tiny
    k = component_class(n_components, rows, d, n_weighted) if pad_components else None
    return RunShape(rows, d, k, tiny is not None)


def run_plan(covariance_type: str, dtype, n_samples: int, n_features: int, n_components: int,
             *, padded: bool, tiny: bool, backend: str | None = None) -> tuple[PassPlan, bool]:
    """The plan :func:`emjax.fit` runs for sizes ``n_samples, n_features, n_components`` (those
    of its program: :func:`run_shape`'s when ``padded``), and whether its M-step pools them.

    A padded (small) fit runs the program of the type its M-step pools from
    (:func:`pooled_plan`; tied as full, spherical as diagonal; with few features diagonal and
    spherical as full), so a sweep over the four covariance types compiles one or two programs.
    One program serves every tiny data set: compiled at :attr:`Tuning.tiny_opt_level`, to run
    fast rather than to compile fast."""
    plan = make_plan(covariance_type, dtype, n_samples, n_features, n_components, backend)
    pooled = pooled_plan(plan, dtype, n_samples, n_features, n_components) if padded else None
    if pooled is not None:
        plan = pooled
    if tiny:
        plan = plan.replace(opt_level=tuning(backend).tiny_opt_level, skipped_passes=())
    return plan, pooled is not None


_FORM_WORDS = {
    "packed": "packed outer products x_i x_j (i <= j) times the packed precisions: one GEMM "
              "for the K log-densities, one for every moment",
    "whitened": "whitened: one GEMM x @ [U_1 ... U_K] for every component at once, one GEMM "
                "[g_1 x ... g_K x]^T x for the K scatters",
    "tied": "tied: x whitened by the shared factor, one pooled scatter",
    "diag": "diagonal: features [x^2, x] times the precisions, one GEMM each way",
    "spherical": "spherical: features [|x|^2, x] times the precisions, one GEMM each way",
}
_LAYOUT_WORDS = {
    "rows": "row chunks of X",
    "transposed": "chunks of X^T (transposed once per fit)",
    "features": "the feature rows [q(x), x - c, 1], built once per fit",
    "feature_blocks": "the feature rows as separate row blocks with their transposes, built "
                      "once per fit",
}


def describe(plan: PassPlan, n_samples: int | None = None, n_features: int | None = None,
             n_components: int | None = None, dtype=None) -> str:
    """A few lines saying what ``plan`` runs (with the problem's sizes when given)."""
    head = f"PassPlan for covariance_type={plan.covariance_type!r}"
    if n_samples is not None:
        head += f", N={n_samples}, D={n_features}, K={n_components}"
    if dtype is not None:
        head += f", {np.dtype(dtype).name}"
    head += f", backend {plan.backend!r}"
    lines = [head]
    if not plan.fused and plan.unrolled:
        lines.append("  E-step: the unrolled steps (elementwise on (K, N) arrays, one per "
                     "feature; the next M-step's moments in the same pass): the problem is "
                     "small, with few features")
    elif not plan.fused:
        lines.append("  E-step: the dense reference steps ((N, K) responsibilities, then a "
                     "two-pass M-step): the problem is small")
    else:
        lines.append(f"  E-step: fused chunked pass, {_FORM_WORDS[plan.form]}")
        lines.append(f"  reads: {_LAYOUT_WORDS[plan.layout]}")
        unit = "block" if plan.layout == "feature_blocks" else "chunk"
        chunks = ""
        if n_samples:
            count = -(-n_samples // plan.chunk_size)
            chunks = f" ({count} {unit}{'s' if count > 1 else ''})"
        lines.append(f"  rows per {unit}: {plan.chunk_size}{chunks}")
        if plan.form == "packed" and plan.layout != "feature_blocks":
            lines.append(f"  packed products: {plan.packed_products}")
        if plan.form == "whitened":
            lines.append(f"  whitened scatter: {plan.whitened_scatter}")
        lines.append("  contractions over samples: " + (
            "transpose materialised, plain GEMM" if plan.materialise_transposes
            else "one dot_general"))
    # the precedence in covariance._precision_cholesky_of_matrix: unrolled, else LAPACK, else loop
    if plan.unrolled:
        lines.append("  M-step Cholesky factors and their inverses: closed form, unrolled (no "
                     "LAPACK call)")
    elif plan.lapack:
        lines.append("  M-step inverse of the Cholesky factors: " + (
            "blocked (batched GEMMs)" if plan.blocked_inverse else "triangular solve"))
    else:
        lines.append("  M-step Cholesky factors and their inverses: a loop over columns (no "
                     "LAPACK call)")
    lines.append(f"  XLA backend optimisation level: {plan.opt_level}" + (
        "" if plan.fusion_emitters else ", LLVM IR fusion emitters") + (
        f"; HLO passes left out: {', '.join(plan.skipped_passes)}" if plan.skipped_passes
        else ""))
    if plan.active_loop:
        lines.append("  padded components: the dense steps compute the active ones only (a "
                     "loop over them)")
    if plan.pool_branches:
        lines.append("  tied, diagonal and spherical fits pooled in this program: their "
                     "distances, moments and factors as their own, a branch each")
    if plan.compact:
        lines.append(f"  under jax.vmap over many fits: the unfinished ones stepped "
                     f"{plan.compact} at a time")
    lines.append("  restarts: " + (
        "one after the other, each to its own convergence (large steps)"
        if plan.sequential_restarts else "vmapped (stepped together until the slowest stops)"))
    lines.append("  re-seeding candidates ranked: " + (
        "only when a component is empty (lax.cond)" if plan.reseed_cond else "every iteration"))
    return "\n".join(lines)


def explain_plan(n_samples: int, n_features: int, n_components: int, *,
                 covariance_type: str = "full", dtype="float32",
                 backend: str | None = None) -> str:
    """Which path :func:`emjax.fit` runs for a problem, in words ("which path runs for me?").

    Args:
      n_samples, n_features, n_components: the problem's sizes.
      covariance_type: ``"full"``, ``"tied"``, ``"diag"`` or ``"spherical"``.
      dtype: the data's dtype (``"float32"``, or ``"float64"`` with JAX's x64 mode).
      backend: default ``jax.default_backend()``.

    Returns:
      A multi-line description of :func:`make_plan`'s plan (print it).

    Examples:
      >>> import emjax
      >>> print(emjax.explain_plan(100_000, 16, 16, backend="gpu").splitlines()[1])
      ... # doctest: +ELLIPSIS
        E-step: fused chunked pass, whitened: ...
    """
    dtype = np.dtype(dtype)
    shape = run_shape(covariance_type, n_samples, n_features, n_components,
                      dtype.itemsize * n_features, n_samples,
                      pad_components=draws_per_index(), backend=backend)
    n, d, k = n_samples, n_features, n_components
    if shape is not None:  # planned, as emjax.fit plans it, for the shape its program runs on
        n, d, k = shape.rows, shape.features, shape.component_class or n_components
    runs, _ = run_plan(covariance_type, dtype, n, d, k, padded=shape is not None,
                       tiny=shape is not None and shape.tiny, backend=backend)
    text = describe(runs, n_samples, n_features, n_components, dtype)
    if runs.covariance_type != covariance_type:
        base = runs.covariance_type
        text += (f"\n  covariance_type={covariance_type!r}: emjax.fit without a given start runs "
                 f"it as {base!r} covariances pooled by the M-step (the same values; one "
                 f"program with {base!r} fits)")
    if shape is not None and (n, k) != (n_samples, n_components):
        text += (f"\n  emjax.fit without a given start runs it on {n} rows ({n - n_samples} of "
                 f"weight 0) and {k} components ({k - n_components} of weight 0): fits of "
                 "nearby sizes share its program")
    if shape is not None and shape.tiny:
        text += (f"\n  tiny data: emjax.fit without a given start runs it on {d} features "
                 "(zero columns, identity covariance blocks) and a power of two of rows: one "
                 "program for every tiny data set")
    return text


__all__ = ["CPU", "PLAIN", "POOLED_AS", "TUNING", "PassPlan", "RunShape", "Tuning", "describe",
           "explain_plan", "make_plan", "pooled_plan", "pooled_type", "run_plan", "run_shape",
           "tiny_shape", "tuning"]
