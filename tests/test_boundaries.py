"""Trust at the boundaries (issue 17): one named test per item.

Each test asserts the error type and that the message names the problem; for files, that every
input's bytes are unchanged and that no partial or temporary file is left behind. The module
shares one tiny fitted model (``emjax fit`` on the blobs, with test_cli.py's static
configuration so the compiled grid program is shared in a full run) and one compiled fitting
program per covariance type and dtype (``max_iter=1`` from a given start, chained).
"""

import contextlib
import hashlib
import io as std_io
import json
import os
import shutil
import warnings

import jax
import numpy as np
import pytest

import emjax
from emjax import _validation as v
from emjax import cli
from emjax.failure_mode import data as fd
from emjax.gmm import io as model_io
from emjax.gmm.options import upper_cholesky
from tests.conftest import COV_TYPES, DTYPES

FIT_ARGS = ["-k", "2-3", "-c", "full", "-n", "2", "--max-iter", "60", "--tol", "1e-9",
            "--seed", "0", "--no-compile-cache"]


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _leftovers(directory) -> list:
    """Temporary files (``.name.XXXX.tmp``) left in ``directory``."""
    return [n for n in os.listdir(directory) if n.endswith(".tmp")]


def _blobs() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.concatenate([
        rng.normal(size=(60, 3)),
        rng.normal(size=(50, 3)) * 0.7 + np.array([5.0, 5.0, 0.0]),
        rng.normal(size=(40, 3)) * 0.5 + np.array([-4.0, 3.0, 2.0]),
    ])


def _write_csv(path, X, header="a,b,c"):
    lines = [header] + [",".join(f"{v:.17g}" for v in row) for row in X]
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(argv):
    """``cli.main(argv)`` -> ``(exit code, stdout, stderr)``."""
    out, err = std_io.StringIO(), std_io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def _one_line_error(code, err, *needles):
    err = err.strip()
    assert code == 1, err
    assert err.startswith("emjax: error: ") and "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One tiny fitted model: ``emjax fit`` on the blobs -> (directory, data CSV, stderr)."""
    root = tmp_path_factory.mktemp("fitted")
    data = _write_csv(root / "data.csv", _blobs())
    code, _, err = _run(["fit", str(data), *FIT_ARGS, "--no-plots", "-o", str(root / "out")])
    assert code == 0, err
    return root / "out", data, err


# --- 1. precisions_init orientation

def _start(X, labels, k, ctype):
    """weights/means/precisions from hard labels (non-diagonal for full and tied)."""
    w = np.bincount(labels, minlength=k) / len(labels)
    mu = np.stack([X[labels == j].mean(0) for j in range(k)])
    cov = np.stack([np.cov(X[labels == j].T, bias=True) for j in range(k)])
    prec = {"full": np.linalg.inv(cov), "tied": np.linalg.inv(np.einsum("k,kij->ij", w, cov)),
            "diag": 1.0 / np.diagonal(cov, axis1=1, axis2=2),
            "spherical": 1.0 / np.diagonal(cov, axis1=1, axis2=2).mean(1)}[ctype]
    return w, mu, prec


def _correlated(dtype):
    rng = np.random.default_rng(3)
    a = rng.normal(size=(40, 2)) @ np.array([[1.0, 0.8], [0.0, 0.6]])
    b = rng.normal(size=(30, 2)) @ np.array([[0.5, -0.4], [0.0, 0.9]]) + np.array([3.0, 1.0])
    X = np.concatenate([a, b]).astype(dtype)
    # A deliberately rough start: labels by a tilted line, so EM has work to do.
    labels = (X[:, 0] + 0.3 * X[:, 1] > 1.2).astype(int)
    return X, labels


@pytest.mark.parametrize("ctype", COV_TYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_1_precisions_init_is_honoured_iterate_by_iterate(ctype, dtype):
    from sklearn.mixture import GaussianMixture as SkGM

    X, labels = _correlated(dtype)
    w, mu, prec = _start(X.astype(np.float64), labels, 2, ctype)
    if ctype in ("full", "tied"):  # the start the bug mishandled: correlated precisions
        off = prec[..., 0, 1]
        assert np.all(np.abs(off) > 0.1 * np.abs(prec[..., 0, 0]))

    def sk_fit(max_iter, tol=0.0):
        sk = SkGM(2, covariance_type=ctype, weights_init=w, means_init=mu,
                  precisions_init=prec, max_iter=max_iter, tol=tol)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return sk.fit(X.astype(np.float64))

    # One compiled program (max_iter=1); iterate t+1 restarts it from iterate t (params_init
    # has the same pytree structure as weights/means/precisions_init, so nothing recompiles).
    res = emjax.fit(X, 2, covariance_type=ctype, weights_init=w.astype(dtype),
                    means_init=mu.astype(dtype), precisions_init=prec.astype(dtype), max_iter=1,
                    tol=0.0)
    iterates, lls = {1: res}, [float(res.log_likelihood)]
    for t in range(2, 400):
        res = emjax.fit(X, 2, covariance_type=ctype, params_init=res.params, max_iter=1, tol=0.0)
        iterates[t] = res
        lls.append(float(res.log_likelihood))
        if t > 20 and abs(lls[-1] - lls[-2]) < 1e-13:
            break
    f64 = dtype == np.float64
    atol = 1e-10 if f64 else 2e-4
    for t in (1, 2, 20):
        sk = sk_fit(t)
        p = iterates[t].params
        assert p.means.dtype == dtype
        np.testing.assert_allclose(np.asarray(p.means), sk.means_, rtol=0, atol=atol,
                                   err_msg=f"means after {t} iterations")
        np.testing.assert_allclose(np.asarray(p.covariance.covariances), sk.covariances_,
                                   rtol=0, atol=atol, err_msg=f"covariances after {t} iterations")
        np.testing.assert_allclose(np.asarray(p.weights), sk.weights_, rtol=0, atol=atol)
    sk = sk_fit(1000, tol=1e-13)
    assert sk.converged_
    np.testing.assert_allclose(lls[-1], sk.score(X.astype(np.float64)), rtol=0,
                               atol=1e-8 if f64 else 2e-5)


def test_1_precisions_cholesky_orientation():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 4, 4))
    prec = a @ np.swapaxes(a, 1, 2) + np.eye(4)
    u = upper_cholesky(prec)
    np.testing.assert_array_equal(u, np.triu(u))
    np.testing.assert_allclose(u @ np.swapaxes(u, 1, 2), prec, rtol=1e-12, atol=1e-12)


# --- 2. the functional API checks concrete inputs

def test_2_functional_api_checks_concrete_inputs(fitted):
    params = emjax.load(str(fitted[0] / "model.npz")).params  # float64, 3 features
    X = _blobs()[:5]
    fns = (emjax.predict, emjax.predict_proba, emjax.score_samples, emjax.log_prob, emjax.bic,
           emjax.aic, emjax.e_step)
    for fn in fns:
        with pytest.raises(ValueError, match=r"X has 1 features \(shape \(5, 1\)\) but the model "
                                             r"has 3"):
            fn(params, X[:, :1])
        with pytest.raises(ValueError, match="X has 4 features"):
            fn(params, np.concatenate([X, X[:, :1]], 1))
        bad = X.copy()
        bad[2, 1] = np.nan
        with pytest.raises(ValueError, match=r"contains NaN or infinity in 1 row\(s\): 2"):
            fn(params, bad)
        with pytest.raises(ValueError, match="must be a 2-D array"):
            fn(params, X[0])
        with pytest.raises(ValueError, match="must be real"):
            fn(params, X.astype(complex))
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(5,\)"):
        emjax.e_step(params, X, np.ones(4))
    with pytest.raises(ValueError, match="params.precisions_cholesky has shape"):
        cov = params.covariance._replace(precisions_cholesky=params.covariance.covariances[:1])
        emjax.predict(params._replace(covariance=cov), X)
    # A float64 model with x64 off: an error saying how to fix it, not a float32 evaluation.
    with jax.enable_x64(False):
        for fn in (emjax.predict, emjax.score_samples):
            with pytest.raises(ValueError, match=r"float64 but JAX's x64 mode is off.*"
                                                 r"jax_enable_x64"):
                fn(params, X)
        with pytest.raises(ValueError, match="x64 mode is off"):
            emjax.sample(jax.random.key(0), params, 3)
    # Valid input: the same labels as inside jit, where nothing is checked (documented).
    labels = np.asarray(emjax.predict(params, X))
    np.testing.assert_array_equal(np.asarray(jax.jit(emjax.predict)(params, X)), labels)
    bad = X.copy()
    bad[0, 0] = np.nan
    assert np.isnan(np.asarray(jax.jit(emjax.score_samples)(params, bad))[0])


# --- 3. reg_covar far above the data's scale

def test_3_reg_covar_above_data_scale_warns(fitted):
    assert "warning" not in fitted[2]  # well-scaled data: no warning
    # The estimator (its fit shares test 1's compiled full float64 program).
    X, labels = _correlated(np.float64)
    w, mu, prec = _start(X, labels, 2, "full")
    s = 1e-5
    gm = emjax.GaussianMixture(2, weights_init=w, means_init=mu * s, precisions_init=prec / s**2,
                               max_iter=1, tol=0.0)
    with pytest.warns(UserWarning, match=r"reg_covar=1e-06 is more than 1% of the smallest "
                                         r"feature variance.*standardise.*or lower reg_covar"):
        gm.fit(X * s)
    # The command line (shares the module fixture's compiled grid).
    root = fitted[0].parent / "scaled"
    root.mkdir()
    data = _write_csv(root / "tiny.csv", _blobs() * 1e-5)
    code, _, err = _run(["fit", str(data), *FIT_ARGS, "--no-plots", "-o", str(root / "out")])
    assert code == 0
    assert "emjax: warning: --reg-covar=1e-06 is more than 1% of the smallest feature variance" \
        in err and "standardise" in err


# --- 4. the command line never destroys what a user owns

def test_4_cli_never_overwrites_inputs_or_existing_outputs(fitted, tmp_path):
    out, data, _ = fitted
    model = tmp_path / "model.npz"
    shutil.copy(out / "model.npz", model)
    before = {p: _sha(p) for p in (model, data)}
    # predict -o MODEL: refused (an input), even with --force.
    for force in ([], ["--force"]):
        code, _, err = _run(["predict", str(model), str(data), "-o", str(model), *force])
        _one_line_error(code, err, f"refusing to write {model}: it is the input")
    # fit OUT/selection.csv -o OUT: refused (an output would replace the input).
    own = tmp_path / "own"
    own.mkdir()
    shutil.copy(data, own / "selection.csv")
    sel_hash = _sha(own / "selection.csv")
    code, _, err = _run(["fit", str(own / "selection.csv"), *FIT_ARGS, "-o", str(own),
                         "--force"])
    _one_line_error(code, err, "refusing to write", "selection.csv: it is the input")
    assert _sha(own / "selection.csv") == sel_hash
    # An existing output is not replaced without --force (the fit is not even started).
    code, _, err = _run(["fit", str(data), *FIT_ARGS, "-o", str(out)])
    _one_line_error(code, err, f"{out / 'model.npz'} exists; pass --force")
    pred = tmp_path / "pred.csv"
    pred.write_text("mine\n")
    code, _, err = _run(["predict", str(model), str(data), "-o", str(pred)])
    _one_line_error(code, err, f"{pred} exists; pass --force to overwrite it")
    assert pred.read_text() == "mine\n"
    # With --force the output is replaced, whole.
    code, _, err = _run(["predict", str(model), str(data), "-o", str(pred), "--force"])
    assert code == 0, err
    assert pred.read_text().startswith("label,p0,p1")
    assert len(pred.read_text().splitlines()) == 151
    for p, h in before.items():
        assert _sha(p) == h
    for d in (tmp_path, own, out):
        assert _leftovers(d) == []


# --- 5. emjax.save is atomic

def test_5_save_is_atomic_and_never_writes_through_a_symlink(fitted, tmp_path, monkeypatch):
    saved = emjax.load(str(fitted[0] / "model.npz"))
    path = model_io.save(str(tmp_path / "m.npz"), saved.params)
    good = _sha(path)

    def savez_then_fail(f, **arrays):
        f.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(model_io.np, "savez", savez_then_fail)
    with pytest.raises(OSError, match="disk full"):
        model_io.save(path, saved.params)
    monkeypatch.undo()
    assert _sha(path) == good and _leftovers(tmp_path) == []
    emjax.load(path)  # still readable
    # A symlink is replaced by the new file; its target keeps its bytes.
    target = tmp_path / "target.npz"
    target.write_bytes(b"not yours to overwrite")
    link = tmp_path / "link.npz"
    link.symlink_to(target)
    model_io.save(str(link), saved.params)
    assert target.read_bytes() == b"not yours to overwrite"
    assert not link.is_symlink() and _sha(link) != _sha(target)
    emjax.load(str(link))
    assert _leftovers(tmp_path) == []


# --- 6. load checks everything

def _arrays(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _tamper(src, dst, *, meta=None, **arrays):
    a = _arrays(src)
    if meta is not None:
        m = json.loads(str(a["metadata"][()]))
        m = meta(m) if callable(meta) else meta
        a["metadata"] = np.asarray(json.dumps(m))
    a.update(arrays)
    np.savez(dst, **a)
    return dst


def test_6_load_rejects_corrupt_or_tampered_files(fitted, tmp_path):
    src = fitted[0] / "model.npz"
    a = _arrays(src)
    pc, cov = a["precisions_cholesky"], a["covariances"]
    k = a["weights"].shape[0]
    nan_w = a["weights"].copy()
    nan_w[0] = np.nan
    bad_cov = cov.copy()
    bad_cov[0] = -bad_cov[0]
    cases = {
        "truncated": ("cannot be read as an .npz", None),
        "meta_list": ("metadata is a JSON list", dict(meta=[1, 2])),
        "unknown_cov": ("covariance_type 'banana'",
                        dict(meta=lambda m: {**m, "covariance_type": "banana"})),
        "version_str": ("format_version '1' is not a positive integer",
                        dict(meta=lambda m: {**m, "format_version": "1"})),
        "pc_shape": ("precisions_cholesky has shape (3, 3)", dict(precisions_cholesky=pc[0])),
        "cov_strings": ("covariances has dtype <U", dict(covariances=cov.astype(str))),
        "nan_weights": ("weights contains NaN", dict(weights=nan_w)),
        "n_features": ("metadata n_features = 4", dict(meta=lambda m: {**m, "n_features": 4})),
        "complex": ("means has dtype complex128", dict(means=a["means"].astype(complex))),
        "simplex": ("weights are not on the simplex", dict(weights=np.full(k, 0.9))),
        "not_spd": ("covariances are not positive definite", dict(covariances=bad_cov)),
        "transposed_factor": ("precisions_cholesky are not upper triangular",
                              dict(precisions_cholesky=np.swapaxes(pc, 1, 2))),
        "other_factor": ("precisions_cholesky do not match the covariances",
                         dict(precisions_cholesky=pc[::-1].copy())),
    }
    for name, (problem, change) in cases.items():
        path = tmp_path / f"{name}.npz"
        if change is None:
            path.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
        else:
            _tamper(src, path, **change)
        before = _sha(path)
        with pytest.raises(ValueError) as info:
            emjax.load(str(path))
        msg = str(info.value)
        assert msg.startswith(f"{path}: not an emjax model file: ") and problem in msg, (name, msg)
        assert _sha(path) == before
    np.save(tmp_path / "model.npy", a["means"])
    with pytest.raises(ValueError, match=r"model.npy: .*\.npy file"):
        emjax.load(str(tmp_path / "model.npy"))
    with pytest.raises(ValueError, match="is a directory"):
        emjax.load(str(tmp_path))
    # a table given for the model: no word of NumPy's about pickles
    (tmp_path / "table.npz").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"table.npz: .*not an .npz archive \(a text or other "
                                         r"file\?\); models are the .npz files"):
        emjax.load(str(tmp_path / "table.npz"))
    # The command line prints it as one line.
    code, _, err = _run(["predict", str(tmp_path / "nan_weights.npz"), str(fitted[1]), "-o",
                         str(tmp_path / "p.csv")])
    _one_line_error(code, err, "nan_weights.npz: not an emjax model file: weights contains NaN")
    assert not (tmp_path / "p.csv").exists() and _leftovers(tmp_path) == []


# --- 7. the -k grid is bounded

def test_7_component_grid_is_bounded_before_expanding(fitted, tmp_path):
    data = fitted[1]
    for k in ("1-200000000", "200000000", "0-3"):
        code, _, err = _run(["fit", str(data), "-k", k, "-o", str(tmp_path / "o")])
        _one_line_error(code, err, f"bad --n-components '{k}': components must be between 1 "
                                   f"and {cli.MAX_COMPONENTS}")
    code, _, err = _run(["fit", str(data), "-k", "200", "-o", str(tmp_path / "o")])
    _one_line_error(code, err, "too few rows: 150 (need at least 200)")
    # -k 150 on 178 rows of 2 features: warned (the grid point has 0.2 samples per parameter).
    msg = cli._few_samples(178, 2, (2, 150), ("full", "diag"))
    assert "fewer than 3 samples (178 rows) per free parameter for full K >= 150, diag K >= 150" \
        in msg
    assert cli._few_samples(150, 3, (2, 3), ("full",)) is None
    assert not os.path.exists(tmp_path / "o")


# --- 8. duplicate columns and digit separators

def test_8_duplicate_columns_and_digit_separators_are_rejected(fitted, tmp_path):
    data = fitted[1]
    before = _sha(data)
    out = str(tmp_path / "o")
    code, _, err = _run(["fit", str(data), "--columns", "a,a", "-o", out])
    _one_line_error(code, err, "--columns names 'a' twice")
    code, _, err = _run(["fit", str(data), "--columns", "a,0", "-o", out])
    _one_line_error(code, err, "column 'a' is selected twice (as '0')")
    sep = tmp_path / "sep.csv"
    sep.write_text("a,b\n1,2\n1_000,3\n4,5\n6,7\n")
    code, _, err = _run(["fit", str(sep), "-o", out])
    _one_line_error(code, err, "non-numeric value '1_000' at line 3, column 'a' (digit "
                               "separators '_' are not accepted)")
    code, _, err = _run(["fit", str(data), "-k", "1_0", "-o", out])
    _one_line_error(code, err, "bad --n-components '1_0'")
    code, _, err = _run(["fit", str(data), "--seed", "1_0", "-o", out])
    assert code == 2 and "invalid integer: '1_0'" in err
    code, _, err = _run(["fit", str(data), "--tol", "1_0.5", "-o", out])
    assert code == 2 and "invalid number: '1_0.5'" in err
    assert _sha(data) == before and not os.path.exists(out)


# --- 9. int seeds and huge random states

def test_9_int_seed_is_a_key_and_huge_seeds_are_refused():
    key = v.as_key(7)
    np.testing.assert_array_equal(jax.random.key_data(key),
                                  jax.random.key_data(jax.random.key(7)))
    X, labels = _correlated(np.float64)
    w, mu, prec = _start(X, labels, 2, "full")
    # The compiled program of test 1: an int key runs and equals jax.random.key(0).
    kw = dict(weights_init=w, means_init=mu, precisions_init=prec, max_iter=1, tol=0.0)
    a = emjax.fit(X, 2, key=0, **kw)
    b = emjax.fit(X, 2, key=jax.random.key(0), **kw)
    np.testing.assert_array_equal(np.asarray(a.params.means), np.asarray(b.params.means))
    with pytest.raises(ValueError, match=r"key must be a single JAX PRNG key"):
        emjax.fit(X, 2, key=np.zeros(3), **kw)
    for seed in (2**70, -1):
        with pytest.raises(ValueError, match=r"must be in \[0, 2\*\*32\); got " + str(seed)):
            emjax.GaussianMixture(2, random_state=seed).fit(X)
        with pytest.raises(ValueError, match=r"must be in \[0, 2\*\*32\)"):
            emjax.fit(X, 2, key=seed)


# --- 10. the failure-mode long-table reader

def test_10_long_table_edges_are_clear(tmp_path):
    good = "unit,time,s1,s2\nu1,0,1.0,2.0\nu1,1,1.5,2.5\nu2,0,0.5,\n"
    ref = fd.load_long_table(std_io.StringIO(good))
    # A byte-order mark and ';' or tab separators are detected, as emjax fit does.
    for name, text in (("bom.csv", "\ufeff" + good), ("semi.csv", good.replace(",", ";")),
                       ("tab.tsv", good.replace(",", "\t"))):
        (tmp_path / name).write_text(text, encoding="utf-8")
        t = fd.load_long_table(str(tmp_path / name))
        assert t.channels == ["s1", "s2"] and t.unit_ids == ["u1", "u2"]
        np.testing.assert_array_equal(t.values, ref.values)
    dup = tmp_path / "dup.csv"
    dup.write_text("unit,time,s1,s1\nu1,0,1,2\n")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("unit,time,temp\u00e9rature\nu1,0,1\n".encode("latin-1"))
    cases = {dup: "the header names column 's1' 2 times",
             latin: "not UTF-8 text (byte 0xe9",
             tmp_path: "is a directory"}
    for path, problem in cases.items():
        before = None if path.is_dir() else _sha(path)
        with pytest.raises(ValueError) as info:
            fd.load_long_table(str(path))
        assert str(info.value).startswith(f"{path}: ") and problem in str(info.value)
        assert before is None or _sha(path) == before
    with pytest.raises(ValueError, match="cannot parse '1_0' as a number"):
        fd.load_long_table(std_io.StringIO("unit,time,s\nu1,1_0,2\n"))


# --- 11. --version and the demo's output directory

def test_11_version_and_demo_output_is_ignored():
    code, out, _ = _run(["--version"])
    assert code == 0 and out.strip() == f"emjax {emjax.__version__}"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, ".gitignore")) as f:
        assert "emjax-demo/" in f.read().split()
    assert cli.build_parser().parse_args(["demo"]).output == "emjax-demo"
