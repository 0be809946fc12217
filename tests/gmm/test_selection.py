"""The model-selection grid (padded, masked components in one compiled call) against separate
fits of each K with emjax.gmm.fitting.fit, with the same keys and initialisations."""

import jax
import numpy as np
import pytest

import emjax
from emjax import _sizes
from emjax.gmm import fitting, selection
from tests.conftest import rtol_for


def _compare_grid_to_separate_fits(X, ks, cov, key):
    kw = dict(covariance_type=cov, n_init=2, tol=1e-9, max_iter=60, key=key)
    grid = selection.fit_grid(X, ks, **kw)
    dtype = X.dtype
    rtol = rtol_for(dtype)
    assert grid.log_likelihood.dtype == dtype and grid.bic.shape == (len(ks), 2)
    for i, k in enumerate(ks):
        # The separate fit compiled as the grid is (the dense steps, LAPACK, XLA level 1): the
        # same rounding, so even float32 stops at the same iteration.
        plan = emjax.make_plan(cov, dtype, _sizes.size_class(X.shape[0]), X.shape[1], k).replace(
            lapack=True, blocked_inverse=False, opt_level=1, fusion_emitters=True,
            unrolled=False, compact=0)
        ref = fitting.fit(X, k, plan=plan, **kw)
        r = ref.restarts
        np.testing.assert_array_equal(grid.n_iter[i], np.asarray(r.n_iter))
        np.testing.assert_array_equal(grid.converged[i], np.asarray(r.converged))
        np.testing.assert_allclose(grid.log_likelihood[i], np.asarray(r.log_likelihood),
                                   rtol=rtol)
        for j in range(2):  # every restart, unpadded, against the separate fit's restart j
            p = selection.grid_params(grid, i, restart=j)
            q = emjax.em.select(r.params, j)
            atol = 1e-3 if dtype == np.float32 else 1e-7
            np.testing.assert_allclose(np.asarray(p.weights), np.asarray(q.weights), atol=atol)
            np.testing.assert_allclose(np.asarray(p.means), np.asarray(q.means), atol=atol)
            np.testing.assert_allclose(np.asarray(p.covariance.covariances),
                                       np.asarray(q.covariance.covariances), atol=atol)
            # BIC/AIC of the restart against gmm.bic/aic (a sum of score_samples) of the fit.
            Xj = X.astype(np.float64)
            q64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), q)
            np.testing.assert_allclose(grid.bic[i, j], float(emjax.bic(q64, Xj)), rtol=rtol)
            np.testing.assert_allclose(grid.aic[i, j], float(emjax.aic(q64, Xj)), rtol=rtol)
        # Padding: weight exactly zero, the active weights sum to one.
        w = np.asarray(grid.params.weights[i])
        assert np.all(w[:, k:] == 0)
        np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=rtol)


# Few cases: every grid and every K is one compilation. Full covers the per-component padding
# (diag and spherical pad the same way), in float32 iteration for iteration; tied, which a small
# grid runs in the full program pooled (plan.pooled_type), in float64 (float32 rounds the pooled
# M-step otherwise than tied's own, and tol = 1e-9 is below its rounding). All four types, in
# both precisions: experiments/grid_vs_separate.py.
@pytest.mark.parametrize("cov,dtype,ks", [
    ("full", np.float32, (2, 3)),
    ("tied", np.float64, (2, 3)),
    ("diag", np.float64, (2, 3)),  # with few features, run in the full program too
])
def test_grid_equals_separate_fits(blobs, cov, dtype, ks):
    _compare_grid_to_separate_fits(blobs.astype(dtype), ks, cov, jax.random.key(3))


def test_small_grids_of_every_covariance_type_share_one_program(blobs):
    """With few features a small grid of any covariance type runs the full grid's program, the
    M-step pooling the covariances (plan.pooled_type); each comes back in its own form."""
    kw = dict(n_init=1, max_iter=20, key=jax.random.key(0))
    selection.fit_grid(blobs, (1, 2), covariance_type="full", **kw)
    before = selection._grid_compiled._cache_size()
    for ct in ("tied", "diag", "spherical"):
        grid = selection.fit_grid(blobs, (1, 2), covariance_type=ct, **kw)
        assert grid.covariance_type == ct
        assert grid.params.covariance_type == ct
        assert np.all(np.isfinite(grid.bic))
    assert selection._grid_compiled._cache_size() == before


@jax.jit
def _reseed_case(X, gamma, active):
    e_step, m_step, repair = selection.make_masked_model("diag", 1e-6)
    params = selection.masked_m_step(gamma, (X, None, active), covariance_type="diag",
                                     reg_covar=1e-6)
    estats, _ = e_step(params, (X, None, active))
    fixed, flags = repair(params, estats, (X, None, active))
    return params, fixed, flags


def test_masked_model_reseeds_only_active_components(blobs):
    # A grid point whose active component is emptied by the initialisation is re-seeded
    # (status bit), while the padding components stay at weight 0 and never count as empty.
    X = blobs
    k_max = 4
    active = np.arange(k_max) < 2
    gamma = np.zeros((X.shape[0], k_max))
    gamma[:, 0] = 1.0  # component 1 (active) gets nothing
    params, fixed, flags = _reseed_case(X, gamma, active)
    assert int(flags) == emjax.em.STATUS_RESEEDED
    w = np.asarray(fixed.weights)
    assert w[1] > 0 and np.all(w[2:] == 0) and np.isclose(w.sum(), 1.0)
    # The re-seeded mean is the worst-explained sample (independent brute-force check).
    worst = np.argmin(np.asarray(emjax.score_samples(params._replace(
        weights=np.where(active, params.weights, 1e-300)), X)))
    np.testing.assert_allclose(np.asarray(fixed.means[1]), X[worst])


def test_select_model_chooses_the_minimum_criterion(blobs):
    # The same static configuration as a grid above: the compiled program is reused.
    sel = selection.select_model(blobs, (2, 3), covariance_types=("full",), n_init=2,
                                 tol=1e-9, max_iter=60, key=jax.random.key(0), criterion="bic")
    # emjax.fit's singular name is taken too (it reached fit_grid twice: a TypeError)
    alias = selection.select_model(blobs, (2, 3), covariance_type="full", n_init=2, tol=1e-9,
                                   max_iter=60, key=jax.random.key(0), criterion="bic")
    np.testing.assert_array_equal(alias.params.means, sel.params.means)
    (grid,) = sel.grids
    best = selection.best_scores(grid, "bic")
    assert sel.n_components == grid.n_components[np.argmin(best)] == 3  # three blobs
    rows = selection.summary_rows(sel)
    assert [r["chosen"] for r in rows] == [False, True]
    # The BIC spread covers the best restart's value.
    assert all(r["bic_min"] <= r["bic"] <= r["bic_max"] for r in rows)
    p = sel.params
    assert p.means.shape == (3, 3) and p.covariance.covariances.shape == (3, 3, 3)
    # pytrees whose names are static: a str leaf failed in tree_map, device_put and jit
    on_device = jax.jit(lambda s: s)(jax.device_put(sel))
    assert on_device.criterion == "bic" and on_device.grids[0].covariance_type == "full"
    assert all(isinstance(a, jax.Array) for a in jax.tree_util.tree_leaves(on_device))
    np.testing.assert_array_equal(on_device.grids[0].bic, grid.bic)
    assert isinstance(jax.tree_util.tree_map(np.asarray, grid), selection.GridResult)


def test_grids_of_one_length_and_k_max_share_their_programs(blobs, caplog):
    """The grid's values are arguments: (1, 3) runs the programs of (2, 3) above (two points,
    K_max = 3), compiling nothing, and still fits K = 1 as K = 1."""
    import logging

    kw = dict(covariance_type="full", n_init=2, tol=1e-9, max_iter=60, key=jax.random.key(0))
    selection.fit_grid(blobs, (2, 3), **kw)  # compiled by the tests above when run with them
    with caplog.at_level(logging.DEBUG), jax.log_compiles(True):
        grid = selection.fit_grid(blobs, (1, 3), **kw)
    assert not [r for r in caplog.records if "Finished XLA compilation" in r.getMessage()]
    p = selection.grid_params(grid, 0)
    assert p.means.shape == (1, 3)
    np.testing.assert_allclose(np.asarray(p.means[0]), blobs.mean(0), rtol=1e-9)
    np.testing.assert_array_equal(np.asarray(grid.params.weights[0])[:, 1:], 0.0)


def test_grid_validation_messages(blobs):
    with pytest.raises(ValueError, match="n_components=200 must be <= n_samples=150"):
        selection.fit_grid(blobs, (1, 200))
    with pytest.raises(ValueError, match="repeated"):
        selection.fit_grid(blobs, (2, 2))
    with pytest.raises(ValueError, match="covariance_type"):
        selection.select_model(blobs, 2, covariance_types=("full", "banana"))
    with pytest.raises(ValueError, match="criterion"):
        selection.select_model(blobs, 2, criterion="dic")
    with pytest.raises(ValueError, match="not both"):
        selection.select_model(blobs, 2, covariance_types="diag", covariance_type="full")


def test_wide_small_grid_runs_a_pooled_type_as_a_branch_of_the_full_program(blobs):
    """From Tuning.pool_branches_min_features, a small diagonal grid runs in the full program
    with its own steps as a branch (plan.pooled_type): the same fits as separate diagonal ones."""
    X = np.hstack([blobs, np.random.default_rng(2).normal(size=(blobs.shape[0], 22))])
    assert emjax.make_plan("full", X.dtype, 256, X.shape[1], 3).pool_branches
    _compare_grid_to_separate_fits(X, (2, 3), "diag", jax.random.key(3))
