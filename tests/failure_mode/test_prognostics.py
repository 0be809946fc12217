"""Prognostics: calibration of remaining-life forecasts on a synthetic fleet whose failure times are
known, the one-object model (time scale, standardisation, save/load), quantiles, new bases."""

import dataclasses

import jax
import numpy as np
import pytest
from scipy.stats import norm

from emjax.failure_mode import model as fm
from emjax.failure_mode import prognostics as pg

# Truth of the synthetic fleet (user's units: cycles and a sensor reading around 40).
T0 = 200.0  # cycles per unit of the generator's rescaled time
MEAN = np.array([0.0, 1.0, 2.0])  # quadratic path in tau = t / T0: increasing on [0, 2]
SD = np.array([0.15, 0.2, 0.3])
NOISE = 0.08
LEVEL, LEVEL_SD = 2.0, 0.15


def fleet(seed, n_units, step=4.0):
    """Run-to-failure units observed every ``step`` cycles, in sensor units ``40 + 0.5 * path``;
    a unit fails at the first observation where its noise-free path has reached its own level
    (its last observation, as in C-MAPSS)."""
    rng = np.random.default_rng(seed)
    coef = MEAN + SD * rng.standard_normal((n_units, 3))
    level = LEVEL + LEVEL_SD * rng.standard_normal(n_units)
    t = np.arange(0.0, 2 * T0, step)
    basis = np.stack([(t / T0) ** j for j in range(3)])
    path = coef @ basis
    last = np.argmax(path >= level[:, None], 1)
    noisy = 40.0 + 0.5 * (path + NOISE * rng.standard_normal(path.shape))
    N = last.max() + 1
    keep = np.arange(N)[None] <= last[:, None]
    times = np.where(keep, t[None, :N], np.nan)
    values = np.where(keep, noisy[:, :N], np.nan)[:, None]
    return times, values, t[last]


@pytest.fixture(scope="module")
def fitted():
    times, values, fail = fleet(0, 150)
    res = pg.fit_prognostic(times, values, channels=["s"], basis=fm.QUADRATIC, n_components=1,
                            failure_on="latent", n_init=1, max_iter=300)
    return res, (times, values, fail)


def test_level_estimated_from_end_of_life(fitted):
    res, (times, values, fail) = fitted
    f = res.model.failure
    # True level 40 + 0.5 * 2.0 = 41 with spread 0.5 * 0.15 = 0.075 (sensor units).
    assert abs(f.level - 41.0) < 0.03 and 0.05 < f.level_sd < 0.1, f
    assert f.channel == 0 and f.direction == 1
    assert res.end_of_life_levels.shape == (150,)
    assert res.result.responsibilities.shape == (150, 1)


def test_intervals_cover_true_failure_times(fitted):
    """Nominal 80 % intervals hold 75-85 % of true failures of new units cut at random points;
    the median forecast is unbiased within its noise."""
    res, _ = fitted
    times, values, fail = fleet(1, 400)
    rng = np.random.default_rng(2)
    t_now = np.floor(fail * rng.uniform(0.2, 0.9, len(fail)))
    fc = res.model.forecast((times, values), cut=t_now)
    true = fail - t_now
    lo, hi = fc.rul_interval(0.8)
    cover = np.mean((lo <= true) & (true <= hi))
    assert 0.75 <= cover <= 0.85, cover
    lo, hi = fc.rul_interval(0.5)
    assert 0.43 <= np.mean((lo <= true) & (true <= hi)) <= 0.57
    # The median is early as often as late; the predictive mean is unbiased on average.
    n = len(true)
    assert abs(np.mean(fc.rul_median() > true) - 0.5) < 3 * 0.5 / np.sqrt(n)
    err = fc.rul_mean() - true
    assert abs(err.mean()) < 3 * err.std() / np.sqrt(n), (err.mean(), err.std())
    # Without the spread of the failure level the same intervals are overconfident.
    narrow = dataclasses.replace(res.model, failure=dataclasses.replace(res.model.failure,
                                                                        level_sd=0.0))
    lo, hi = narrow.forecast((times, values), cut=t_now).rul_interval(0.8)
    assert np.mean((lo <= true) & (true <= hi)) < cover - 0.05


def test_new_units_get_the_training_scale_and_standardisation(fitted, tmp_path):
    res, (times, values, _) = fitted
    model = res.model
    assert model.t_scale == np.nanmax(times)
    # A subset with a shorter longest life: same tau and standardised values as in training.
    data = model.prepare(times[:3], values[:3])
    full = model.prepare(times, values)
    np.testing.assert_allclose(data.tau, np.asarray(full.tau)[:3, :data.tau.shape[1]])
    np.testing.assert_allclose(float(data.t_scale), model.t_scale)
    z = (values[0, 0, 0] - model.center[0]) / model.scale[0]
    np.testing.assert_allclose(float(data.x[0, 0, 0]), z)
    # Data prepared another way is refused, not silently rescaled.
    with pytest.raises(ValueError, match="not prepared by this model"):
        model.forecast(fm.make_data(times[:3], values[:3]))
    # Save / load: same forecast; the write goes through a temporary file and leaves none.
    path = model.save(tmp_path / "model")
    back = pg.PrognosticModel.load(path)
    assert back.basis == model.basis and back.failure == model.failure
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]
    a = model.forecast((times[:5], values[:5]), cut=60.0)
    b = back.forecast((times[:5], values[:5]), cut=60.0)
    np.testing.assert_array_equal(a.cdf, b.cdf)
    np.testing.assert_array_equal(a.t_now, np.full(5, 60.0))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not an emjax prognostic model"):
        pg.PrognosticModel.load(tmp_path / "bad.npz")
    (tmp_path / "dir.npz").mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        model.save(tmp_path / "dir.npz")
    assert list((tmp_path / "dir.npz").iterdir()) == []


def test_forecast_quantiles_match_a_known_distribution():
    t = np.linspace(10.0, 110.0, 2001)
    cdf = norm.cdf(t, 60.0, 10.0)
    cdf = (cdf - cdf[0]) / (1 - cdf[0])
    fc = pg.FailureForecast(np.array([10.0]), t[None], cdf[None], np.ones((1, 1)))
    q = np.array([0.1, 0.5, 0.9])
    # Conditional on survival to t = 10, which is 5 s.d. below the mean: the plain quantiles.
    np.testing.assert_allclose(fc.failure_time_quantile(q)[0], norm.ppf(q, 60.0, 10.0),
                               atol=0.01)
    np.testing.assert_allclose(fc.rul_median(), [50.0], atol=0.01)
    lo, hi = fc.rul_interval(0.8)
    np.testing.assert_allclose([lo[0], hi[0]], norm.ppf([0.1, 0.9], 60.0, 10.0) - 10.0,
                               atol=0.01)
    np.testing.assert_allclose(fc.cdf_at(70.0), norm.cdf(1.0), atol=1e-4)
    # Probability left beyond the horizon: an infinite quantile, not the last grid point.
    short = pg.FailureForecast(np.array([10.0]), t[None, :1000], cdf[None, :1000], np.ones((1, 1)))
    assert np.isinf(short.rul_quantile(0.9)[0]) and np.isfinite(short.rul_quantile(0.1)[0])
    # levels of any shape: (L,) + q.shape, each unit's own t_now subtracted
    two = pg.FailureForecast(np.array([10.0, 20.0]), np.stack([t, t + 10.0]),
                             np.stack([cdf, cdf]), np.ones((2, 1)))
    qs = np.array([[0.1, 0.5], [0.5, 0.9]])
    got = two.rul_quantile(qs)
    assert got.shape == (2, 2, 2)
    np.testing.assert_allclose(got, two.failure_time_quantile(qs) - [[[10.0]], [[20.0]]])
    np.testing.assert_allclose(got[1], got[0], atol=1e-9)  # the same law 10 later


def test_fails_by_horizon_renormalises_to_the_grid(fitted):
    res, (times, values, _) = fitted
    a = res.model.forecast((times[:5], values[:5]), cut=60.0, horizon=160.0)
    b = res.model.forecast((times[:5], values[:5]), cut=60.0, horizon=160.0,
                           fails_by_horizon=True)
    assert np.all(a.cdf[:, -1] < 1 - 1e-3)  # a short horizon leaves probability beyond it
    np.testing.assert_allclose(b.cdf, a.cdf / a.cdf[:, -1:], rtol=1e-12)
    np.testing.assert_allclose(b.cdf[:, -1], 1.0)


def test_per_unit_times_are_checked(fitted):
    """t_now, horizon and cut are a scalar or one finite value per unit, obs and times match
    values, cdf_at takes one time per unit: anything else is a ValueError quoting the shapes
    (not NumPy's broadcast error)."""
    res, (times, values, _) = fitted
    new = (times[:3], values[:3])
    for kw, message in ((dict(t_now=[50.0, 60.0]), r"t_now must be .* shape \(3,\); got "
                                                    r"shape \(2,\)"),
                        (dict(horizon=np.ones((3, 1)) * 200), r"horizon .* got shape \(3, 1\)"),
                        (dict(cut=[60.0] * 4), r"cut .* got shape \(4,\)"),
                        (dict(t_now=[60.0, np.nan, 60.0]), "t_now must be finite")):
        with pytest.raises(ValueError, match=message):
            res.model.forecast(new, **kw)
    with pytest.raises(ValueError, match=r"obs must have the shape of values \(3, 1, \d+\)"):
        res.model.prepare(*new, obs=np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"times must be \(L, N\) .* got \(3, 4\)"):
        res.model.prepare(times[:3, :4], values[:3], cut=60.0)
    fc = pg.FailureForecast(np.zeros(3), np.tile(np.linspace(0, 1, 5), (3, 1)), np.zeros((3, 5)),
                            np.ones((3, 1)))
    with pytest.raises(ValueError, match=r"t must be .* shape \(3,\); got shape \(2,\)"):
        fc.cdf_at([0.5, 0.5])
    with pytest.raises(ValueError, match="horizon must be finite"):
        fm.rul_point(res.model.params, res.model.prepare(*new), 60.0, basis=res.model.basis,
                     threshold=1.0, horizon=np.inf)


def test_level_from_units_whose_failure_channel_is_unobserved():
    """A training unit whose failure channel was never observed ends its life at its last
    observation in another channel (the estimated level was NaN: 'level must be finite'); a
    unit with no observation at all is an error naming it, before any fit."""
    times, values, _ = fleet(3, 20)
    values = np.concatenate([values, 0.5 * values + 3.0], 1)  # a second channel
    values[0, 0] = np.nan
    kw = dict(channels=["s", "u"], failure_channel="s", basis=fm.QUADRATIC, n_components=1,
              n_init=1, max_iter=20)
    res = pg.fit_prognostic(times, values, **kw)
    ref = pg.fit_prognostic(times, values, end_of_life=np.nanmax(times, 1), **kw)
    assert np.all(np.isfinite(res.end_of_life_levels))
    np.testing.assert_allclose(res.end_of_life_levels, ref.end_of_life_levels, rtol=1e-12)
    assert res.model.failure == ref.model.failure
    # arguments are checked before any fit (NumPy's broadcast errors, a NaN level, a TypeError)
    for bad, message in ((dict(end_of_life=np.ones(3)), r"end_of_life .* got shape \(3,\)"),
                         (dict(end_of_life=np.nan), "end_of_life must be finite"),
                         (dict(n_components=()), "no candidate to fit"),
                         (dict(basis=[]), "no candidate to fit"),
                         (dict(failure_channel=1.5), r"index in \[-2, 2\) or its name; got 1.5"),
                         (dict(failure_channel=2), r"index in \[-2, 2\) or its name; got 2")):
        with pytest.raises(ValueError, match=message):
            pg.fit_prognostic(times, values, **{**kw, **bad})
    with pytest.raises(ValueError, match=r"times must be \(L, N\) = \(20, \d+\)"):
        pg.fit_prognostic(times[:, :5], values, **kw)
    values[1] = np.nan
    with pytest.raises(ValueError, match="training unit 1 has no observed value"):
        pg.fit_prognostic(times, values, **kw)


def test_decreasing_failure_channel_mirrors_increasing(fitted):
    res, (times, values, _) = fitted
    model = res.model
    flipped = pg.PrognosticModel(
        model.params._replace(means=-model.params.means), model.basis, model.t_scale,
        -model.center, model.scale,
        pg.FailureDefinition(0, -1, -model.failure.level, model.failure.level_sd, "latent"),
        model.channels)
    a = model.forecast((times[:5], values[:5]), cut=60.0)
    b = flipped.forecast((times[:5], -values[:5]), cut=60.0)
    np.testing.assert_allclose(a.cdf, b.cdf, atol=1e-12)


def test_new_bases_and_api_guards():
    tau = np.linspace(0, 1.3, 7)
    e = fm.Basis("exponential", 1, rate=3.0)
    np.testing.assert_allclose(e(tau), np.stack([tau**0, tau, np.exp(3.0 * (tau - 1))], -1))
    p = fm.Basis("power", 1, rate=4.0)
    np.testing.assert_allclose(p(tau), np.stack([tau**0, tau, tau**4], -1))
    assert e.size == p.size == 3
    with pytest.raises(ValueError, match="rate"):
        fm.Basis("exponential", 1)
    with pytest.raises(ValueError, match="rate > degree"):
        fm.Basis("power", 2, rate=2.0)
    # A basis of another size than the data's is refused by the old prediction helpers.
    data = fm.make_data(np.array([[0.0, 1.0, 2.0]]), np.array([[[0.0, 1.0, 3.0]]]))
    params = fm.FMMParams(np.ones(1), np.zeros((1, 1, 3)), np.eye(3)[None, None],
                          np.ones((1, 1)))
    with pytest.raises(ValueError, match="has 4 functions but the data were prepared with 3"):
        fm.rul_point(params, data, 2.0, basis=fm.Basis("polynomial", 3), threshold=1.0,
                     horizon=5.0)
    # Same size, other values (exponential rates 3 and 4): refused too when data are concrete.
    exp_data = fm.make_data(np.array([[0.0, 1.0, 2.0]]), np.array([[[0.0, 1.0, 3.0]]]), basis=e)
    with pytest.raises(ValueError, match="not the basis the data were prepared with"):
        fm.rul_point(params, exp_data, 2.0, basis=fm.Basis("exponential", 1, rate=4.0),
                     threshold=1.0, horizon=5.0)
    # Per-unit horizons.
    two = fm.make_data(np.array([[0.0, 1.0], [0.0, 1.0]]), np.array([[[0.0, 1.0]], [[0.0, 1.0]]]),
                       t_scale=1.0)
    cdf = jax.jit(fm.failure_cdf, static_argnames=("basis", "n_grid"))
    grid, _ = cdf(params, two, 1.0, basis=fm.QUADRATIC, threshold=1.0,
                  horizon=np.array([2.0, 5.0]), n_grid=4)
    np.testing.assert_allclose(grid[:, -1], [2.0, 5.0])


def test_match_modes_names_its_direction():
    true = np.array([0, 0, 1, 1, 2, 2, 2])
    fitted = np.array([2, 2, 0, 0, 1, 1, 0])
    m = fm.match_modes(true, fitted, 3)
    np.testing.assert_array_equal(m.fitted_to_true, [1, 2, 0])
    np.testing.assert_array_equal(m.true_to_fitted, [2, 0, 1])
    np.testing.assert_array_equal(m.fitted_to_true[fitted][:6], true[:6])
    assert m.accuracy == pytest.approx(6 / 7)


def test_forecasts_of_new_units_share_one_program_and_equal_the_unpadded_one(fitted):
    """New units of other counts and lengths in one size class are prepared and forecast by
    the compiled programs of the first; the forecast equals the unpadded computation."""
    res, _ = fitted
    model = res.model
    t1, v1, f1 = fleet(5, 20)
    t2, v2, f2 = fleet(6, 23)
    model.forecast((t1, v1), cut=f1 * 0.6)
    model.predict_proba(model.prepare(t1, v1))

    def sizes():
        return (pg._forecast_compiled._cache_size(), fm._data_compiled._cache_size(),
                fm._log_resp_compiled._cache_size())

    before = sizes()
    fc = model.forecast((t2, v2), cut=f2 * 0.6)
    data = model.prepare(t2, v2, cut=f2 * 0.6)
    labels = fm.predict(model.params, data)
    assert sizes() == before
    assert data.x.shape[0] == 23 and fc.cdf.shape == (23, 2000)
    f = model.failure
    level = (f.level - model.center[0]) / model.scale[0]
    grid, cdf, gamma = pg._forecast_compiled(
        model.params, data, f2 * 0.6, f2 * 0.6 + 2 * model.t_scale, level,
        (f.level_sd / model.scale[0]) ** 2, float(f.direction), basis=model.basis, channel=0,
        n_grid=2000, include_noise=f.on == "observed")
    np.testing.assert_allclose(fc.cdf, cdf, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fc.times, grid, rtol=1e-12)
    np.testing.assert_allclose(fc.proba, gamma, rtol=1e-12)
    np.testing.assert_allclose(model.predict_proba(data), gamma, rtol=1e-12)
    np.testing.assert_array_equal(labels, np.argmax(gamma, axis=1))
