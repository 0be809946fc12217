"""The figures' arguments (no fit: a mixture built by hand)."""

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from emjax import make_params, plotting  # noqa: E402


def test_feature_names_of_another_length_and_a_file_for_the_directory_are_errors(tmp_path):
    params = make_params(np.array([0.5, 0.5]), np.array([[0.0, 0.0], [3.0, 3.0]]),
                         np.stack([np.eye(2)] * 2), "full")
    X = np.random.default_rng(0).normal(size=(20, 2))
    fig = plotting.plot_clusters(X, params, feature_names=["a", "b"])
    assert [fig.axes[0].get_xlabel(), fig.axes[0].get_ylabel()] == ["a", "b"]
    with pytest.raises(ValueError, match=r"name the model's 2 features; got 1: \['a'\]"):
        plotting.plot_clusters(X, params, feature_names=["a"])
    target = tmp_path / "figures"
    target.write_text("a user's file")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        plotting.save_figures(None, X, str(target))
    assert target.read_text() == "a user's file"
