"""The command line end to end, in-process through emjax.cli.main, on temporary files."""

import hashlib
import os
import sys

import jax
import numpy as np
import pytest

import emjax
from emjax import cli, datasets
from emjax.gmm import selection

# The static configuration of tests/gmm/test_selection.py's full grid (blobs, K 2-3, 2 restarts,
# max_iter 60): the CLI run and the library's reference below share one compiled program.
FIT_ARGS = ["-k", "2-3", "-n", "2", "--max-iter", "60", "--tol", "1e-9",
            "--seed", "0", "--no-compile-cache"]


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_csv(path, X, header="a,b,c"):
    lines = ([header] if header else []) + [",".join(f"{v:.17g}" for v in row) for row in X]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
def test_fit_and_predict_end_to_end(tmp_path, blobs, capsys):
    data = _write_csv(tmp_path / "data.csv", blobs)
    before = _sha(data)
    out = tmp_path / "out"
    assert cli.main(["fit", str(data), *FIT_ARGS, "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "<- chosen by BIC" in captured.out and "full   3" in captured.out
    # The progress bar (on by default in the CLI) ran on stderr from inside the loop.
    assert "converged 4/4" in captured.err and "iter" in captured.err
    for name in ("model.npz", "selection.csv", "criteria.png", "traces.png", "clusters.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "clusters.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The saved model is, bit for bit, the library's choice without a progress bar: the
    # progress callback does not change results.
    saved = emjax.load(str(out / "model.npz"))
    ref = selection.select_model(blobs, (2, 3), covariance_types=("full",), n_init=2, tol=1e-9,
                                 max_iter=60, key=jax.random.key(0))
    for a, b in zip(jax.tree_util.tree_leaves(saved.params), jax.tree_util.tree_leaves(ref.params)):
        np.testing.assert_array_equal(a, np.asarray(b))
    assert saved.metadata["config"]["columns"] == ["a", "b", "c"]
    assert saved.metadata["emjax_version"] == emjax.__version__
    rows = saved.metadata["config"]["selection"]
    np.testing.assert_allclose([r["bic"] for r in rows],
                               selection.best_scores(ref.grids[0], "bic"))

    pred = tmp_path / "pred.csv"
    assert cli.main(["predict", str(out / "model.npz"), str(data), "-o", str(pred)]) == 0
    table = np.loadtxt(pred, delimiter=",", skiprows=1)
    labels = np.asarray(emjax.predict(ref.params, blobs))
    np.testing.assert_array_equal(table[:, 0].astype(int), labels)
    np.testing.assert_allclose(table[:, 1:], np.asarray(emjax.predict_proba(ref.params, blobs)),
                               atol=1e-7)
    assert _sha(data) == before  # the input file is never modified

    # Columns by the fitted names: another order and an extra column read right; a table
    # without a header by position; a header without the fitted names, or NaN, an error.
    moved = tmp_path / "moved.csv"
    moved.write_text("id,c,a,b\n" + "\n".join(
        f"r{i}," + ",".join(f"{v:.17g}" for v in row[[2, 0, 1]]) for i, row in enumerate(blobs))
        + "\n")
    for source, name in ((moved, "p_moved.csv"), (_write_csv(tmp_path / "bare.csv", blobs,
                                                              header=None), "p_bare.csv")):
        assert cli.main(["predict", str(out / "model.npz"), str(source), "-o",
                         str(tmp_path / name)]) == 0
        got = np.loadtxt(tmp_path / name, delimiter=",", skiprows=1)
        np.testing.assert_array_equal(got[:, 0].astype(int), labels)
    capsys.readouterr()
    other = _write_csv(tmp_path / "other.csv", blobs, header="x,y,z")
    assert cli.main(["predict", str(out / "model.npz"), str(other), "-o",
                     str(tmp_path / "p_other.csv")]) == 1
    assert "has columns ['x', 'y', 'z'] but the model was fitted on ['a', 'b', 'c']" in \
        capsys.readouterr().err
    holes = blobs.copy()
    holes[3, 1] = np.nan
    hole = _write_csv(tmp_path / "hole.csv", holes)
    assert cli.main(["predict", str(out / "model.npz"), str(hole), "-o",
                     str(tmp_path / "p_hole.csv")]) == 1
    assert "line 5; pass --missing marginalize" in capsys.readouterr().err


def _bad(tmp_path, capsys, text, argv_extra=()):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    before = _sha(path)
    code = cli.main(["fit", str(path), *FIT_ARGS, "-o", str(tmp_path / "o"), *argv_extra])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.startswith("emjax: error: ") and "\n" not in err and "Traceback" not in err
    assert _sha(path) == before
    return err


def test_missing_file(tmp_path, capsys):
    code = cli.main(["fit", str(tmp_path / "nope.csv"), "--no-compile-cache"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err == f"emjax: error: no such file: {tmp_path / 'nope.csv'}"
    code = cli.main(["predict", str(tmp_path / "nope.npz"), str(tmp_path / "x.csv")])
    assert code == 1 and "no such model file" in capsys.readouterr().err


def test_ragged_table(tmp_path, capsys):
    err = _bad(tmp_path, capsys, "a,b\n1,2\n3,4,5\n6,7\n")
    assert "ragged table: line 3 has 3 fields, line 1 has 2" in err


def test_non_numeric_table(tmp_path, capsys):
    err = _bad(tmp_path, capsys, "a,b\n1,2\n3,oops\n6,7\n")
    assert "non-numeric value 'oops' at line 3, column 'b'" in err


def test_nan_rows_are_named(tmp_path, capsys):
    err = _bad(tmp_path, capsys, "a,b\n1,2\n3,nan\n6,7\n,8\n1,NA\n")
    assert "NaN or missing values in 3 row(s): line 3, line 5, line 6; pass --missing" in err


def test_infinite_values_are_not_missing_values(tmp_path, capsys):
    """An infinity (or a number beyond float64, 1e400) is an error of its own, not a missing
    value: --missing marginalize does not help with it."""
    for extra in ((), ("--missing", "marginalize"), ("--family", "auto")):
        err = _bad(tmp_path, capsys, "a,b\n1,2\n3,nan\n6,7\n1e400,8\n-inf,1\n", extra)
        assert err.endswith("infinite values (or numbers too large for float64, like 1e400) in "
                            "2 row(s): line 5, line 6"), err


def test_rows_of_empty_fields_are_rows_and_blank_lines_are_skipped(tmp_path):
    """A line of empty fields is a row of missing values (rows stay aligned with the file's
    lines); a blank line is skipped; a row with nothing observed is named."""
    path = tmp_path / "h.csv"
    path.write_text("a,b,c\n1,2,3\n\n,5,\n,,\n7,,9\n")
    with pytest.raises(datasets.DataError, match=r"missing values in 3 row\(s\): line 4, "
                                                  r"line 5, line 6"):
        datasets.read_table(str(path))
    with pytest.raises(datasets.DataError, match=r"no observed value in 1 row\(s\) .*: line 5; "
                                                  r"drop them"):
        datasets.read_table(str(path), allow_missing=True)
    path.write_text("a,b,c\n1,2,3\n\n,5,\n7,,9\n")
    t = datasets.read_table(str(path), allow_missing=True)
    np.testing.assert_array_equal(np.isnan(t.X), [[0, 0, 0], [1, 0, 1], [0, 1, 0]])
    assert t.row_labels == ["line 2", "line 4", "line 5"]
    with pytest.raises(datasets.DataError, match=r"no observed value in 1 row\(s\) .*: line 4"):
        datasets.read_table(str(path), columns=["a", "c"], allow_missing=True)


def test_a_delimiter_ending_every_line_is_not_a_column(tmp_path, capsys):
    """'x,y,' lines: the last column, without name or value, is not read (not a column of
    missing values); a named column with no value is an error for --family (nothing to fit)."""
    path = tmp_path / "t.csv"
    path.write_text("x,y,\n1,2,\n3,4,\n")
    t = datasets.read_table(str(path))
    assert t.columns == ["x", "y"] and t.X.tolist() == [[1, 2], [3, 4]]
    path.write_text("x,y,,\n1,2,,\n,4,,\n")
    assert datasets.read_table(str(path), allow_missing=True).columns == ["x", "y"]
    path.write_text("x,y,\n1,2,\n3,4,5\n")  # a value: a column
    assert datasets.read_table(str(path), allow_missing=True).columns == ["x", "y", ""]
    err = _bad(tmp_path, capsys, "x,y,notes\n1,2,\n3,4,\n5,6,\n", ("--family", "auto"))
    assert "no observed value in column(s) 'notes'; leave them out with --columns" in err


def test_line_numbers_count_line_breaks_in_quoted_fields(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text('note,x\n"two\nlines",1\nplain,2\nplain,oops\n')
    t = datasets.read_table(str(path), columns=["x"], min_rows=1, text=True)
    assert t.row_labels == ["line 2", "line 4", "line 5"]
    with pytest.raises(datasets.DataError, match="'oops' at line 5, column 'x'"):
        datasets.read_table(str(path), columns=["x"])


def test_decimal_commas_and_other_encodings_are_named(tmp_path):
    """A decimal comma is said to be one (with --family too: such a column is not text
    categories '1,5', '3,25'); a table not in UTF-8 is said to be so, with the line of its
    first bad byte."""
    path = tmp_path / "t.csv"
    path.write_text("a;b\n1,5;2\n3,25;4\n")
    with pytest.raises(datasets.DataError, match=r"'1,5' at line 2, column 'a' \(a decimal "
                                                  r"comma: write '1.5'\)"):
        datasets.read_table(str(path))
    with pytest.raises(datasets.DataError, match=r"column 'a' holds numbers with a decimal comma "
                                                  r"\('1,5'\)"):
        datasets.read_table(str(path), text=True)
    # a table separated by spaces is one column of text: said to be so, not categories
    path.write_text("a b\n1.0 2.0\n3 4.5\n")
    for text in (False, True):
        with pytest.raises(datasets.DataError, match=r"numbers separated by spaces.*emjax reads "
                                                      r"tables separated by commas"):
            datasets.read_table(str(path), text=text)
    path.write_bytes("x;région\n1;2\n3;caf\xe9\n".encode("latin-1"))
    with pytest.raises(datasets.DataError, match=r"not UTF-8 text \(byte 0xe9 at line 1\)"):
        datasets.read_table(str(path))


def test_column_names_with_commas_are_quoted(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text('"col a","col, b"\n1,2\n3,4\n')
    with pytest.raises(datasets.DataError, match=r"columns: 'col a', 'col, b'; .*by its index"):
        datasets.read_table(str(path), columns=["col"])
    assert datasets.read_table(str(path), columns=["1"]).columns == ["col, b"]


def test_values_beyond_the_precision_are_errors_not_nan_labels(tmp_path, capsys):
    """Values whose squares overflow the fit's dtype are an error naming their lines, not an
    infinity inside the fit; a row no component gives a finite probability is an error, not
    label 0 with NaN."""
    text = "a,b\n1,2\n1e200,8\n3,4\n5,6\n"
    for extra in ((), ("--family", "auto")):
        err = _bad(tmp_path, capsys, text, extra)
        assert "values too large for float64 (above 6.7e+153 in magnitude) in 1 row(s): " \
            "line 3; rescale the columns" in err
    err = _bad(tmp_path, capsys, text.replace("1e200", "1e20"), ("--dtype", "float32"))
    assert "float32 (above 9.2e+18 in magnitude) in 1 row(s): line 3; rescale the columns or " \
        "use --dtype float64" in err
    model = emjax.save(str(tmp_path / "m.npz"), emjax.make_params(
        np.array([0.5, 0.5], np.float32), np.array([[0, 0], [5, 5]], np.float32),
        np.array([0.01, 0.01], np.float32), "spherical"), config={"columns": ["a", "b"]})
    data = tmp_path / "p.csv"
    for value, message in (("1e20", "values too large for float32 (above 1.8e+19 in magnitude) "
                                    "in 1 row(s): line 3; rescale the columns"),
                           ("1e19", "no finite probability in 1 row(s): line 3 (values too far "
                                    "from every component); nothing written")):
        data.write_text(f"a,b\n1,2\n{value},8\n")
        assert cli.main(["predict", model, str(data), "-o", str(tmp_path / "o.csv")]) == 1
        assert capsys.readouterr().err.strip() == f"emjax: error: {data}: {message}"
    assert not (tmp_path / "o.csv").exists()


def test_a_reader_gone_from_stdout_does_not_fail_the_command(tmp_path, monkeypatch):
    """'emjax ... | head -1': a broken pipe on stdout drops the rest of the report; the command
    still writes its files and succeeds (a fit reports before it writes)."""
    model = emjax.save(str(tmp_path / "m.npz"), emjax.make_params(
        np.array([0.5, 0.5], np.float32), np.array([[0, 0], [5, 5]], np.float32),
        np.array([1.0, 1.0], np.float32), "spherical"), config={"columns": ["a", "b"]})
    data = tmp_path / "d.csv"
    data.write_text("a,b\n1,2\n4,5\n")
    read, write = os.pipe()
    os.close(read)
    with open(write, "w", buffering=1) as stdout:
        monkeypatch.setattr(sys, "stdout", stdout)
        code = cli.main(["predict", model, str(data), "-o", str(tmp_path / "p.csv")])
        monkeypatch.undo()
    assert code == 0
    assert [r[:2] for r in (tmp_path / "p.csv").read_text().splitlines()[1:]] == ["0,", "1,"]


def test_duplicate_header_names_are_an_error_when_all_columns_are_read(tmp_path, capsys):
    """A model reads its columns by name, so a fit on all columns of a header naming one twice
    is an error (the predict on the same file could not find them); by index they are read."""
    err = _bad(tmp_path, capsys, "x,x\n1,2\n3,4\n5,6\n7,8\n")
    assert "names column 'x' more than once (columns 0 and 1)" in err
    assert cli.main(["fit", str(tmp_path / "bad.csv"), "--family", "auto",
                     "--no-compile-cache", "-o", str(tmp_path / "f")]) == 1
    assert "more than once" in capsys.readouterr().err
    t = datasets.read_table(str(tmp_path / "bad.csv"), columns=["1", "0"])
    np.testing.assert_array_equal(t.X[0], [2, 1])


def test_header_detection_keeps_a_first_row_of_data_with_text(tmp_path):
    """A headerless first row with text in a column of text (an id) beside numbers is data,
    so rows and labels stay aligned with the file's lines; a header above numbers, or all
    text, is a header."""
    path = tmp_path / "t.csv"
    path.write_text("r1,1.5,2\nr2,3,4\nr3,5,6\n")
    t = datasets.read_table(str(path), columns=["1", "2"])
    assert t.row_labels == ["line 1", "line 2", "line 3"] and t.columns == ["1", "2"]
    np.testing.assert_array_equal(t.X[:, 0], [1.5, 3, 5])
    path.write_text("id,x,y\nr1,1.5,2\nr2,3,4\n")
    assert datasets.read_table(str(path), columns=["x"]).columns == ["x"]
    path.write_text("name,region\nr1,east\nr2,west\n")
    t = datasets.read_table(str(path), text=True)
    assert t.columns == ["name", "region"] and t.X.shape == (2, 2)
    path.write_text("x,y\n")
    with pytest.raises(datasets.DataError, match="too few rows: 0"):
        datasets.read_table(str(path))
    path.write_text("r1,0.5\n")
    assert datasets.read_table(str(path), columns=["1"], min_rows=1).X.tolist() == [[0.5]]


def test_too_few_rows(tmp_path, capsys):
    err = _bad(tmp_path, capsys, "a,b\n1,2\n3,4\n")
    assert "too few rows: 2 (need at least 3)" in err


def test_bad_options_are_one_line_errors(tmp_path, capsys, blobs):
    data = _write_csv(tmp_path / "d.csv", blobs[:10])
    assert cli.main(["fit", str(data), "-k", "3-1", "--no-compile-cache"]) == 1
    assert "bad --n-components" in capsys.readouterr().err
    assert cli.main(["fit", str(data), "-c", "banana", "--no-compile-cache"]) == 1
    assert "covariance_type must be one of" in capsys.readouterr().err
    assert cli.main(["fit", str(data), "--columns", "a,zz", "--no-compile-cache"]) == 1
    assert "no column 'zz'" in capsys.readouterr().err
    assert cli.main(["fit"]) == 2  # argparse usage error
    assert cli.main(["fit", str(data), "--tol", "-1", "--no-compile-cache"]) == 1
    assert "--tol and --reg-covar must be finite and >= 0" in capsys.readouterr().err


def test_output_paths_are_checked_before_fitting(tmp_path, capsys, blobs):
    """An output directory that is a file (the input, say), an empty one, or a predict output
    in a missing directory: one clear line before any work, nothing written, no errno text."""
    data = _write_csv(tmp_path / "d.csv", blobs[:10])
    (tmp_path / "file").write_text("mine\n")
    before = _sha(data)
    for extra, message in (
            (["-o", str(data)], f"cannot write {data / 'model.npz'}: {data} is not a directory"),
            (["-o", ""], "bad output directory ''"),
            (["-o", str(tmp_path / "o"), "--figures", str(tmp_path / "file" / "figs")],
             f"{tmp_path / 'file'} is not a directory"),
            (["-o", str(tmp_path / "file"), "--family", "auto"],
             f"{tmp_path / 'file'} is not a directory")):
        assert cli.main(["fit", str(data), *FIT_ARGS, *extra]) == 1, extra
        err = capsys.readouterr().err.strip()
        assert err.startswith("emjax: error: ") and "\n" not in err and message in err, err
    model = tmp_path / "model.npz"  # any file: the output is checked before the model is read
    model.write_bytes(b"")
    for out, message in ((tmp_path / "nodir" / "p.csv", f"no such directory {tmp_path / 'nodir'}"),
                         (tmp_path / "file" / "p.csv", f"{tmp_path / 'file'} is not a directory"),
                         ("", "bad output path ''"),
                         (f"{tmp_path / 'new'}/", "give a file name")):
        assert cli.main(["predict", str(model), str(data), "-o", str(out)]) == 1
        assert message in capsys.readouterr().err
    assert _sha(data) == before and (tmp_path / "file").read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.csv", "file", "model.npz"]


def test_read_table_formats_and_columns(tmp_path, blobs):
    X = blobs[:20]
    # CSV with a non-numeric id column that is not selected; columns by name and by index.
    lines = ["id,a,b,c"] + [f"r{i}," + ",".join(f"{v:.17g}" for v in row)
                            for i, row in enumerate(X)]
    (tmp_path / "t.csv").write_text("\n".join(lines))
    t = datasets.read_table(str(tmp_path / "t.csv"), columns=["c", "a"])
    np.testing.assert_array_equal(t.X, X[:, [2, 0]])
    assert t.columns == ["c", "a"]
    t = datasets.read_table(str(tmp_path / "t.csv"), columns=["1", "3"])
    np.testing.assert_array_equal(t.X, X[:, [0, 2]])
    # Without a header (detected), and forced: a numeric first row is data.
    _write_csv(tmp_path / "n.csv", X, header=None)
    t = datasets.read_table(str(tmp_path / "n.csv"))
    np.testing.assert_array_equal(t.X, X)
    assert t.columns == ["0", "1", "2"]
    t = datasets.read_table(str(tmp_path / "n.csv"), header=True)
    np.testing.assert_array_equal(t.X, X[1:])
    # NPY (1-D is one column) and its NaN rows by index.
    np.save(tmp_path / "x.npy", X)
    np.testing.assert_array_equal(datasets.read_table(str(tmp_path / "x.npy")).X, X)
    np.save(tmp_path / "v.npy", X[:, 0])
    assert datasets.read_table(str(tmp_path / "v.npy")).X.shape == (20, 1)
    Y = X.copy()
    Y[4, 1] = np.nan
    np.save(tmp_path / "y.npy", Y)
    with pytest.raises(datasets.DataError, match=r"1 row\(s\): row 4"):
        datasets.read_table(str(tmp_path / "y.npy"))
    np.save(tmp_path / "s.npy", np.array(["a", "b"]))
    with pytest.raises(datasets.DataError, match="non-numeric array"):
        datasets.read_table(str(tmp_path / "s.npy"))


def test_read_parquet(tmp_path, blobs):
    pa = pytest.importorskip("pyarrow")  # in the test extra; never skipped under .ci/run
    import pyarrow.parquet as pq

    X = blobs[:20]
    table = pa.table({"a": X[:, 0], "b": X[:, 1], "name": [f"r{i}" for i in range(20)]})
    pq.write_table(table, tmp_path / "t.parquet")
    t = datasets.read_table(str(tmp_path / "t.parquet"), columns=["b", "a"])
    np.testing.assert_array_equal(t.X, X[:, [1, 0]])
    with pytest.raises(datasets.DataError, match="non-numeric column 'name'"):
        datasets.read_table(str(tmp_path / "t.parquet"))


def test_ctrl_c_is_one_line_and_status_130(tmp_path, capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_predict", interrupted)
    assert cli.main(["predict", "m.npz", "d.csv"]) == 130
    assert capsys.readouterr().err.strip() == ("emjax: interrupted (outputs are written whole "
                                               "or not at all)")


def test_predict_help_says_which_columns_it_reads(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["predict", "--help"])
    assert "(default: the model's columns by name; by position in a table without a header)" \
        in " ".join(capsys.readouterr().out.split())


def test_parse_components():
    assert cli.parse_components("4") == (4,)
    assert cli.parse_components("1-6") == (1, 2, 3, 4, 5, 6)
    assert cli.parse_components("2,4,6-7") == (2, 4, 6, 7)
    with pytest.raises(cli.CLIError):
        cli.parse_components("0-2")
