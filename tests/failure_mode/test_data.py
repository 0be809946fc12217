"""The long-table loader (round trip, clear errors) and the synthetic generator (spec 11)."""

import io

import numpy as np
import pytest

from emjax.failure_mode import data as fd


def _to_csv(syn, rng, *, missing="", shuffle=True):
    rows = []
    L, C, N = syn.values.shape
    for l in range(L):
        for i in range(N):
            if np.isfinite(syn.times[l, i]):
                vals = [missing if not np.isfinite(v) else repr(float(v))
                        for v in syn.values[l, :, i]]
                rows.append([f"u{l}", repr(float(syn.times[l, i]))] + vals)
    if shuffle:
        rows = [rows[j] for j in rng.permutation(len(rows))]
    head = "unit,time,s1,s2,s3,y\n"
    return head + "".join(",".join(r) + "\n" for r in rows)


def test_round_trip_through_a_long_table():
    rng = np.random.default_rng(0)
    syn = fd.make_synthetic(2, n_units=12, n_obs=(2, 9))
    table = fd.load_long_table(io.StringIO(_to_csv(syn, rng)))
    assert table.channels == ["s1", "s2", "s3", "y"]
    order = [int(u[1:]) for u in table.unit_ids]
    N = table.times.shape[1]
    np.testing.assert_array_equal(table.times, syn.times[order][:, :N])
    np.testing.assert_array_equal(table.values, syn.values[order][:, :, :N])
    a, b = table.to_data(t_scale=1.0), syn.to_data()
    for x, y in ((a.A, b.A), (a.b, b.b), (a.n, b.n)):
        np.testing.assert_allclose(x, np.asarray(y)[order], rtol=1e-12, atol=1e-12)
    # Units are sorted by id (non-numeric ids: as strings).
    assert table.unit_ids == sorted(f"u{l}" for l in range(12))
    # "NA" cells are missing values too; in order of appearance, unshuffled rows keep the units
    # in order.
    t2 = fd.load_long_table(io.StringIO(_to_csv(syn, rng, missing="NA", shuffle=False)),
                            unit_order="appearance")
    assert t2.unit_ids == [f"u{l}" for l in range(12)]
    np.testing.assert_array_equal(t2.values, syn.values[:, :, :N])


def test_loader_reads_a_path_and_selects_channels(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("time\tunit\tjunk\ty\n2\tB\t9\t0.5\n0\tA\tx\t1\n1\tA\t\t2\n")
    t = fd.load_long_table(path, channels=["y"], delimiter="\t", unit_order="appearance")
    assert t.unit_ids == ["B", "A"] and t.channels == ["y"]
    np.testing.assert_array_equal(t.times, [[2.0, np.nan], [0.0, 1.0]])
    np.testing.assert_array_equal(t.values[:, 0], [[0.5, np.nan], [1.0, 2.0]])
    s = fd.load_long_table(path, channels=["y"], delimiter="\t")
    assert s.unit_ids == ["A", "B"]
    np.testing.assert_array_equal(s.times, t.times[::-1])


def test_numeric_unit_ids_sort_as_numbers_and_cut_masks():
    text = "unit,time,y\n10,0,1\n2,0,3\n10,1,2\n2,1,4\n2,2,5\n"
    t = fd.load_long_table(io.StringIO(text))
    assert t.unit_ids == ["2", "10"]
    np.testing.assert_array_equal(t.values[:, 0], [[3, 4, 5], [1, 2, np.nan]])
    # A cut per unit masks what comes after it (in-service units), whatever the time scale.
    d = t.to_data(t_scale=2.0, cut=[1.0, 0.0])
    np.testing.assert_array_equal(d.obs[:, 0], [[1, 1, 0], [1, 0, 0]])
    np.testing.assert_allclose(d.tau[0], [0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="unit_order"):
        fd.load_long_table(io.StringIO(text), unit_order="first")


@pytest.mark.parametrize("text, match", [
    ("", "empty"),
    ("unit,t,y\nA,0,1\n", "column 'time' not in header"),
    ("unit,time,y\nA,0,1\nA,1\n", "line 3: expected 3 fields, got 2"),
    ("unit,time,y\nA,0,1\nA,1,abc\n", "line 3, column 'y': cannot parse 'abc'"),
    ("unit,time,y\nA,,1\n", "line 2, column 'time': a value is required"),
    ("unit,time,y\nA,0,1\nA,nan,1\n", "line 3, column 'time': a value is required"),
    ("unit,time,y\nA,0,1\nA,inf,1\n", "line 3: time must be finite"),
    ("unit,time,y\nA,0,1\nB,0,2\nA,0,3\n", "line 4: unit 'A' already has a row at time 0.0 "
                                           r"\(line 2\)"),
    ("unit,time,y\nA,0,1\nA,1,inf\n", "line 3, channel 'y': infinite value"),
    ("unit,time,y\nA,0,1\nB,0,\nB,1,NA\n", "unit 'B' .* has no observed value"),
    ("unit,time,y\n", "no rows"),
    ("unit,time,y\n,0,1\n", "line 2: empty unit id"),
])
def test_loader_errors_name_the_row(text, match):
    with pytest.raises(ValueError, match=match):
        fd.load_long_table(io.StringIO(text))


def test_loader_channel_and_shape_errors():
    with pytest.raises(ValueError, match="channel column 'z' not in header"):
        fd.load_long_table(io.StringIO("unit,time,y\nA,0,1\n"), channels=["z"])
    with pytest.raises(ValueError, match="one row each"):
        fd.from_long_table(["A", "B"], [0.0], np.zeros((2, 1)))
    with pytest.raises(ValueError, match="2 channel names for 1 value columns"):
        fd.from_long_table(["A"], [0.0], np.zeros((1, 1)), ["a", "b"])


def test_generator_matches_spec():
    syn = fd.make_synthetic(5, setting="easy", n_units=400)
    again = fd.make_synthetic(5, setting="easy", n_units=400)
    np.testing.assert_array_equal(syn.values, again.values)  # seeded
    L, C, N = syn.values.shape
    assert (C, N) == (4, 60)
    n_l = np.isfinite(syn.times).sum(1)
    assert n_l.min() >= 10 and n_l.max() <= 60
    assert np.all(syn.times[:, 0] == 0.0)
    assert np.all(np.diff(syn.times, axis=1)[np.isfinite(np.diff(syn.times, axis=1))] >= 0)
    assert 0.5 <= syn.end.min() and syn.end.max() <= 1.0
    assert np.nanmax(syn.times) <= 1.0
    slots = np.isfinite(syn.times)[:, None, :].repeat(C, 1)
    dropped = np.mean(np.isnan(syn.values[slots]))
    assert 0.04 < dropped < 0.06
    freq = np.bincount(syn.labels, minlength=3) / L
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.2], atol=0.06)
    # Residuals from the true coefficients have the modes' noise s.d.
    phi = np.stack([syn.times**j for j in range(3)], -1)
    fitted = np.einsum("lnp,lcp->lcn", phi, syn.coefs)
    for k, sd in enumerate(fd.EASY_NOISE_SD):
        r = (syn.values - fitted)[syn.labels == k]
        np.testing.assert_allclose(np.nanstd(r), sd, rtol=0.05)
    hard = fd.make_synthetic(5, setting="hard", n_units=50)
    assert hard.end.max() <= 0.6
    np.testing.assert_allclose(hard.params.means, 0.35 * syn.params.means)


def test_run_to_failure_truncation():
    syn = fd.make_synthetic(6, n_units=80, run_to_failure=True, threshold=2.5)
    tf = syn.failure_time
    assert np.isfinite(tf).mean() > 0.5
    assert np.all(np.nanmax(syn.times, 1) <= np.minimum(syn.end, tf) + 1e-12)
    ok = np.isfinite(tf)
    y = syn.coefs[ok, -1]
    at = lambda t: y[:, 0] + y[:, 1] * t + y[:, 2] * t**2
    assert np.all(at(tf[ok]) >= 2.5)
    assert np.all(at(tf[ok] - 1e-3) < 2.5 + 1e-9)  # the first crossing on the 0.001 grid


def test_make_data_refuses_infinite_values():
    """NaN is a missing entry; an infinity is refused (it was silently taken as missing), as
    the long-table loader refuses it. Checked before anything compiles."""
    from emjax import failure_mode as fm

    values = np.zeros((2, 1, 3))
    values[1, 0, 2] = -np.inf
    with pytest.raises(ValueError, match=r"1 infinite entries \(the first: unit 1, channel 0, "
                                         r"slot 2\)"):
        fm.make_data(np.zeros((2, 3)), values)
    obs = np.ones((2, 1, 3), bool)
    obs[1, 0, 2] = False  # a slot marked unobserved may hold anything
    fm.make_data(np.tile(np.arange(3.0), (2, 1)), values, obs)


def test_float64_needs_x64_mode():
    """As emjax.fit: float64 data with JAX's x64 mode off is an error saying what to do (the
    failure-mode data and fit_prognostic computed in float32 without a word); integers are
    read in JAX's default float."""
    import jax

    from emjax import failure_mode as fm
    from emjax.failure_mode import prognostics as pg

    with jax.enable_x64(False):
        with pytest.raises(ValueError, match="values is float64 but JAX's x64 mode is off"):
            fm.make_data(np.zeros((2, 3)), np.zeros((2, 1, 3)))
        with pytest.raises(ValueError, match=r"dtype is float64 .* or pass dtype=np.float32"):
            pg.fit_prognostic(np.zeros((2, 3)), np.zeros((2, 1, 3)))
        assert fm.make_data(np.zeros((2, 3)), np.zeros((2, 1, 3), int)).x.dtype == np.float32
