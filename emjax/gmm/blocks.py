"""Additive statistics of one block of samples, shared by the data-parallel fit
(:mod:`emjax.gmm.distributed`, one block per device) and the out-of-core fit
(:mod:`emjax.gmm.streaming`, one block per chunk of a file).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from emjax.gmm import GMMParams, steps
from emjax.gmm.reseed import worst_explained

Array = jax.Array

__all__ = ["BlockStats", "block_stats"]


class BlockStats(NamedTuple):
    """Additive statistics of one block of samples (a device's shard, a chunk of a file).

    Attributes:
      nk, sx, sxx: the fields of :class:`emjax.gmm.SuffStats` about ``params.means``.
      ll_sum: ``()`` ``sum_n w_n log p(x_n)``.
      w_sum: ``()`` ``sum_n w_n``.
      cand_x: ``(n_candidates, n_features)`` the block's worst-explained rows (lowest
        ``log p(x_n)`` among rows of positive weight), candidates for re-seeding empty components.
      cand_score: ``(n_candidates,)`` their ``log p(x_n)`` (``+inf`` for zero-weight rows).
    """

    nk: Array
    sx: Array
    sxx: Array
    ll_sum: Array
    w_sum: Array
    cand_x: Array
    cand_score: Array


def block_stats(params: GMMParams, X: Array, w: Array, *, covariance_type: str,
                n_candidates: int) -> BlockStats:
    """E-step and sufficient statistics of one block (pure, unjitted).

    Args:
      params: the current mixture; statistics are taken about ``params.means``.
      X: ``(n_rows, n_features)``; rows of zero weight (padding) contribute nothing.
      w: ``(n_rows,)`` sample weights.
      covariance_type: static.
      n_candidates: static, ``<= n_rows``: how many re-seeding candidates to keep.
    """
    log_resp, ll = steps.e_step_full(params, X)
    s = steps.suff_stats(jnp.exp(log_resp), X, params.means, covariance_type=covariance_type,
                       sample_weight=w)
    score = jnp.where(w > 0, ll, jnp.inf)
    idx = worst_explained(ll, w, n_candidates)  # ranked as emjax.gmm.reseed.reseed ranks
    # where(): a zero-weight row must not turn the sum into NaN even if its ll is -inf.
    ll_sum = jnp.sum(jnp.where(w > 0, w * ll, 0.0))
    return BlockStats(s.nk, s.sx, s.sxx, ll_sum, jnp.sum(w), X[idx], score[idx])
