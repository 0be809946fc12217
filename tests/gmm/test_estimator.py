"""emjax.GaussianMixture follows scikit-learn's estimator conventions and numbers."""

import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning as SKConvergenceWarning
from sklearn.exceptions import NotFittedError as SKNotFittedError
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture as SKGaussianMixture
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import (
    check_dataframe_column_names_consistency,
    parametrize_with_checks,
)

import emjax
from emjax.gmm import estimator
from tests.conftest import COV_TYPES, FRESH_PROCESS_PRELUDE

FITTED = ["weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_",
          "converged_", "n_iter_", "lower_bound_", "n_features_in_"]


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_fitted_attributes_match_sklearn(blobs, cov_type, production_compile_options):
    ours = emjax.GaussianMixture(3, covariance_type=cov_type, n_init=3, random_state=0,
                                 tol=1e-6).fit(blobs)
    ref = SKGaussianMixture(3, covariance_type=cov_type, n_init=3, random_state=0,
                            tol=1e-6).fit(blobs)
    for name in FITTED:
        assert np.shape(getattr(ours, name)) == np.shape(getattr(ref, name)), name
    assert ours.means_.dtype == np.float64
    np.testing.assert_allclose(ours.lower_bound_, ref.lower_bound_, rtol=1e-6)
    order = np.argsort(ours.means_[:, 0])
    ref_order = np.argsort(ref.means_[:, 0])
    np.testing.assert_allclose(ours.means_[order], ref.means_[ref_order], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours.weights_[order], ref.weights_[ref_order], rtol=1e-4)
    np.testing.assert_allclose(ours.predict_proba(blobs)[:, order],
                               ref.predict_proba(blobs)[:, ref_order], atol=1e-4)
    np.testing.assert_allclose(ours.score_samples(blobs), ref.score_samples(blobs), rtol=1e-5)
    # another row count of the same size class: the same compiled program (rows padded, then
    # dropped), the same values
    programs = estimator._score_samples._cache_size()
    np.testing.assert_allclose(ours.score_samples(blobs[:-3]), ref.score_samples(blobs[:-3]),
                               rtol=1e-5)
    assert estimator._score_samples._cache_size() == programs
    np.testing.assert_allclose(ours.bic(blobs), ref.bic(blobs), rtol=1e-6)
    np.testing.assert_allclose(ours.aic(blobs), ref.aic(blobs), rtol=1e-6)
    # precisions_ = U U^T for full, consistent with covariances_
    if cov_type == "full":
        np.testing.assert_allclose(ours.precisions_ @ ours.covariances_,
                                   np.broadcast_to(np.eye(3), (3, 3, 3)), atol=1e-8)
    assert ours.restart_lower_bounds_.shape == (3,) and ours.status_ == 0
    assert len(ours.lower_bounds_) == ours.n_iter_ == len(ref.lower_bounds_)


def test_estimator_protocol(blobs):
    gm = emjax.GaussianMixture(2, covariance_type="diag", random_state=3)
    params = gm.get_params()
    assert params["n_components"] == 2 and params["covariance_type"] == "diag"
    assert "n_components=2" in repr(gm) or "GaussianMixture(" in repr(gm)
    cloned = clone(gm)  # scikit-learn's clone works on our estimator
    assert cloned.get_params() == params and cloned is not gm
    gm.set_params(n_components=3)
    assert gm.n_components == 3
    with pytest.raises(ValueError, match="Invalid parameter"):
        gm.set_params(bogus=1)
    with pytest.raises(emjax.NotFittedError, match="not fitted"):
        gm.predict(blobs)
    with pytest.raises(SKNotFittedError):  # scikit-learn's own except clause catches ours
        gm.predict_proba(blobs)
    X = blobs.copy()
    labels = gm.fit_predict(X)
    np.testing.assert_array_equal(X, blobs)  # input not mutated
    np.testing.assert_array_equal(labels, gm.predict(X))
    assert gm.fit(X) is gm
    with pytest.raises(ValueError, match=r"X has 2 features, but GaussianMixture is expecting 3 "
                       r"features as input \(X has shape \(150, 2\)\)"):
        gm.predict(X[:, :2])
    Xs, ys = gm.sample(50)
    assert Xs.shape == (50, 3) and np.all(np.diff(ys) >= 0)
    assert np.isfinite(gm.score(X))


def test_user_initialisation_and_warm_start(blobs):
    sk = SKGaussianMixture(3, random_state=0).fit(blobs)
    gm = emjax.GaussianMixture(3, weights_init=sk.weights_, means_init=sk.means_,
                               precisions_init=sk.precisions_, tol=1e-10, max_iter=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm.fit(blobs)
    np.testing.assert_allclose(gm.means_, sk.means_, atol=1e-3)
    # max_iter=1: the programs of test_warm_start_converges_over_repeated_single_iterations
    warm = emjax.GaussianMixture(3, warm_start=True, max_iter=1, tol=0.0, random_state=0)
    with pytest.warns(emjax.ConvergenceWarning):
        warm.fit(blobs)
    first = warm.lower_bound_
    with pytest.warns(SKConvergenceWarning):  # scikit-learn's warning class catches ours
        warm.fit(blobs)  # continues from the fitted parameters
    assert warm.lower_bound_ >= first - 1e-12


def test_verbose_prints_every_restart(blobs, capsys):
    # the configuration of test_fitted_attributes_match_sklearn[full]: its compiled program
    emjax.GaussianMixture(3, n_init=3, tol=1e-6, verbose=1, random_state=0).fit(blobs)
    out = capsys.readouterr().out
    assert "restart 0" in out and "restart 1" in out


# -- scikit-learn's machinery -------------------------------------------------------------------
# One estimator for the whole check suite: every new data shape compiles a fitting program, so
# the suite is kept to one configuration (two components, few iterations, one restart).
EXPECTED_FAILED_CHECKS = {
    # fit takes sample_weight (scikit-learn's GaussianMixture does not, so is not checked): the
    # weighted statistics are exact, but the random initialisation draws from n rows with
    # weights, not from the repeated rows, so the two fits start (and may end) elsewhere.
    "check_sample_weight_equivalence_on_dense_data":
        "random initialisation draws differ between weighted and repeated rows",
}


@parametrize_with_checks([emjax.GaussianMixture(2, max_iter=20, n_init=1)],
                         expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", emjax.ConvergenceWarning)
        check(estimator)


def test_dataframe_feature_names():
    """scikit-learn's own check of feature names (it fits on DataFrames), then ours directly."""
    pd = pytest.importorskip("pandas")
    check_dataframe_column_names_consistency("GaussianMixture",
                                             emjax.GaussianMixture(2, max_iter=20))
    X = np.random.default_rng(0).normal(size=(20, 2))
    df = pd.DataFrame(X, columns=["a", "b"])
    gm = emjax.GaussianMixture(2, max_iter=20, random_state=0).fit(df)
    np.testing.assert_array_equal(gm.feature_names_in_, ["a", "b"])
    with pytest.raises(ValueError, match="feature names should match"):
        gm.predict(df[["b", "a"]])
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        labels = gm.predict(X)
    np.testing.assert_array_equal(gm.predict(df), labels)
    gm.fit(X)  # refitting without names forgets them
    assert not hasattr(gm, "feature_names_in_")


def _kfold():
    # Shuffled folds: the blobs fixture is ordered by cluster. 150 rows -> every training fold
    # has 100 rows, so all folds of one n_components share one compiled program.
    return KFold(3, shuffle=True, random_state=0)


def test_pipeline_grid_search_and_cross_val_choose_what_sklearn_chooses(blobs):
    """The reported failures: Pipeline.predict, GridSearchCV (NaN scores, first candidate),
    cross_val_score; now finite scores and the same choice as scikit-learn's estimator."""
    grid = {"gaussianmixture__n_components": [2, 3, 4]}

    def search(gm_class):
        pipe = make_pipeline(StandardScaler(), gm_class(random_state=0, n_init=2))
        return GridSearchCV(pipe, grid, cv=_kfold(), error_score="raise").fit(blobs)

    ours, ref = search(emjax.GaussianMixture), search(SKGaussianMixture)
    scores = ours.cv_results_["mean_test_score"]
    assert np.all(np.isfinite(scores))
    assert ours.best_params_ == ref.best_params_
    # up to the true K = 3 both find the same optimum; beyond it, each its own local one
    np.testing.assert_allclose(scores[:2], ref.cv_results_["mean_test_score"][:2], rtol=1e-3)
    labels = ours.best_estimator_.predict(blobs)
    ref_labels = ref.best_estimator_.predict(blobs)
    assert adjusted_rand_score(labels, ref_labels) == 1.0
    assert np.isfinite(ours.score(blobs))
    # cross_val_score over n_components on the bare estimator: same folds, same programs
    cv = {k: cross_val_score(emjax.GaussianMixture(k, random_state=0, n_init=2), blobs,
                             cv=_kfold(), error_score="raise") for k in (2, 3, 4)}
    cv_ref = {k: cross_val_score(SKGaussianMixture(k, random_state=0, n_init=2), blobs,
                                 cv=_kfold()) for k in (2, 3, 4)}
    assert all(np.all(np.isfinite(s)) for s in cv.values())
    best = max(cv, key=lambda k: cv[k].mean())
    assert best == max(cv_ref, key=lambda k: cv_ref[k].mean())


def test_clone_and_pickle(blobs):
    # one restart, as test_estimator_protocol's three components: one compiled program for both
    gm = emjax.GaussianMixture(3, covariance_type="diag", random_state=0).fit(blobs)
    fresh = clone(gm)
    assert fresh.get_params() == gm.get_params() and not hasattr(fresh, "means_")
    back = pickle.loads(pickle.dumps(gm))
    np.testing.assert_array_equal(back.means_, gm.means_)
    np.testing.assert_array_equal(back.predict_proba(blobs), gm.predict_proba(blobs))
    assert back.score(blobs) == gm.score(blobs)


def test_failed_refit_leaves_the_fitted_model_as_it_was(blobs):
    """A refit refused on its data kept the new n_features_in_ with the old parameters: predict
    on the fitted features said 'expecting 2 features', on the new ones it failed inside JAX."""
    # test_clone_and_pickle's configuration: its compiled program
    gm = emjax.GaussianMixture(3, covariance_type="diag", random_state=0).fit(blobs)
    labels = gm.predict(blobs)
    with pytest.raises(ValueError, match="n_samples >= n_components"):
        gm.fit(blobs[:2, :2])
    with pytest.raises(ValueError, match="warm_start"):
        gm.set_params(warm_start=True).fit(blobs[:, :2])
    assert gm.n_features_in_ == 3
    np.testing.assert_array_equal(gm.predict(blobs), labels)
    with pytest.raises(ValueError, match="expecting 3 features"):
        gm.predict(blobs[:, :2])


def test_max_iter_zero_initialises_only(blobs):
    """scikit-learn's max_iter=0: the initial parameters, n_iter_ = 0, no ConvergenceWarning.
    k-means initialisation on well-separated blobs: the same means as scikit-learn's."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", SKConvergenceWarning)
        gm = emjax.GaussianMixture(3, max_iter=0, random_state=0).fit(blobs)
    ref = SKGaussianMixture(3, max_iter=0, random_state=0).fit(blobs)
    assert gm.n_iter_ == ref.n_iter_ == 0 and not gm.converged_
    assert len(gm.lower_bounds_) == 0
    order, ref_order = np.argsort(gm.means_[:, 0]), np.argsort(ref.means_[:, 0])
    np.testing.assert_allclose(gm.means_[order], ref.means_[ref_order], atol=1e-10)
    np.testing.assert_allclose(gm.lower_bound_, gm.score(blobs), rtol=1e-12)
    # with a user-given start, max_iter=0 returns it unchanged
    means0 = ref.means_ + 0.1
    start = emjax.GaussianMixture(3, max_iter=0, means_init=means0).fit(blobs)
    np.testing.assert_allclose(start.means_, means0, atol=1e-12)


def test_warm_start_converges_over_repeated_single_iterations(blobs):
    """Repeated fit(max_iter=1) with warm_start continue one EM run: it converges after as many
    calls as a cold fit takes iterations, at the same parameters (scikit-learn carries its
    lower bound over the same way)."""
    cold = emjax.GaussianMixture(3, max_iter=100, tol=1e-10, random_state=0).fit(blobs)
    assert cold.converged_ and cold.n_iter_ >= 3
    warm = emjax.GaussianMixture(3, max_iter=1, tol=1e-10, warm_start=True, random_state=0)
    calls = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SKConvergenceWarning)
        while calls < 100:
            labels = warm.fit_predict(blobs)
            np.testing.assert_array_equal(labels, warm.predict(blobs))
            calls += 1
            if warm.converged_:
                break
    assert warm.converged_ and warm.n_iter_ == 1
    assert calls == cold.n_iter_
    np.testing.assert_allclose(warm.means_, cold.means_, atol=1e-10)
    np.testing.assert_allclose(warm.lower_bound_, cold.lower_bound_, rtol=1e-12)


def test_hyper_parameters_validated_at_fit_with_sklearns_words(blobs):
    for name, bad in (("max_iter", -1), ("n_components", 0), ("tol", -1.0),
                      ("covariance_type", "bogus"), ("verbose_interval", 0)):
        gm = emjax.GaussianMixture().set_params(**{name: bad})  # stored, not checked
        ref = SKGaussianMixture().set_params(**{name: bad})
        with pytest.raises(ValueError) as ours:
            gm.fit(blobs)
        with pytest.raises(ValueError) as theirs:
            ref.fit(blobs)
        if name == "covariance_type":  # scikit-learn lists a set in hash order
            assert str(ours.value).startswith("The 'covariance_type' parameter of "
                                              "GaussianMixture must be a str among {")
        else:
            assert str(ours.value) == str(theirs.value)
    with pytest.raises(ValueError, match=r"n_samples >= n_components .*shape \(2, 3\)"):
        emjax.GaussianMixture(3).fit(blobs[:2])


def test_fresh_process_with_x64_off_and_without_sklearn(blobs):
    """One fresh interpreter, x64 off: float32 data is fitted in float32 and float64 data in
    float64 (the estimator's own x64 context). Then scikit-learn absent (blocked): the same API
    from the fallback base, a clone through get_params, errors and warnings of the standard
    classes."""
    code = FRESH_PROCESS_PRELUDE + (
        "import sys, numpy as np, jax, emjax\n"
        "assert 'sklearn' not in sys.modules  # imported by the estimator, on first use\n"
        "sys.modules['sklearn'] = None  # from here on scikit-learn is absent\n"
        "assert not jax.config.jax_enable_x64\n"
        # the disk cache on: the float64 fit's programs, lowered under the estimator's x64
        # context and one compiled on the second thread, must be the float64 ones
        "import tempfile; emjax.enable_disk_cache(tempfile.mkdtemp())\n"
        f"X = np.asarray({blobs[::2].tolist()!r})\n"
        "a = emjax.GaussianMixture(3, random_state=0).fit(X.astype(np.float32))\n"
        "b = emjax.GaussianMixture(3, random_state=0).fit(X)\n"
        "assert a.means_.dtype == np.float32, a.means_.dtype\n"
        "assert b.means_.dtype == np.float64, b.means_.dtype\n"
        "assert not jax.config.jax_enable_x64\n"
        "assert a.predict(X.astype(np.float32)).shape == (75,)\n"
        "assert abs(a.lower_bound_ - b.lower_bound_) < 1e-4 * abs(b.lower_bound_)\n"
        "import pickle, warnings\n"
        "from emjax.gmm import estimator as est\n"
        "assert not est.HAVE_SKLEARN\n"
        "assert [c.__name__ for c in emjax.GaussianMixture.__mro__] == "
        "['GaussianMixture', '_ParamsBase', 'object']\n"
        "assert issubclass(emjax.NotFittedError, (ValueError, AttributeError))\n"
        "assert issubclass(emjax.ConvergenceWarning, UserWarning)\n"
        "gm = emjax.GaussianMixture(2, covariance_type='diag', max_iter=1, random_state=0)\n"
        "p = gm.get_params()\n"
        "twin = type(gm)(**p)\n"
        "assert twin.get_params() == p and repr(twin) == repr(gm)\n"
        "assert 'max_iter=1' in repr(gm)\n"
        "assert gm.set_params(tol=0.5) is gm and gm.tol == 0.5\n"
        "try:\n    gm.set_params(bogus=1)\nexcept ValueError as e:\n"
        "    assert 'Invalid parameter' in str(e)\nelse:\n    raise AssertionError\n"
        "try:\n    gm.predict(np.zeros((3, 2)))\nexcept AttributeError as e:\n"
        "    assert 'not fitted' in str(e)\nelse:\n    raise AssertionError\n"
        "X = np.concatenate([np.zeros((10, 2)), np.ones((10, 2)) * 5])\n"
        "X = X + np.random.default_rng(0).normal(size=X.shape)\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    gm.set_params(tol=0.0).fit(X)\n"
        "assert any(issubclass(x.category, emjax.ConvergenceWarning) for x in w)\n"
        "back = pickle.loads(pickle.dumps(gm))\n"
        "assert (back.predict(X) == gm.predict(X)).all() and gm.n_features_in_ == 2\n"
        "from emjax.families import Poisson\n"
        "mm = emjax.MixtureModel(Poisson(), 2, random_state=0)\n"
        "assert type(mm)(**mm.get_params()).get_params() == mm.get_params()\n"
        "C = np.abs(np.round(X))\n"
        "assert mm.fit(C).predict(C[:2]).shape == (2,)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_nan_tag_follows_the_missing_option():
    """scikit-learn lets NaN reach the estimator only when its tags say it handles NaN."""
    from sklearn.utils import get_tags

    assert not get_tags(emjax.GaussianMixture(2)).input_tags.allow_nan
    assert get_tags(emjax.GaussianMixture(2, missing="marginalize")).input_tags.allow_nan
