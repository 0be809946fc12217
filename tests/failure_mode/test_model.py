"""Failure-mode mixture: stable formulas vs dense ones, padding, EM properties, synthetic recovery,
in-service prediction."""

import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.interpolate import BSpline
from scipy.optimize import linear_sum_assignment
from scipy.special import logsumexp

from emjax import failure_mode as fm
from emjax.failure_mode import data as fd

# One compiled program serves every L=300, N=60, K=3 fit below; K=2 and K=4 add one each.
FIT_KW = dict(n_init=4, max_iter=400)

# Jitted once per shape: eager dispatch of the many small ops is slower than compiling.
posterior = jax.jit(fm.posterior)
_posterior_by = jax.jit(fm.posterior, static_argnames="unrolled")
predict = jax.jit(fm.predict)
e_step = jax.jit(fm.e_step)
m_step = jax.jit(fm.m_step)
q_function = jax.jit(fm.q_function)
predict_path = jax.jit(fm.predict_path, static_argnames=("basis", "include_noise"))
failure_cdf = jax.jit(fm.failure_cdf, static_argnames=("basis", "channel", "n_grid"))
rul_point = jax.jit(fm.rul_point, static_argnames=("basis", "channel", "n_grid"))
failure_time_samples = jax.jit(fm.failure_time_samples,
                               static_argnames=("basis", "channel", "n_samples", "n_grid"))


def _random_params(rng, C, K, p, dtype=np.float64):
    a = rng.normal(size=(C, K, p, p))
    covs = a @ np.swapaxes(a, -1, -2) / p + 0.1 * np.eye(p)
    w = rng.uniform(0.5, 1.5, size=K)
    return fm.FMMParams(jnp.asarray(w / w.sum(), dtype),
                        jnp.asarray(rng.normal(size=(C, K, p)), dtype),
                        jnp.asarray(covs, dtype),
                        jnp.asarray(rng.uniform(0.05, 0.5, size=(C, K)), dtype))


def _ragged(rng, counts, C, N, *, pad_garbage=True):
    """times (L, N) and values (L, C, N) with exactly counts[l][c] observed entries per channel."""
    L = len(counts)
    times = np.full((L, N), np.nan)
    values = np.full((L, C, N), np.nan)
    for l in range(L):
        n_l = max(max(counts[l]), 1)
        times[l, :n_l] = np.sort(rng.uniform(0, 1, n_l))
        for c in range(C):
            idx = rng.choice(n_l, counts[l][c], replace=False)
            values[l, c, idx] = rng.normal(size=counts[l][c])
        if pad_garbage:
            times[l, n_l:] = rng.uniform(5, 9, N - n_l)  # finite garbage in padded slots
    return times, values


def _np_basis(basis, t):
    """The basis in NumPy/SciPy (independent of the JAX implementation)."""
    t = np.asarray(t, np.float64)
    if basis.kind == "polynomial":
        return np.stack([t**j for j in range(basis.degree + 1)], -1).reshape(-1, basis.size)
    if t.size == 0:
        return np.zeros((0, basis.size))
    d, n = basis.degree, basis.n_interior_knots
    knots = np.r_[[0.0] * (d + 1), np.arange(1, n + 1) / (n + 1), [1.0] * (d + 1)]
    return BSpline.design_matrix(np.clip(t, 0, 1), knots, d).toarray().reshape(-1, basis.size)


def _dense_reference(params, times, values, basis):
    """Per (l, c, k): log N(x; Phi mu, V), m and P from the n x n matrix V (NumPy)."""
    w, mu, Sig, s2 = (np.asarray(a, np.float64) for a in params)
    L, C, N = values.shape
    K, p = w.shape[0], mu.shape[-1]
    logN = np.zeros((L, C, K))
    m = np.zeros((L, C, K, p))
    P = np.zeros((L, C, K, p, p))
    for l, c, k in itertools.product(range(L), range(C), range(K)):
        o = np.isfinite(values[l, c])
        x = values[l, c, o]
        Phi = _np_basis(basis, times[l, o])
        V = Phi @ Sig[c, k] @ Phi.T + s2[c, k] * np.eye(len(x))
        r = x - Phi @ mu[c, k]
        if len(x):
            _, logdet = np.linalg.slogdet(V)
            logN[l, c, k] = -0.5 * (len(x) * np.log(2 * np.pi) + logdet + r @ np.linalg.solve(V, r))
            KV = Sig[c, k] @ Phi.T @ np.linalg.inv(V)
        else:
            KV = np.zeros((p, 0))
        m[l, c, k] = mu[c, k] + KV @ r
        P[l, c, k] = Sig[c, k] - KV @ Phi @ Sig[c, k]
    ll = logsumexp(np.log(w)[None] + logN.sum(1), axis=1)
    return logN, m, P, ll


@pytest.mark.parametrize("unrolled", [True, False], ids=["unrolled", "lapack"])
@pytest.mark.parametrize("basis", [fm.Basis("polynomial", 2), fm.Basis("bspline", 3, 1)],
                         ids=["poly2", "bspline5"])
def test_stable_formulas_equal_dense(basis, unrolled):
    """Both ways of factorising B (elementwise, the default up to model.UNROLLED_MAX_BASIS basis
    functions; LAPACK) give the dense multivariate normal's densities and posteriors."""
    rng = np.random.default_rng(0)
    p = basis.size
    # n = 0 (channel missing), n < p and n > p, channel-specific counts.
    counts = [[0, 7], [1, 2], [2, 0], [9, 4], [0, 0]]
    C, K, N = 2, 3, 12
    times, values = _ragged(rng, counts, C, N)
    params = _random_params(rng, C, K, p)
    data = fm.make_data(times, values, basis=basis, t_scale=1.0)
    post = _posterior_by(params, data, unrolled=unrolled)
    logN, m, P, ll = _dense_reference(params, times, values, basis)
    np.testing.assert_allclose(post.log_density, logN, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(post.coef_mean, m, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(post.coef_cov, P, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(post.log_lik, ll, rtol=1e-10, atol=1e-9)
    # n = 0 exactly: log N = 0, m = mu, P = Sigma (unit 4 has no data at all: gamma = pi).
    assert np.all(np.asarray(post.log_density)[[0, 2, 4], [0, 1, 0]] == 0.0)
    np.testing.assert_allclose(post.coef_mean[4], params.means, rtol=1e-12)
    np.testing.assert_allclose(post.coef_cov[4], params.covs, rtol=1e-12)
    np.testing.assert_allclose(np.exp(post.log_resp[4]), params.weights, rtol=1e-12)


def test_bspline_basis_matches_scipy():
    degree, n_int = 3, 4
    tau = np.linspace(0, 1, 57)
    ours = np.asarray(fm.bspline_basis(jnp.asarray(tau), n_int, degree))
    knots = np.r_[[0.0] * (degree + 1), np.arange(1, n_int + 1) / (n_int + 1), [1.0] * (degree + 1)]
    ref = BSpline.design_matrix(tau, knots, degree).toarray()
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    np.testing.assert_allclose(ours.sum(1), 1.0, atol=1e-12)


def _em_steps(params, data, n):
    out = []
    for _ in range(n):
        post, ll = e_step(params, data)
        params = m_step(post, data)
        out.append((post, ll, params))
    return out


def test_padding_and_unit_permutation_invariance():
    rng = np.random.default_rng(1)
    counts = [[3, 5], [6, 6], [0, 2], [4, 1], [8, 8], [2, 7]]
    C, K, p, N = 2, 2, 3, 8
    times, values = _ragged(rng, counts, C, N)
    params = _random_params(rng, C, K, p)
    base = _em_steps(params, fm.make_data(times, values, t_scale=1.0), 3)
    # More padding, with garbage times: identical log-likelihood, responsibilities, parameters.
    extra = 7
    t2 = np.concatenate([times, rng.uniform(3, 4, (len(counts), extra))], 1)
    v2 = np.concatenate([values, np.full((len(counts), C, extra), np.nan)], 2)
    padded = _em_steps(params, fm.make_data(t2, v2, t_scale=1.0), 3)
    # Permuting units (and shuffling the padded slots' positions within a unit's channels).
    perm = rng.permutation(len(counts))
    shuffled = _em_steps(params, fm.make_data(times[perm], values[perm], t_scale=1.0), 3)
    for (pa, la, ta), (pb, lb, tb), (pc, lc, tc) in zip(base, padded, shuffled):
        np.testing.assert_allclose(lb, la, rtol=1e-12)
        np.testing.assert_allclose(pb.log_resp, pa.log_resp, atol=1e-12)
        np.testing.assert_allclose(lc, la, rtol=1e-12)
        np.testing.assert_allclose(pc.log_resp, np.asarray(pa.log_resp)[perm], atol=1e-12)
        for x, y, z in zip(ta, tb, tc):
            np.testing.assert_allclose(y, x, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(z, x, rtol=1e-10, atol=1e-12)


def _unconstrained(params):
    G = jnp.linalg.cholesky(params.covs)
    diag = jnp.log(jnp.diagonal(G, axis1=-2, axis2=-1))
    return (jnp.log(params.weights), params.means, jnp.tril(G, -1), diag,
            jnp.log(params.noise_var))


def _constrained(u):
    logw, means, off, diag, logs2 = u
    G = jnp.tril(off, -1) + jnp.exp(diag)[..., None] * jnp.eye(off.shape[-1])
    return fm.FMMParams(jax.nn.softmax(logw), means, G @ jnp.swapaxes(G, -1, -2), jnp.exp(logs2))


@pytest.mark.parametrize("with_prior", [False, True], ids=["ML", "MAP"])
def test_grad_of_q_is_zero_at_m_step(with_prior):
    rng = np.random.default_rng(2)
    counts = [[5, 1], [6, 6], [0, 2], [4, 3], [8, 8], [2, 7], [3, 3]]
    C, K, p, N = 2, 3, 3, 8
    times, values = _ragged(rng, counts, C, N)
    data = fm.make_data(times, values, t_scale=1.0)
    prior = (fm.Prior(jnp.eye(p) * 0.3, jnp.asarray(4.0), jnp.asarray(2.0), jnp.asarray(0.1),
                      jnp.asarray(2.0)) if with_prior else None)

    @jax.jit
    def check(params0, data, prior):
        post, _ = fm.e_step(params0, data, prior)
        new = fm.m_step(post, data, prior=prior)  # floors 0: the unconstrained maximiser
        u = _unconstrained(new)
        q = lambda u: fm.q_function(_constrained(u), post, data, prior)
        bumped = jax.tree_util.tree_map(lambda a: a + 1e-3, u)
        return jax.grad(q)(u), q(u), q(bumped), fm.q_function(new, post, data, prior)

    grads, q_new, q_bumped, q_direct = check(_random_params(rng, C, K, p), data, prior)
    np.testing.assert_allclose(q_new, q_direct, rtol=1e-12)
    # Each gradient against the size of the objective.
    for g in grads:
        assert np.max(np.abs(np.asarray(g))) < 1e-9 * abs(float(q_new))
    # ... and the M-step output beats nearby parameters.
    assert q_bumped < q_new


@pytest.fixture(scope="module")
def easy():
    syn = fd.make_synthetic(1, setting="easy")
    data = syn.to_data()
    res = fm.fit(data, 3, key=jax.random.key(0), **FIT_KW)
    return syn, data, res


@pytest.mark.slow
def test_log_likelihood_is_monotone(easy):
    _, _, res = easy
    hist = np.asarray(res.restarts.history)
    for h in hist:
        h = h[np.isfinite(h)]
        assert len(h) > 20
        assert np.all(np.diff(h) >= -1e-10 * np.abs(h[1:]))
        # Stopped by the relative tolerance (1e-7), not by max_iter.
        assert abs(h[-1] - h[-2]) < 1e-7 * abs(h[-1]) and len(h) < FIT_KW["max_iter"]
    assert np.all(np.asarray(res.restarts.status) == 0)


@pytest.mark.slow
def test_easy_setting_recovery(easy):
    syn, data, res = easy
    assert bool(res.converged)
    perm, acc = fm.match_labels(syn.labels, np.asarray(predict(res.params, data)), 3)
    assert acc >= 0.95
    p = fm.permute_modes(res.params, perm)
    sd_ratio = np.sqrt(np.asarray(p.noise_var) / syn.params.noise_var)
    assert np.all(np.abs(sd_ratio - 1) <= 0.15), sd_ratio
    # The fit explains the data at least as well as the truth does.
    truth = fm.FMMParams(*(jnp.asarray(a) for a in syn.params))
    assert res.log_likelihood > jnp.sum(posterior(truth, data).log_lik)
    # Brute-force matching agrees with the Hungarian algorithm.
    conf = np.zeros((3, 3))
    np.add.at(conf, (np.asarray(predict(res.params, data)), syn.labels), 1)
    rows, cols = linear_sum_assignment(-conf)
    assert np.array_equal(cols[np.argsort(rows)], perm)


@pytest.mark.slow
def test_bic_picks_true_number_of_modes(easy):
    _, data, res3 = easy
    bics = {3: float(res3.bic)}
    for k in (2, 4):
        bics[k] = float(fm.fit(data, k, key=jax.random.key(0), **FIT_KW).bic)
    assert min(bics, key=bics.get) == 3, bics
    # BIC formula against its definition.
    d = (3 - 1) + 3 * 4 * (3 + 6 + 1)
    np.testing.assert_allclose(res3.bic, -2 * res3.log_likelihood + d * np.log(300), rtol=1e-12)
    assert res3.icl >= res3.bic


@pytest.mark.slow
def test_hard_setting_accuracy(easy):
    syn = fd.make_synthetic(7, setting="hard")
    data = syn.to_data()
    before = fm.model._fit_compiled._cache_size()
    res = fm.fit(data, 3, key=jax.random.key(0), **FIT_KW)
    # Same shapes: the compiled program is reused.
    assert fm.model._fit_compiled._cache_size() == before
    _, acc = fm.match_labels(syn.labels, np.asarray(predict(res.params, data)), 3)
    assert acc >= 0.9


def test_float32_em_steps_are_finite_and_climb():
    syn = fd.make_synthetic(3, setting="easy", n_units=40, n_obs=(3, 12))
    data = syn.to_data(dtype=np.float32)
    assert data.A.dtype == np.float32
    params = fm.FMMParams(*(jnp.asarray(a, jnp.float32) for a in syn.params))
    params = params._replace(means=params.means * 0.5, noise_var=params.noise_var * 4)
    step = jax.jit(lambda p, d: (lambda post, ll: (fm.m_step(post, d, cov_floor=1e-6,
                                                             noise_floor=1e-6), ll))(
        *fm.e_step(p, d)))
    lls = []
    for _ in range(15):
        params, ll = step(params, data)
        lls.append(float(ll))
    assert all(a.dtype == jnp.float32 for a in params) and ll.dtype == jnp.float32
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in params) and np.all(np.isfinite(lls))
    assert np.all(np.diff(lls) >= -1e-4 * np.abs(lls[1:]))  # float32 round-off only


def test_predict_path_matches_dense_conditional():
    rng = np.random.default_rng(3)
    counts = [[4, 2], [0, 5], [6, 6]]
    C, K, p, N = 2, 2, 3, 6
    times, values = _ragged(rng, counts, C, N)
    params = _random_params(rng, C, K, p)
    data = fm.make_data(times, values, t_scale=1.0)
    basis = fm.Basis()
    grid = np.linspace(0, 1.5, 5)
    pred = predict_path(params, data, grid, basis=basis)
    logN, _, _, _ = _dense_reference(params, times, values, basis)
    w, mu, Sig, s2 = (np.asarray(a) for a in params)
    Phi_g = np.stack([grid**j for j in range(p)], -1)
    for l in range(3):
        g = np.log(w) + logN[l].sum(0)
        g = np.exp(g - logsumexp(g))
        np.testing.assert_allclose(pred.proba[l], g, rtol=1e-10)
        for c in range(C):
            o = np.isfinite(values[l, c])
            Phi = np.stack([times[l, o] ** j for j in range(p)], -1)
            mean_k, var_k = [], []
            for k in range(K):
                # Joint Gaussian of (x_grid, x_obs) given mode k, conditioned densely.
                S_go = Phi_g @ Sig[c, k] @ Phi.T
                V = Phi @ Sig[c, k] @ Phi.T + s2[c, k] * np.eye(o.sum())
                S_gg = Phi_g @ Sig[c, k] @ Phi_g.T + s2[c, k] * np.eye(len(grid))
                r = values[l, c, o] - Phi @ mu[c, k]
                mean_k.append(Phi_g @ mu[c, k] + S_go @ np.linalg.solve(V, r))
                var_k.append(np.diag(S_gg - S_go @ np.linalg.solve(V, S_go.T)))
            mean_k, var_k = np.array(mean_k), np.array(var_k)
            np.testing.assert_allclose(pred.mode_mean[l, c], mean_k, rtol=1e-9, atol=1e-10)
            np.testing.assert_allclose(pred.mode_var[l, c], var_k, rtol=1e-9, atol=1e-10)
            mix_mean = g @ mean_k
            mix_var = g @ (var_k + mean_k**2) - mix_mean**2
            np.testing.assert_allclose(pred.mean[l, c], mix_mean, rtol=1e-9, atol=1e-10)
            np.testing.assert_allclose(pred.var[l, c], mix_var, rtol=1e-8, atol=1e-10)


@pytest.mark.slow
def test_rul_monte_carlo_matches_closed_form_and_truth(easy):
    """Single-mode, monotone increasing y paths: the MC failure-time distribution equals the
    closed form P(T_f <= t) = P(phi(t)^T T >= D); on the fitted model the median RUL of
    half-observed units tracks the truth."""
    rng = np.random.default_rng(4)
    params = fm.FMMParams(
        jnp.asarray([1.0]), jnp.asarray([[[0.0, 1.0, 2.0]]]),
        jnp.asarray(np.diag([1e-4, 0.05, 0.05])[None, None]), jnp.asarray([[0.01]]))
    t_obs = np.linspace(0, 0.4, 6)
    values = (0.9 * t_obs + 2.1 * t_obs**2 + 0.1 * rng.normal(size=6))[None, None]
    data = fm.make_data(t_obs[None], values, t_scale=1.0)
    basis = fm.Basis()
    grid, cdf = failure_cdf(params, data, 0.4, basis=basis, threshold=2.0, horizon=2.0,
                               n_grid=400)
    samples = failure_time_samples(jax.random.key(0), params, data, 0.4, basis=basis,
                                      threshold=2.0, horizon=2.0, n_samples=20000, n_grid=400)
    emp = np.mean(np.asarray(samples)[0][:, None] <= np.asarray(grid)[0][None], 0)
    # Paths are (almost surely) increasing on the grid, so the closed form is exact here.
    assert np.max(np.abs(emp - np.asarray(cdf)[0])) < 0.02
    # Fitted model, in-service units observed up to half their life.
    syn = fd.make_synthetic(11, setting="easy", n_units=40, run_to_failure=True,
                            horizon=(2.0, 2.0))
    _, _, res = easy
    fail = syn.failure_time
    ok = np.isfinite(fail)
    t_now = 0.5 * fail[ok]
    obs = np.isfinite(syn.values[ok]) & (syn.times[ok] <= t_now[:, None])[:, None]
    part = fm.make_data(syn.times[ok], syn.values[ok], obs, t_scale=1.0)
    rul = np.asarray(rul_point(res.params, part, t_now, basis=basis, threshold=2.5,
                                  horizon=3.0))
    err = np.abs(rul - (fail[ok] - t_now))
    assert np.median(err) < 0.25 * np.median(fail[ok] - t_now)


def test_match_labels_and_permute():
    rng = np.random.default_rng(5)
    true = rng.integers(0, 4, 200)
    relabel = np.array([2, 0, 3, 1])
    pred = relabel[true]
    pred[:10] = rng.integers(0, 4, 10)
    perm, acc = fm.match_labels(true, pred, 4)
    assert np.array_equal(perm[relabel], np.arange(4))
    assert acc == np.mean(perm[pred] == true)
    params = _random_params(rng, 2, 4, 3)
    back = fm.permute_modes(fm.permute_modes(params, perm), np.argsort(perm))
    for a, b in zip(back, params):
        np.testing.assert_array_equal(a, b)


def test_repair_reseeds_empty_mode():
    rng = np.random.default_rng(6)
    times, values = _ragged(rng, [[4, 4]] * 6, 2, 4)
    data = fm.make_data(times, values, t_scale=1.0)
    params = _random_params(rng, 2, 3, 3)
    post = posterior(params, data)
    repair = jax.jit(fm.make_model()[2])
    # Mode 2 holds 6e-9 units of responsibility: re-seeded from the largest mode (0).
    starved = post._replace(log_resp=jnp.log(jnp.asarray(np.tile([0.6, 0.4 - 1e-9, 1e-9],
                                                                 (6, 1)))))
    fixed, flags = repair(params, starved, data)
    assert int(flags) == 1
    np.testing.assert_allclose(fixed.covs[:, 2], params.covs[:, 0])
    np.testing.assert_allclose(fixed.noise_var[:, 2], params.noise_var[:, 0])
    worst = int(np.argmin(post.log_lik))
    np.testing.assert_allclose(fixed.means[:, 2], post.coef_mean[worst, :, 0])
    w = np.asarray(params.weights).copy()
    w[2] = 1 / 6
    np.testing.assert_allclose(fixed.weights, w / w.sum())
    # Every mode with two units' worth of responsibility: nothing changes.
    even = post._replace(log_resp=jnp.full((6, 3), -np.log(3.0)))
    same, flags = repair(params, even, data)
    assert int(flags) == 0
    for a, b in zip(same, params):
        np.testing.assert_array_equal(a, b)


def test_fit_validation():
    syn = fd.make_synthetic(0, n_units=10, n_obs=(3, 5))
    data = syn.to_data()
    with pytest.raises(ValueError, match="n_components"):
        fm.fit(data, 11)
    with pytest.raises(ValueError, match="n_components must be an int in .* got True"):
        fm.fit(data, True)
    with pytest.raises(ValueError, match="tol must be a finite number >= 0; got 'a'"):
        fm.fit(data, 2, tol="a")
    with pytest.raises(ValueError, match="init"):
        fm.fit(data, 2, init="spectral")
    with pytest.raises(ValueError, match="params_init shapes"):
        fm.fit(data, 2, params_init=_random_params(np.random.default_rng(0), 4, 3, 3))
    with pytest.raises(ValueError, match="FMMData"):
        fm.fit(np.zeros((3, 4)), 2)
    with pytest.raises(ValueError, match="times must be"):
        fm.make_data(np.zeros((10, 4)), syn.values)
    with pytest.raises(ValueError, match="basis kind"):
        fm.Basis("fourier")


def test_remaining_life_functions_check_their_channel():
    """A channel past the data's (4 here) is an error naming it, concrete or traced: indexed in
    JAX it was clamped to the last channel, whose answer came back silently."""
    data = fd.make_synthetic(0, n_units=10, n_obs=(3, 5)).to_data()
    params = _random_params(np.random.default_rng(0), 4, 2, 3)
    kw = dict(basis=fm.QUADRATIC, threshold=2.5, horizon=3.0)
    for channel in (4, -5, 1.0):
        for fn in (fm.rul_point, fm.failure_cdf, rul_point):
            with pytest.raises(ValueError, match=r"channel must be an int in \[-4, 4\)"):
                fn(params, data, 0.5, channel=channel, **kw)
        with pytest.raises(ValueError, match="channel must be an int"):
            fm.failure_time_samples(jax.random.key(0), params, data, 0.5, channel=channel, **kw)



def test_prognostic_intervals_with_uncertain_modes_are_calibrated(easy):
    """The fitted K = 3 model as a PrognosticModel with the generator's threshold (y = 2.5 on the
    noise-free path): new units seen for 10-30 % of their life, when the mode is still uncertain,
    get 80 % intervals that hold 75-85 % of their true failure times."""
    from emjax.failure_mode import prognostics as pg

    _, _, res = easy
    model = pg.PrognosticModel(res.params, fm.QUADRATIC, 1.0, np.zeros(4), np.ones(4),
                               pg.FailureDefinition(3, 1, 2.5, 0.0, "latent"))
    new = fd.make_synthetic(11, n_units=200, run_to_failure=True, horizon=(2.0, 2.0))
    ok = np.isfinite(new.failure_time)
    fail = new.failure_time[ok]
    t_now = fail * np.random.default_rng(11).uniform(0.1, 0.3, ok.sum())
    fc = model.forecast((new.times[ok], new.values[ok]), cut=t_now, horizon=t_now + 3.0)
    assert np.mean(fc.proba.max(1)) < 0.9  # the mode is not settled yet
    lo, hi = fc.rul_interval(0.8)
    true = fail - t_now
    assert 0.75 <= np.mean((lo <= true) & (true <= hi)) <= 0.85


def test_fleets_of_one_size_class_share_one_program_and_equal_the_fit_as_given():
    """Units are padded to a size class with units of weight 0 and ``max_iter`` is an argument:
    57 units after 60 (class 64) and 6 iterations after 7 compile nothing; the result equals
    the fit of the 57 units as given (traced under jit: no padding)."""
    data = fd.make_synthetic(3, setting="easy", n_units=60, n_obs=(5, 20)).to_data()
    sub = data._replace(**{f: getattr(data, f)[:57] for f in data._fields if f != "t_scale"})
    kw = dict(n_init=2, max_iter=6)
    fm.fit(data, 2, key=jax.random.key(0), n_init=2, max_iter=7)
    before = fm.model._fit_compiled._cache_size()
    got = fm.fit(sub, 2, key=jax.random.key(0), **kw)
    assert fm.model._fit_compiled._cache_size() == before
    assert got.responsibilities.shape == (57, 2) and got.history.shape == (6,)
    assert got.restarts.history.shape == (2, 6)
    ref = jax.jit(lambda d, k: fm.fit(d, 2, key=k, **kw))(sub, jax.random.key(0))
    assert ref.responsibilities.shape == (57, 2)
    for a, b in ((got.log_likelihood, ref.log_likelihood), (got.bic, ref.bic),
                 (got.icl, ref.icl)):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    np.testing.assert_allclose(got.responsibilities, ref.responsibilities, atol=1e-10)
    np.testing.assert_allclose(got.params.means, ref.params.means, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(got.restarts.n_iter, ref.restarts.n_iter)


def test_predictions_on_concrete_data_share_programs_and_equal_the_traced_ones(easy):
    """predict_path, failure_cdf and failure_time_samples (rul_point goes the same way) on
    concrete units run one compiled program per size class (6 and 7 units, other lengths: the
    same), with the values of the same functions traced on the units as given."""
    _, _, res = easy
    basis = fm.Basis()

    def part(seed, n):
        syn = fd.make_synthetic(seed, n_units=n, run_to_failure=True, horizon=(2.0, 2.0))
        t_now = 0.5 * np.where(np.isfinite(syn.end), syn.end, 1.0)
        seen = np.isfinite(syn.values) & (syn.times <= t_now[:, None])[:, None]
        return fm.make_data(syn.times, syn.values, seen, t_scale=1.0), t_now

    grid = np.linspace(0.0, 1.5, 20)
    kw = dict(basis=basis, threshold=2.5, horizon=3.0, n_grid=100)
    calls = {
        "path": lambda d, t: fm.predict_path(res.params, d, grid, basis=basis),
        "cdf": lambda d, t: fm.failure_cdf(res.params, d, t, **kw),
        "samples": lambda d, t: fm.failure_time_samples(jax.random.key(2), res.params, d, t,
                                                        n_samples=50, **kw),
    }
    traced = {
        "path": lambda d, t: predict_path(res.params, d, grid, basis=basis),
        "cdf": lambda d, t: failure_cdf(res.params, d, t, **kw),
        "samples": lambda d, t: failure_time_samples(jax.random.key(2), res.params, d, t,
                                                     n_samples=50, **kw),
    }
    d6, t6 = part(21, 6)
    for f in calls.values():
        f(d6, t6)
    sizes = {k: f._cache_size() for k, f in fm.model._compiled.items()}
    d7, t7 = part(22, 7)
    for name, f in calls.items():
        got, ref = f(d7, t7), traced[name](d7, t7)
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
            assert np.shape(a)[0] == 7
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    assert {k: f._cache_size() for k, f in fm.model._compiled.items()} == sizes
    rul = fm.rul_point(res.params, d7, t7, **kw)
    np.testing.assert_allclose(rul, rul_point(res.params, d7, t7, **kw), rtol=1e-9)


def test_init_params_on_concrete_data_is_compiled_once_and_takes_an_int_seed():
    """fm.init_params on concrete data: one program for every key (op by op, k-means' loops
    compiled again at every call, 0.5 s), the traced function's values; an int seed is a key
    (it failed inside jax.random: 'invalid PRNG key data')."""
    data = fd.make_synthetic(3, n_units=20).to_data()
    got = fm.init_params(jax.random.key(1), data, 3)
    before = fm.model._init_params_compiled._cache_size()
    again = fm.init_params(jax.random.key(2), data, 3)
    assert fm.model._init_params_compiled._cache_size() == before
    ref = jax.jit(fm.init_params, static_argnums=2)(jax.random.key(1), data, 3)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    for a, b in zip(fm.init_params(2, data, 3), again):
        np.testing.assert_array_equal(a, b)


def test_failure_time_samples_take_an_int_seed():
    """An int seed outside a trace is the key jax.random.key(seed), as emjax.sample takes it
    (it failed inside jax.random: 'invalid PRNG key data')."""
    data = fd.make_synthetic(3, n_units=20).to_data()
    params = fm.init_params(1, data, 3)
    kw = dict(basis=fm.QUADRATIC, threshold=2.5, horizon=3.0, n_samples=20, n_grid=50)
    np.testing.assert_array_equal(fm.failure_time_samples(4, params, data, 0.5, **kw),
                                  fm.failure_time_samples(jax.random.key(4), params, data, 0.5,
                                                          **kw))


def test_failure_cdf_is_non_decreasing_for_paths_that_turn_back():
    """A concave path (4t - 4t^2, peak 1 at t = 0.5) crosses 0.8 and falls back below it: the
    closed-form CDF stays at its peak (first passage, as the Monte Carlo failure times)."""
    params = fm.FMMParams(
        jnp.asarray([1.0]), jnp.asarray([[[0.0, 4.0, -4.0]]]),
        jnp.asarray(np.diag([1e-6, 1e-4, 1e-4])[None, None]), jnp.asarray([[0.01]]))
    t_obs = np.linspace(0, 0.2, 4)
    data = fm.make_data(t_obs[None], (4 * t_obs - 4 * t_obs**2)[None, None], t_scale=1.0)
    kw = dict(basis=fm.Basis(), threshold=0.8, horizon=1.0, n_grid=50)
    grid, cdf = failure_cdf(params, data, 0.2, **kw)
    cdf = np.asarray(cdf)[0]
    assert np.all(np.diff(cdf) >= 0) and cdf[-1] > 0.99
    samples = failure_time_samples(jax.random.key(0), params, data, 0.2, n_samples=2000, **kw)
    emp = np.mean(np.asarray(samples)[0][:, None] <= np.asarray(grid)[0][None], 0)
    assert np.max(np.abs(emp - cdf)) < 0.05


def test_remaining_life_grids_run_forwards():
    """horizon at or before t_now (a remaining span given as the horizon) and empty grids or
    sample sets are errors naming them: the grid ran backwards to negative remaining lives."""
    data = fd.make_synthetic(0, n_units=10, n_obs=(3, 5)).to_data()
    params = _random_params(np.random.default_rng(0), 4, 2, 3)
    kw = dict(basis=fm.QUADRATIC, threshold=2.5)
    t_now = np.full(10, 0.5)
    t_now[3] = 2.0
    with pytest.raises(ValueError, match="unit 3 has t_now 2.0 and horizon 1.0"):
        fm.rul_point(params, data, t_now, horizon=1.0, **kw)
    with pytest.raises(ValueError, match="horizon must be later than t_now"):
        fm.failure_cdf(params, data, 0.5, horizon=0.5, **kw)
    with pytest.raises(ValueError, match="n_grid must be an integer >= 1; got 0"):
        fm.failure_cdf(params, data, 0.5, horizon=3.0, n_grid=0, **kw)
    with pytest.raises(ValueError, match="n_samples must be an integer >= 1; got 0"):
        fm.failure_time_samples(jax.random.key(0), params, data, 0.5, horizon=3.0, n_samples=0,
                                **kw)


def test_predict_path_checks_its_times():
    """Times other than (T,) or (L, T), or not finite, are errors quoting the shape: they failed
    deep inside JAX ('Incompatible types for broadcasting', an einsum subscript error)."""
    data = fd.make_synthetic(0, n_units=10, n_obs=(3, 5)).to_data()
    params = _random_params(np.random.default_rng(0), 4, 2, 3)
    for times in (0.5, np.zeros((3, 5)), np.zeros((10, 5, 2))):
        shape = re.escape(str(np.shape(times)))
        with pytest.raises(ValueError, match=r"times must be \(T,\) or \(L, T\) with L = 10 "
                                             f"units; got shape {shape}"):
            fm.predict_path(params, data, times, basis=fm.QUADRATIC)
    with pytest.raises(ValueError, match="times must be finite"):
        fm.predict_path(params, data, np.array([0.1, np.nan]), basis=fm.QUADRATIC)
