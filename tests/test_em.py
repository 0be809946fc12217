"""The generic EM driver (emjax.em) on toy models, against a plain-Python loop that implements the
documented stopping rule: tolerances, history, status bits, restarts."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emjax import em

# Toy model: params x, E-step "statistics" x, log-likelihood 100 - x^2, M-step x / 2.
# From x0 = 1 the log-likelihood after t M-steps is ll_t = 100 - 4^-t: increasing, changes
# 3 * 4^-t, so each tolerance is met at a known iteration.


def e_halving(x, _):
    return x, 100.0 - x * x


def m_halving(x, _):
    return x / 2


def reference(e_step, m_step, x0, *, tol, max_iter, rtol=0.0):
    """The driver's rule in plain Python: iteration i maps x_i to x_{i+1}; after the iteration whose
    change is below tolerance one more M-step runs (it is the converged one)."""
    x, (_, ll) = x0, e_step(x0, None)
    history, pending, converged = [], False, False
    while len(history) < max_iter:
        new = m_step(x, None)
        _, new_ll = e_step(new, None)
        history.append(ll)
        small = abs(new_ll - ll) < tol or abs(new_ll - ll) < rtol * abs(new_ll)
        x, ll, converged = new, new_ll, pending
        if converged:
            break
        pending = small
    return x, ll, len(history), converged, history


def _run(x0=1.0, **kw):
    return jax.jit(lambda x: em.run(e_halving, m_halving, x, None, **kw))(jnp.float64(x0))


@pytest.mark.parametrize("tol, rtol", [(1e-6, 0.0), (0.0, 1e-6), (1e-3, 1e-9)])
def test_stops_where_the_reference_loop_stops(tol, rtol):
    x, ll, n_iter, converged, history = reference(e_halving, m_halving, 1.0, tol=tol, rtol=rtol,
                                                  max_iter=50)
    res = _run(tol=tol, rtol=rtol, max_iter=50)
    assert bool(res.converged) and converged
    assert int(res.n_iter) == n_iter
    np.testing.assert_allclose(float(res.params), x, rtol=1e-15)
    np.testing.assert_allclose(float(res.log_likelihood), ll, rtol=1e-15)
    # history[i] is the log-likelihood before iteration i's M-step; NaN where no iteration ran.
    np.testing.assert_allclose(np.asarray(res.history[:n_iter]), history, rtol=1e-15)
    assert np.all(np.isnan(np.asarray(res.history[n_iter:])))


def test_relative_tolerance_alone():
    """``rtol``: stop once |change| < rtol |ll| (the failure-mode model's rule)."""
    ll = [100.0 - 4.0**-t for t in range(60)]
    expected = next(t for t in range(1, 60) if abs(ll[t] - ll[t - 1]) < 1e-6 * abs(ll[t])) + 1
    res = _run(tol=0.0, rtol=1e-6, max_iter=50)
    assert bool(res.converged) and int(res.n_iter) == expected
    # The default rtol = 0 keeps the absolute rule alone (tol = 0: never converges).
    res = _run(tol=0.0, max_iter=50)
    assert not bool(res.converged) and int(res.n_iter) == 50


def test_converged_when_tolerance_is_met_on_the_last_allowed_iteration():
    _, _, n_needed, _, _ = reference(e_halving, m_halving, 1.0, tol=1e-6, max_iter=50)
    exactly = _run(tol=1e-6, max_iter=n_needed)
    assert bool(exactly.converged) and int(exactly.n_iter) == n_needed
    short = _run(tol=1e-6, max_iter=n_needed - 1)
    assert not bool(short.converged) and int(short.n_iter) == n_needed - 1
    assert int(short.status) == em.STATUS_OK


def test_non_finite_step_rolls_back_to_last_finite_parameters():
    # The third M-step returns NaN: the fit keeps x_2 and its log-likelihood.
    def m_nan(x, _):
        return jnp.where(x < 0.2, jnp.nan, x / 2)

    res = jax.jit(lambda x: em.run(e_halving, m_nan, x, None, tol=0.0, max_iter=20))(1.0)
    assert int(res.status) == em.STATUS_NONFINITE and not bool(res.converged)
    assert int(res.n_iter) == 3 and float(res.params) == 0.125
    assert float(res.log_likelihood) == 100.0 - 0.125**2
    assert "non-finite" in em.describe_status(int(res.status))


def test_non_finite_start_is_reported_and_not_iterated():
    res = _run(x0=math.inf, tol=1e-6, max_iter=20)
    assert int(res.status) == em.STATUS_NONFINITE and int(res.n_iter) == 0


def test_decrease_sets_status_unless_the_step_reseeded():
    # ll = 100 - x^2 falls when the M-step moves x away from 0.
    def m_away(x, _):
        return x + 1.0

    res = jax.jit(lambda x: em.run(e_halving, m_away, x, None, tol=0.0, max_iter=3))(0.0)
    assert int(res.status) & em.STATUS_DECREASED

    def repair(x, _estats, _data):  # claims to re-seed every step: a fall is then expected
        return x, em.STATUS_RESEEDED

    res = jax.jit(lambda x: em.run(e_halving, m_away, x, None, tol=0.0, max_iter=3,
                                   repair=repair))(0.0)
    assert int(res.status) == em.STATUS_RESEEDED


def test_reseeding_step_does_not_count_as_converged():
    """A step that re-seeds cannot be the converged one, however small its change."""
    def repair(x, _estats, _data):
        return x, jnp.where(x < 0.1, em.STATUS_RESEEDED, 0)

    plain = _run(tol=1e-3, max_iter=50)
    res = jax.jit(lambda x: em.run(e_halving, m_halving, x, None, tol=1e-3, max_iter=50,
                                   repair=repair))(1.0)
    assert bool(plain.converged) and float(plain.params) < 0.1
    # "Re-seeding" starts once x < 0.1, before the change falls below tol, and from then on
    # every step re-seeds: never converged.
    assert not bool(res.converged) and int(res.n_iter) == 50
    assert int(res.status) == em.STATUS_RESEEDED


def test_flagged_m_step_bits_reach_the_status():
    def m_flagged(x, _):
        return em.Flagged(x / 2, jnp.where(x < 0.3, em.STATUS_REGULARISED, 0))

    res = jax.jit(lambda x: em.run(e_halving, m_flagged, x, None, tol=1e-6, max_iter=50))(1.0)
    assert bool(res.converged) and int(res.status) == em.STATUS_REGULARISED
    assert "regularised" in em.describe_status(int(res.status))


def test_start_from_statistics_equals_start_from_their_m_step():
    """``estats0``: the loop's own M-step makes the start (not counted as an iteration)."""
    s0 = jnp.float64(3.0)
    res = jax.jit(lambda x: em.run(e_halving, m_halving, x, None, tol=1e-6, max_iter=50,
                                   estats0=s0))(jnp.float64(0.0))
    plain = _run(x0=1.5, tol=1e-6, max_iter=50)
    for a, b in zip(res, plain):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_restarts_equal_separate_runs_bit_for_bit():
    """Finished lanes are frozen, so a vmapped restart equals the same run alone."""
    x0 = jnp.array([1.0, 0.25, 8.0, -3.0])
    batched = jax.jit(lambda x: em.run_restarts(e_halving, m_halving, x, None, tol=1e-6,
                                                max_iter=50))(x0)
    assert len(set(np.asarray(batched.n_iter).tolist())) > 1  # lanes stop at different times
    for i, x in enumerate(np.asarray(x0)):
        alone = _run(x0=float(x), tol=1e-6, max_iter=50)
        for a, b in zip(em.select(batched, i), alone):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    one = jax.jit(lambda x: em.run_restarts(e_halving, m_halving, x, None, tol=1e-6,
                                            max_iter=50))(x0[:1])
    assert one.n_iter.shape == (1,)
    for a, b in zip(em.select(one, 0), em.select(batched, 0)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("mode", ("compact", "sequential"))
def test_compacted_and_sequential_restarts_equal_separate_runs(mode):
    """``compact=True``: stages of 9 -> 3 -> 1 lanes; ``sequential=True``: one restart after
    the other (``lax.map``). Each restart still equals its run alone (a scalar model, so no
    batched arithmetic differs between batch sizes)."""
    x0 = jnp.array([1.0, 0.25, 8.0, -3.0, 1e3, 2.0, -0.5, 64.0, 1e6])
    assert em._stage_sizes(9) == [9, 3, 1] and em._stage_sizes(16) == [16, 4, 1]
    res = jax.jit(lambda x: em.run_restarts(e_halving, m_halving, x, None, tol=1e-6,
                                            max_iter=60, **{mode: True}))(x0)
    assert len(set(np.asarray(res.n_iter).tolist())) > 3
    for i, x in enumerate(np.asarray(x0)):
        alone = _run(x0=float(x), tol=1e-6, max_iter=60)
        for a, b in zip(em.select(res, i), alone):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_best_index_skips_non_finite_and_takes_the_first_tie():
    assert int(em.best_index(jnp.array([-3.0, jnp.nan, -1.0, -1.0, jnp.inf * 0]))) == 2
    assert int(em.best_index(jnp.array([jnp.nan, -5.0]))) == 1
    # Within rounding of the best (restarts of one optimum) is a tie: the first wins.
    for dtype in (np.float32, np.float64):
        eps = np.finfo(dtype).eps
        near = np.array([-3.0 * (1 + 4 * eps), -3.0], dtype)
        assert int(em.best_index(jnp.asarray(near))) == 0
        apart = np.array([-3.0 * (1 + 64 * eps), -3.0], dtype)
        assert int(em.best_index(jnp.asarray(apart))) == 1


def test_describe_status_names_every_bit():
    assert em.describe_status(em.STATUS_OK) == "ok"
    both = em.describe_status(em.STATUS_RESEEDED | em.STATUS_DECREASED)
    assert "reseeded" in both and "decreased" in both
    every = em.describe_status(sum(em.STATUS_NAMES))
    assert all(name in every for name in em.STATUS_NAMES.values())
