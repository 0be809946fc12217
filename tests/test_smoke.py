import numpy as np
import pytest
from sklearn.mixture import GaussianMixture as SKGaussianMixture

import emjax


@pytest.mark.parametrize("cov", ["full", "diag"])
def test_estimator_matches_sklearn_log_likelihood(blobs, cov):
    ours = emjax.GaussianMixture(3, covariance_type=cov, n_init=2, random_state=0).fit(blobs)
    ref = SKGaussianMixture(3, covariance_type=cov, n_init=2, random_state=0).fit(blobs)
    assert ours.converged_
    np.testing.assert_allclose(ours.lower_bound_, ref.lower_bound_, rtol=1e-6)
