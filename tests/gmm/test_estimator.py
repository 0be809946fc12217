"""emjax.GaussianMixture follows scikit-learn's estimator conventions and numbers."""

import subprocess
import sys
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.mixture import GaussianMixture as SKGaussianMixture

import emjax
from tests.conftest import COV_TYPES

FITTED = ["weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_",
          "converged_", "n_iter_", "lower_bound_", "n_features_in_"]


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_fitted_attributes_match_sklearn(blobs, cov_type):
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
    np.testing.assert_allclose(ours.bic(blobs), ref.bic(blobs), rtol=1e-6)
    np.testing.assert_allclose(ours.aic(blobs), ref.aic(blobs), rtol=1e-6)
    # precisions_ = U U^T for full, consistent with covariances_
    if cov_type == "full":
        np.testing.assert_allclose(ours.precisions_ @ ours.covariances_,
                                   np.broadcast_to(np.eye(3), (3, 3, 3)), atol=1e-8)
    assert ours.lower_bounds_.shape == (3,) and ours.status_ == 0


def test_float32_is_fitted_in_float32_even_with_x64_off(blobs):
    code = (
        "import numpy as np, jax, emjax\n"
        "assert not jax.config.jax_enable_x64\n"
        f"X = np.asarray({blobs[::2].tolist()!r})\n"
        "a = emjax.GaussianMixture(3, random_state=0).fit(X.astype(np.float32))\n"
        "b = emjax.GaussianMixture(3, random_state=0).fit(X)\n"
        "assert a.means_.dtype == np.float32, a.means_.dtype\n"
        "assert b.means_.dtype == np.float64, b.means_.dtype\n"
        "assert not jax.config.jax_enable_x64\n"
        "assert a.predict(X.astype(np.float32)).shape == (75,)\n"
        "assert abs(a.lower_bound_ - b.lower_bound_) < 1e-4 * abs(b.lower_bound_)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


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
    X = blobs.copy()
    labels = gm.fit_predict(X)
    np.testing.assert_array_equal(X, blobs)  # input not mutated
    np.testing.assert_array_equal(labels, gm.predict(X))
    assert gm.fit(X) is gm
    with pytest.raises(ValueError, match="fitted with 3"):
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
    warm = emjax.GaussianMixture(3, warm_start=True, max_iter=2, tol=0.0, random_state=0)
    with pytest.warns(emjax.ConvergenceWarning):
        warm.fit(blobs)
    first = warm.lower_bound_
    with pytest.warns(emjax.ConvergenceWarning):
        warm.fit(blobs)  # continues from the fitted parameters
    assert warm.lower_bound_ >= first - 1e-12


def test_verbose_prints_every_restart(blobs, capsys):
    emjax.GaussianMixture(2, n_init=2, verbose=1, random_state=0).fit(blobs)
    out = capsys.readouterr().out
    assert "restart 0" in out and "restart 1" in out
