"""A conditional that stays one under ``jax.vmap``: the rarely taken branch of a batch of fits
runs only when some fit of the batch takes it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def rare_cond(pred, true_fn: Callable, false_fn: Callable, operand: Any) -> Any:
    """``jax.lax.cond(pred, true_fn, false_fn, operand)`` for a rarely true ``pred``.

    Under ``jax.vmap`` a ``lax.cond`` on a batched predicate runs both branches for every
    element. Here the batch runs ``true_fn`` (on every element, then selects per element) only
    when the predicate holds for some element, and ``false_fn`` alone otherwise: the same
    values either way. ``false_fn`` should be cheap (it runs on the whole batch in both cases).
    """

    @jax.custom_batching.custom_vmap
    def cond(pred, operand):
        return jax.lax.cond(pred, true_fn, false_fn, operand)

    @cond.def_vmap
    def _rule(axis_size, in_batched, pred, operand):
        pred_b, op_b = in_batched
        pred = pred if pred_b else jnp.broadcast_to(pred, (axis_size,))
        operand = jax.tree_util.tree_map(
            lambda a, b: a if b else jnp.broadcast_to(a, (axis_size,) + jnp.shape(a)),
            operand, op_b)

        def both(op):
            t = jax.vmap(true_fn)(op)
            f = jax.vmap(false_fn)(op)
            return jax.tree_util.tree_map(
                lambda x, y: jnp.where(pred.reshape((-1,) + (1,) * (x.ndim - 1)), x, y), t, f)

        out = jax.lax.cond(jnp.any(pred), both, jax.vmap(false_fn), operand)
        return out, jax.tree_util.tree_map(lambda _: True, out)

    return cond(pred, operand)
