"""Data-parallel EM across devices and hosts with ``jax.sharding``: samples sharded, parameters
replicated, one all-reduce of sufficient statistics per EM iteration.

The layout::

    mesh = Mesh(devices, ("data",))            # 1-D mesh over every device of every process
    X, w: NamedSharding(mesh, P("data"))       # rows split across devices (padded, weight 0)
    params, stats, log-likelihood: P()         # replicated

The EM loop runs under :func:`jax.shard_map`: each device computes the E-step and the
sufficient statistics of its own rows (:func:`block_stats`), and a single ``jax.lax.psum`` sums
them together with the log-likelihood, the total weight and a pool of re-seeding candidates;
then every device performs the same (replicated) M-step from the summed statistics. We write the
``psum`` ourselves rather than letting jit's SPMD partitioner insert collectives from
``NamedSharding`` annotations because (i) the partitioner would see the per-sample E-step and the
M-step as one program and is free to choose where, and how many, collectives to insert (e.g. one
per reduction: ``nk``, ``sx``, ``sxx``, the log-likelihood, the ``top_k`` for re-seeding), while
EM's structure guarantees that *one* all-reduce of the additive statistics suffices; (ii) with
``shard_map`` the per-device program is exactly the single-device one, so the generic driver
:func:`emjax.em.run` / :func:`emjax.em.run_restarts` (``lax.while_loop``, vmapped restarts,
status bits) is reused unchanged. The one-off pre-processing (centring, k-means++ initialisation)
runs under plain ``jit`` on the sharded arrays and is partitioned automatically.

Multi-host: call ``jax.distributed.initialize(...)`` in every process, then :func:`fit` with each
process's own rows (see the README's "Scaling" section for a runnable two-process recipe).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from emjax import _validation as v
from emjax import em
from emjax.gmm import GMMParams, SuffStats, fitting, steps
from emjax.gmm.blocks import BlockStats, block_stats
from emjax.gmm.options import check_initial_values, check_options
from emjax.gmm.reseed import reseed

Array = jax.Array

DEFAULT_AXIS = "data"

__all__ = [
    "BlockStats",
    "ShardedData",
    "block_stats",
    "fit",
    "local_copy",
    "make_mesh",
    "make_model",
    "shard_data",
]


def make_model(covariance_type: str, reg_covar: float, *, axis_name: str = DEFAULT_AXIS,
               n_devices: int, empty_threshold: float = 1e-3):
    """The sharded GMM as the driver sees it, for use inside ``shard_map`` over ``axis_name``.

    ``data = (X_local, w_local, n_samples)``: this device's rows and weights, and the global
    number of (unpadded) samples. ``e_step`` does one ``psum`` of the :class:`BlockStats`
    (candidates gathered into per-device slots, so the gather is part of the same all-reduce);
    ``m_step`` is :func:`emjax.gmm.params_from_stats`; ``repair`` is
    :func:`emjax.gmm.reseed.reseed` on the gathered candidate pool, with the same emptiness rule as
    :func:`emjax.gmm.fitting.make_model` (mass below ``empty_threshold`` times the mean weight).
    """

    def e_step(params, data):
        X, w, _ = data
        k, d = params.means.shape
        b = block_stats(params, X, w, covariance_type=covariance_type, n_candidates=k)
        i = jax.lax.axis_index(axis_name)
        pool_x = jnp.zeros((n_devices, k, d), X.dtype).at[i].set(b.cand_x)
        pool_s = jnp.zeros((n_devices, k), b.cand_score.dtype).at[i].set(b.cand_score)
        # One flat buffer, so the iteration's communication is a single all-reduce whatever
        # XLA's all-reduce combiner decides (a psum of a tuple binds one psum per leaf).
        flat, unravel = ravel_pytree((b.nk, b.sx, b.sxx, b.ll_sum, b.w_sum, pool_x, pool_s))
        nk, sx, sxx, ll_sum, w_sum, pool_x, pool_s = unravel(jax.lax.psum(flat, axis_name))
        stats = SuffStats(nk, sx, sxx, params.means)
        return (stats, w_sum, pool_x.reshape(-1, d), pool_s.reshape(-1)), ll_sum / w_sum

    def m_step(estats, data):
        return fitting.m_step_from_stats(estats[0], covariance_type=covariance_type,
                                         reg_covar=reg_covar)

    def repair(params, estats, data):
        stats, w_sum, pool_x, pool_s = estats
        mean_w = w_sum / data[2].astype(w_sum.dtype)
        return reseed(params, stats.nk < empty_threshold * mean_w, pool_x, pool_s,
                              covariance_type=covariance_type)

    return e_step, m_step, repair


def make_mesh(devices=None, axis_name: str = DEFAULT_AXIS) -> Mesh:
    """A 1-D mesh over ``devices`` (default: every device of every process, ``jax.devices()``)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (axis_name,))


class ShardedData(NamedTuple):
    """Samples placed on a mesh: rows sharded along the mesh axis, padded with weight-0 rows.

    Attributes:
      X: ``(n_padded, n_features)`` global array, ``NamedSharding(mesh, P(axis))``.
      sample_weight: ``(n_padded,)`` the weights (1 where none were given), 0 on padding.
      n_samples: the number of real (unpadded) samples, over all processes.
    """

    X: Array
    sample_weight: Array
    n_samples: int


def shard_data(X, sample_weight=None, *, mesh: Mesh | None = None,
               axis_name: str = DEFAULT_AXIS, min_rows_per_device: int = 1) -> ShardedData:
    """Pad this process's rows and place them on ``mesh`` (see :class:`ShardedData`).

    In a single process ``X`` is the whole data set. With several processes
    (``jax.distributed.initialize``), every process passes *its own* rows (any number, not
    necessarily equal); each process's block is padded to a common size with zero-weight rows,
    so the padding changes no statistic. Padding rows copy a real row (finite log-likelihood).

    Args:
      X: ``(n_local, n_features)`` this process's samples.
      sample_weight: optional ``(n_local,)`` non-negative weights.
      mesh: a 1-D mesh (default :func:`make_mesh`).
      axis_name: the mesh axis to shard samples along.
      min_rows_per_device: pad so every device holds at least this many rows.
    """
    mesh = make_mesh(axis_name=axis_name) if mesh is None else mesh
    Xa = v.as_data(X, dtype=v.jax_float(X))  # lists and integers: JAX's default float
    n_local, d = Xa.shape
    w = v.check_sample_weight(sample_weight, n_local, Xa.dtype)
    w = np.ones((n_local,), Xa.dtype) if w is None else w
    local_devices = [dv for dv in mesh.devices.flat if dv.process_index == jax.process_index()]
    n_loc_dev = len(local_devices)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        sizes = np.asarray(multihost_utils.process_allgather(np.asarray([n_local])))
        sizes = sizes.reshape(-1)
    else:
        sizes = np.asarray([n_local])
    per_dev = max(math.ceil(int(sizes.max()) / n_loc_dev), min_rows_per_device, 1)
    rows = per_dev * n_loc_dev
    pad = rows - n_local
    Xp = np.concatenate([Xa, np.repeat(Xa[:1], pad, 0)]) if pad else Xa
    wp = np.concatenate([w, np.zeros((pad,), w.dtype)]) if pad else w
    sharding = NamedSharding(mesh, P(axis_name))
    if jax.process_count() > 1:
        n_total = int(sizes.sum())
        Xg = jax.make_array_from_process_local_data(sharding, Xp, (rows * len(sizes), d))
        wg = jax.make_array_from_process_local_data(sharding, wp, (rows * len(sizes),))
    else:
        n_total = n_local
        Xg = jax.device_put(Xp, sharding)
        wg = jax.device_put(wp, sharding)
    return ShardedData(Xg, wg, n_total)


def local_copy(tree):
    """Make every leaf readable in this process (replicated multi-process arrays -> local)."""

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x.addressable_data(0)
        return x

    return jax.tree_util.tree_map(one, tree)


@functools.partial(jax.jit, static_argnames=("mesh", "axis_name", "options"),
                   compiler_options=fitting.FIT_COMPILER_OPTIONS)
def _fit_sharded(X, w, n_samples, key, params_init, tol, *, mesh, axis_name, options):
    n_components, covariance_type, init_method, reg_covar, max_iter, n_init, n_lloyd = options
    shift = (w @ X) / jnp.sum(w)
    Xc = X - shift
    if params_init is None:
        # Once per fit: left to the SPMD partitioner (no hand-written collectives needed).
        params0 = jax.vmap(lambda k: fitting.init_params(
            k, Xc, n_components, covariance_type=covariance_type, reg_covar=reg_covar,
            init_params=init_method, sample_weight=w, n_lloyd=n_lloyd))(
            jax.random.split(key, n_init))
    else:
        p = params_init._replace(means=params_init.means - shift)
        params0 = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (n_init,) + a.shape), p)
    e_step, m_step, repair = make_model(covariance_type, reg_covar, axis_name=axis_name,
                                        n_devices=mesh.shape[axis_name])

    def loop(X_local, w_local, n, p0, tol):
        return em.run_restarts(e_step, m_step, p0, (X_local, w_local, n), tol=tol,
                               max_iter=max_iter, repair=repair)

    res = jax.shard_map(loop, mesh=mesh, in_specs=(P(axis_name), P(axis_name), P(), P(), P()),
                        out_specs=P())(Xc, w, n_samples, params0, tol)
    res = steps.uncentre(res, shift)
    return em.best_restart(res)


def fit(
    X,
    n_components: int,
    *,
    mesh: Mesh | None = None,
    axis_name: str = DEFAULT_AXIS,
    key: Array | None = None,
    covariance_type: str = "full",
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    max_iter: int = 100,
    n_init: int = 1,
    init_params: str = "kmeans",
    params_init: GMMParams | None = None,
    sample_weight=None,
    n_lloyd: int = 10,
) -> fitting.FitResult:
    """Fit a Gaussian mixture by data-parallel EM over the devices of ``mesh``.

    Same model, convergence rule, restarts, re-seeding and result as :func:`emjax.fit`; the
    samples are split across devices (and processes), the parameters replicated, and each EM
    iteration does one all-reduce of ``O(K D^2 + n_devices K D)`` numbers.

    Args:
      X: this process's ``(n_local, n_features)`` samples (the whole data set in a single
        process), or a :class:`ShardedData` from :func:`shard_data` (then ``sample_weight`` must
        be None).
      n_components: number of mixture components.
      mesh: 1-D device mesh (default: all devices, :func:`make_mesh`).
      axis_name: the mesh axis along which samples are sharded.
      key, covariance_type, tol, reg_covar, max_iter, n_init, init_params, n_lloyd: as in
        :func:`emjax.fit`.
      params_init: a complete :class:`~emjax.gmm.GMMParams` to start every restart from.
      sample_weight: optional ``(n_local,)`` non-negative weights of this process's rows.

    Returns:
      :class:`emjax.gmm.fitting.FitResult` whose arrays are readable in every process.

    Raises:
      ValueError: as :func:`emjax.fit`.

    Examples:
      >>> import jax, numpy as np
      >>> from emjax import distributed
      >>> X = np.random.default_rng(0).normal(size=(301, 2)).astype(np.float32)
      >>> res = distributed.fit(X, 2, key=jax.random.key(0))
      >>> res.params.means.shape
      (2, 2)
    """
    mesh = make_mesh(axis_name=axis_name) if mesh is None else mesh
    if axis_name not in mesh.shape:
        raise ValueError(f"axis_name {axis_name!r} is not an axis of the mesh {dict(mesh.shape)}")
    tol, o = check_options(n_components, covariance_type=covariance_type,
                           init_params=init_params, tol=tol, reg_covar=reg_covar,
                           max_iter=max_iter, n_init=n_init, n_lloyd=n_lloyd)
    if isinstance(X, ShardedData):
        if sample_weight is not None:
            raise ValueError("pass sample_weight to shard_data, not with a ShardedData")
        data = X
    else:
        data = shard_data(X, sample_weight, mesh=mesh, axis_name=axis_name,
                          min_rows_per_device=o.n_components)
    per_dev = data.X.shape[0] // mesh.shape[axis_name]
    if per_dev < o.n_components:
        raise ValueError(f"every device needs >= n_components={o.n_components} rows; got "
                         f"{per_dev} (X has shape {data.X.shape}): use "
                         f"shard_data(..., min_rows_per_device={o.n_components})")
    d = data.X.shape[1]
    v.check_n_components(o.n_components, data.n_samples, (data.n_samples, d))
    dtype = data.X.dtype
    v.check_x64(dtype)
    start = check_initial_values(o, d, dtype, params_init=params_init).params()
    res = _fit_sharded(data.X, data.sample_weight, jnp.asarray(data.n_samples, jnp.int32),
                       v.as_key(key), start, jnp.asarray(tol, dtype), mesh=mesh,
                       axis_name=axis_name, options=o)
    return local_copy(res)
