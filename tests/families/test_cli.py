"""``emjax fit DATA --family SPEC``: column types, missing entries, the saved model, predict,
and never writing over an input."""

import jax
import numpy as np
import pytest

from emjax.families import io as fio


def test_cli_fit_family(tmp_path, capsys):
    from emjax import cli

    rng = np.random.default_rng(7)
    z = rng.random(60) < 0.5
    lines = ["x,flag,region"] + [
        f"{rng.normal(4.0 * zi):.6f},{'' if i == 3 else int(rng.random() < 0.2 + 0.6 * zi)},"
        f"{rng.integers(0, 3)}" for i, zi in enumerate(z)]
    data = tmp_path / "t.csv"
    data.write_text("\n".join(lines) + "\n")
    before = data.read_bytes()
    args = ["fit", str(data), "-k", "2", "-n", "1", "--max-iter", "20", "--no-plots",
            "--no-progress", "--no-compile-cache", "-o", str(tmp_path / "out")]
    assert cli.main([*args, "--family", "auto"]) == 0
    out = capsys.readouterr().out
    assert "column types: x=gaussian, flag=bernoulli, region=categorical" in out
    assert "1 missing entries" in out and "chosen K=2" in out
    summary = (tmp_path / "out" / "selection.csv").read_text().splitlines()
    assert summary[0].startswith("n_components,bic,aic,log_likelihood") and len(summary) == 2
    assert summary[1].startswith("2,") and summary[1].endswith(",True")
    saved = fio.load(str(tmp_path / "out" / "model.npz"))
    assert list(saved.family.families) == ["x", "flag", "region"]
    assert saved.metadata["config"]["column_types"] == ["gaussian", "bernoulli", "categorical"]
    pred = tmp_path / "pred.csv"
    assert cli.main(["predict", str(tmp_path / "out" / "model.npz"), str(data), "-o",
                     str(pred)]) == 0
    rows = pred.read_text().splitlines()
    assert rows[0] == "label,p0,p1" and len(rows) == 61
    assert cli.main(["predict", str(tmp_path / "out" / "model.npz"), str(data), "-o",
                     str(tmp_path / "p2.csv"), "--missing", "error"]) == 1
    assert "NaN or missing values in 1 row(s): line 5" in capsys.readouterr().err
    assert data.read_bytes() == before
    assert cli.main([*args, "--family", "gaussian,bernoulli"]) == 1
    assert "gives 2 column types" in capsys.readouterr().err
    # options of Gaussian mixtures are refused, not ignored; --missing error is an error
    assert cli.main([*args, "--family", "auto", "-c", "full", "--reg-covar", "0.1"]) == 1
    assert "--covariance-type, --reg-covar apply to Gaussian mixtures" in \
        capsys.readouterr().err
    assert cli.main([*args, "--family", "auto", "--init", "random"]) == 1
    assert "--init applies to Gaussian mixtures" in capsys.readouterr().err
    assert cli.main([*args, "--family", "auto", "--force", "--missing", "error"]) == 1
    assert "NaN or missing values in 1 row(s): line 5" in capsys.readouterr().err
    assert cli.main([*args, "--family", "gaussian,bernoulli"]) == 1
    assert "gives 2 column types" in capsys.readouterr().err
    assert cli.main([*args, "--family", "auto", "--force", "--seed", str(2**32)]) == 1
    assert "[0, 2**32)" in capsys.readouterr().err
    # predict never writes over an input, and a failed write leaves no temporary file behind
    assert cli.main(["predict", str(tmp_path / "out" / "model.npz"), str(data), "-o",
                     str(data)]) == 1
    assert "it is the input" in capsys.readouterr().err and data.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.npz",
                                                                    "selection.csv"]
    (tmp_path / "dir.npz").mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        fio.save(tmp_path / "dir.npz", saved.family, saved.params)
    assert list((tmp_path / "dir.npz").iterdir()) == []


def test_family_spec_by_name_in_any_order_by_position_or_inferred():
    """``name:type`` items are matched to the columns by name (not by position); ``auto``
    infers one column; mistakes are errors naming the column or the type."""
    from emjax.families.cli import parse_family

    X = np.array([[3.0, 0.0, -1.5], [7.0, 1.0, 0.25], [2.0, 1.0, 2.0]])
    names = ["count", "flag", "x"]
    for spec in ("x:gaussian,count:poisson,flag:bernoulli", "poisson,bernoulli,gaussian",
                 "flag:auto,x:normal,count:count", "auto"):
        family, types = parse_family(spec, X, names)
        assert list(family.families) == names, spec
        assert [type(f).__name__ for f in family.families.values()][1:] == ["Bernoulli",
                                                                             "Gaussian"], spec
    assert parse_family("x:gaussian,count:poisson,flag:bernoulli", X, names)[1] == [
        "poisson", "bernoulli", "gaussian"]
    for spec, message in (("x:gaussian,count:poisson", "no type for column.*flag"),
                          ("x:gaussian,count:poisson,zz:bernoulli", "column 'zz'"),
                          ("x:gaussian,x:poisson,flag:bernoulli", "column 'x' twice"),
                          ("x:gaussian,poisson,flag:bernoulli", "every column as name:type"),
                          ("count:poison,flag:bernoulli,x:gaussian", r"\['poison'\]"),
                          ("gaussian,bernoulli", "gives 2 column types")):
        with pytest.raises(ValueError, match=message):
            parse_family(spec, X, names)


def test_text_categories(tmp_path, capsys):
    """A column of text is a categorical column of its sorted levels: fitted with --family auto
    (the levels kept in the model), predicted by level, an unknown level an error naming its
    line; the Gaussian command says where text columns go."""
    from emjax import cli, datasets

    rng = np.random.default_rng(7)
    z = rng.random(60) < 0.5
    names = np.array(["east", "north", "south"])
    region = [names[rng.integers(0, 3)] for _ in z]
    lines = ["x,flag,region"] + [
        f"{rng.normal(4.0 * zi):.6f},{int(rng.random() < 0.2 + 0.6 * zi)},"
        f"{'' if i == 5 else r}" for i, (zi, r) in enumerate(zip(z, region))]
    data = tmp_path / "t.csv"
    data.write_text("\n".join(lines) + "\n")
    t = datasets.read_table(str(data), allow_missing=True, text=True)
    assert t.levels == {"region": ["east", "north", "south"]} and np.isnan(t.X[5, 2])
    codes = {"east": 0, "north": 1, "south": 2}
    np.testing.assert_array_equal(np.delete(t.X[:, 2], 5), [codes[r] for i, r in
                                                           enumerate(region) if i != 5])
    out = tmp_path / "out"
    args = ["fit", str(data), "-k", "2", "-n", "1", "--max-iter", "20", "--no-plots",
            "--no-progress", "--no-compile-cache", "-o", str(out)]
    assert cli.main([*args, "--family", "auto"]) == 0
    assert "region=categorical (levels east, north, south)" in capsys.readouterr().out
    saved = fio.load(str(out / "model.npz"))
    assert saved.metadata["config"]["levels"] == {"region": ["east", "north", "south"]}
    pred = tmp_path / "pred.csv"
    assert cli.main(["predict", str(out / "model.npz"), str(data), "-o", str(pred)]) == 0
    from emjax.families import fitting

    with jax.enable_x64(True):
        ref = np.asarray(fitting.predict(saved.family, saved.params, t.X))
    np.testing.assert_array_equal(np.loadtxt(pred, delimiter=",", skiprows=1)[:, 0], ref)
    # a table without a header is read by position (text levels too), as for Gaussian models
    bare = tmp_path / "bare.csv"
    bare.write_text("\n".join(lines[1:]) + "\n")
    assert cli.main(["predict", str(out / "model.npz"), str(bare), "-o",
                     str(tmp_path / "p_bare.csv")]) == 0
    np.testing.assert_array_equal(
        np.loadtxt(tmp_path / "p_bare.csv", delimiter=",", skiprows=1)[:, 0], ref)
    capsys.readouterr()
    bad = tmp_path / "bad.csv"
    bad.write_text(data.read_text().replace(f",{region[0]}\n", ",west\n", 1))
    assert cli.main(["predict", str(out / "model.npz"), str(bad), "-o",
                     str(tmp_path / "p2.csv")]) == 1
    assert "value 'west' at line 2, column 'region' is not one of the model's levels" in \
        capsys.readouterr().err
    assert cli.main([*args, "--family", "x:gaussian,flag:bernoulli,region:poisson"]) == 1
    assert "'region' holds text categories" in capsys.readouterr().err
    assert cli.main([*args[:-2], "-o", str(tmp_path / "g")]) == 1
    assert "--family auto" in capsys.readouterr().err
