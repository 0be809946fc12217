"""Independent products of families over column groups, so one mixture models a table of mixed
types; and families given only by a differentiable ``log_prob`` with an optax M-step.

Given the component, the groups of a :class:`Product` are independent, so the log-density is the
sum of the groups' and Q separates: each group's M-step is its own family's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from emjax.families.base import Family
from emjax.gmm import gem

Array = jax.Array

__all__ = ["Custom", "Product"]


@dataclasses.dataclass(frozen=True, init=False)
class Product(Family):
    """Columns split into named groups, each with its own family, independent given the
    component: ``Product({"age": Gaussian("diag"), "smoker": Bernoulli(), "visits": Poisson(),
    "region": Categorical(5)})``.

    Groups take consecutive columns in the order given; a group's width is its family's
    ``n_features`` (default one column; ``Categorical(one_hot=True)`` takes its blocks).
    Parameters are a dict ``{name: family parameters}``. NaN entries are allowed in groups whose
    family marginalises them (all but non-diagonal Gaussians and Student-t).

    Args:
      families: ``{name: family}`` (insertion order is the column order).
    """

    parts: tuple = ()

    def __init__(self, families: dict | tuple = (), n_features: int | None = None):
        items = tuple(families.items()) if isinstance(families, dict) else tuple(families)
        if not items:
            raise ValueError("Product needs at least one {name: family}")
        for name, fam in items:
            if not isinstance(fam, Family):
                raise ValueError(f"Product group {name!r} is not a family: {fam!r}")
        object.__setattr__(self, "parts", items)
        object.__setattr__(self, "n_features", n_features)

    @property
    def families(self) -> dict:
        return dict(self.parts)

    @property
    def allows_missing(self):
        return all(f.allows_missing for _, f in self.parts)

    def slices(self) -> dict:
        """``{name: slice of columns}``."""
        out, start = {}, 0
        for name, fam in self.parts:
            w = fam.width()
            out[name] = slice(start, start + w)
            start += w
        return out

    def width(self):
        return sum(f.width() for _, f in self.parts)

    def bind(self, X):
        if X.shape[1] != self.width():
            groups = {n: f.width() for n, f in self.parts}
            raise ValueError(f"Product groups {groups} take {self.width()} columns; X has "
                             f"shape {X.shape}")
        bound = []
        for (name, fam), sl in zip(self.parts, self.slices().values()):
            Xg = X[:, sl]
            if np.isnan(Xg).any() and not fam.allows_missing:
                raise ValueError(f"group {name!r} ({type(fam).__name__}) has NaN entries, which "
                                 f"only per-column independent families marginalise")
            try:
                bound.append((name, fam.bind(Xg)))
            except ValueError as exc:
                raise ValueError(f"group {name!r}: {exc}") from None
        return Product(tuple(bound), n_features=X.shape[1])

    def _split(self, X):
        return {name: X[:, sl] for name, sl in self.slices().items()}

    def encode(self, X):
        cols = self._split(X)
        return {name: fam.encode(cols[name]) for name, fam in self.parts}

    def features(self, data):
        from emjax.families.base import _standardise

        return jnp.concatenate([_standardise(fam.features(data[name]), None)
                                for name, fam in self.parts], axis=1)

    def log_prob(self, theta, data):
        return sum(fam.log_prob(theta[name], data[name]) for name, fam in self.parts)

    def stats(self, theta, data, rw):
        return {name: fam.stats(None if theta is None else theta[name], data[name], rw)
                for name, fam in self.parts}

    def m_step(self, stats, theta, data):
        out, flags = {}, jnp.int32(0)
        for name, fam in self.parts:
            out[name], f = fam.m_step(stats[name], None if theta is None else theta[name],
                                      data[name])
            flags = flags | f
        return out, flags

    def init(self, key, data, rw, n_components):
        keys = jax.random.split(key, len(self.parts))
        return {name: fam.init(k, data[name], rw, n_components)
                for k, (name, fam) in zip(keys, self.parts)}

    def n_parameters(self, n_components):
        return sum(fam.n_parameters(n_components) for _, fam in self.parts)

    def sample(self, key, theta, z):
        keys = jax.random.split(key, len(self.parts))
        return jnp.concatenate([fam.sample(k, theta[name], z)
                                for k, (name, fam) in zip(keys, self.parts)], axis=1)

    def to_unconstrained(self, theta):
        return {name: fam.to_unconstrained(theta[name]) for name, fam in self.parts}

    def from_unconstrained(self, u):
        return {name: fam.from_unconstrained(u[name]) for name, fam in self.parts}


def _identity(x):
    return x


@dataclasses.dataclass(frozen=True)
class Custom(Family):
    """A family given by a differentiable log-density, with a generalised M-step by optax.

    The M-step maximises the component part of Q, ``sum_nl r_nl log_prob(theta_l, x_n)``, over
    unconstrained coordinates ``u`` (``theta = transform(u)``) by ``n_steps`` optimiser updates
    warm-started at the current parameters (:func:`emjax.gem.maximise`), and keeps the current
    parameters unless Q did not fall, so the log-likelihood never decreases.

    Args:
      log_prob: ``log_prob(theta, x) -> scalar`` for one component's parameters (a pytree) and
        one row ``x`` of shape ``(n_features,)``; vmapped over rows and components.
      init: ``init(key, X) -> theta`` of one component (vmapped over component keys).
      transform: ``u -> theta`` from unconstrained coordinates (default identity).
      inverse: ``theta -> u`` (needed with ``transform``).
      n_params: free parameters of one component (default: the size of ``inverse(init(...))``).
      sampler: optional ``sampler(key, theta) -> x`` of one row, for ``sample``.
      optimizer: an optax transformation (default ``optax.lbfgs()``).
      n_steps: optimiser updates per M-step.
    """

    log_prob_fn: Callable | None = None
    init_fn: Callable | None = None
    transform: Callable = _identity
    inverse: Callable = _identity
    n_params: int | None = None
    sampler: Callable | None = None
    optimizer: optax.GradientTransformation | None = None
    n_steps: int = 10

    allows_missing = False

    def __post_init__(self):
        if self.log_prob_fn is None or self.init_fn is None:
            raise ValueError("Custom needs log_prob_fn(theta, x) and init_fn(key, X)")
        if (self.transform is _identity) != (self.inverse is _identity):
            raise ValueError("give both transform and inverse, or neither")

    def check(self, X):
        if np.isnan(X).any():
            raise ValueError(f"Custom families do not accept NaN; X of shape {X.shape} has some")

    def bind(self, X):
        bound = super().bind(X)
        if bound.n_params is None:
            shapes = jax.eval_shape(lambda: self.inverse(self.init_fn(jax.random.key(0),
                                                                      jnp.asarray(X))))
            n = sum(int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(shapes))
            bound = dataclasses.replace(bound, n_params=n)
        return bound

    def encode(self, X):
        return (X,)

    def features(self, data):
        return data[0]

    def log_prob(self, theta, data):
        (X,) = data
        rows = jax.vmap(lambda th: jax.vmap(lambda x: self.log_prob_fn(th, x))(X))(theta)
        return rows.T

    def stats(self, theta, data, rw):
        return rw

    def init(self, key, data, rw, n_components):
        del rw
        (X,) = data
        return jax.vmap(lambda k: self.init_fn(k, X))(jax.random.split(key, n_components))

    def m_step(self, stats, theta, data):
        rw = jax.lax.stop_gradient(stats)
        total = jnp.sum(rw)

        def q(th):
            return jnp.sum(rw * self.log_prob(th, data))

        def objective(u):
            return q(self.from_unconstrained(u)) / total

        opt = self.optimizer if self.optimizer is not None else gem.default_optimizer()
        u, _ = gem.maximise(objective, self.to_unconstrained(theta), optimizer=opt,
                            n_steps=self.n_steps)
        new = self.from_unconstrained(u)
        leaves = [jnp.all(jnp.isfinite(a)) for a in jax.tree_util.tree_leaves(new)]
        q_new, q_old = q(new), q(theta)
        accept = jnp.all(jnp.stack(leaves)) & jnp.isfinite(q_new) & (q_new >= q_old)
        out = jax.tree_util.tree_map(lambda a, b: jnp.where(accept, a, b), new, theta)
        return out, jnp.int32(0)

    def n_parameters(self, n_components):
        return n_components * int(self.n_params)

    def sample(self, key, theta, z):
        if self.sampler is None:
            raise NotImplementedError("Custom family without a sampler")
        keys = jax.random.split(key, z.shape[0])
        th = jax.tree_util.tree_map(lambda a: a[z], theta)
        return jax.vmap(self.sampler)(keys, th)

    def to_unconstrained(self, theta):
        return jax.vmap(self.inverse)(theta)

    def from_unconstrained(self, u):
        return jax.vmap(self.transform)(u)

