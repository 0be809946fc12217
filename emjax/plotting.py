"""Figures of a model selection (matplotlib, an optional dependency: ``pip install emjax[plot]``).

Each function returns a ``matplotlib.figure.Figure`` built without pyplot (no global state, no
display needed); :func:`save_figures` writes the three standard PNGs.
"""

from __future__ import annotations

import os

import numpy as np

from emjax.gmm import GMMParams, selection, steps
from emjax.gmm import covariance as cov_lib

_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]


def _figure(figsize):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("emjax's figures need matplotlib: pip install 'emjax[plot]' "
                          "(or pip install matplotlib)") from None
    return Figure(figsize=figsize, layout="constrained")


def plot_criteria(sel: selection.SelectionResult):
    """BIC and AIC of each grid point's best restart against ``n_components``, one line per
    covariance type, with the spread (min to max) of BIC over restarts as a band; the chosen
    model is circled."""
    fig = _figure((6.4, 4.2))
    ax = fig.add_subplot()
    for i, grid in enumerate(sel.grids):
        color = _COLORS[i % len(_COLORS)]
        ks = grid.n_components
        bic = selection.best_scores(grid, "bic")
        aic = selection.best_scores(grid, "aic")
        lo = np.nanmin(np.where(np.isfinite(grid.bic), grid.bic, np.nan), axis=1)
        hi = np.nanmax(np.where(np.isfinite(grid.bic), grid.bic, np.nan), axis=1)
        ax.fill_between(ks, lo, hi, color=color, alpha=0.2, linewidth=0)
        ax.errorbar(ks, bic, yerr=[bic - lo, hi - bic], color=color, marker="o", capsize=3,
                    label=f"BIC {grid.covariance_type}")
        ax.plot(ks, aic, color=color, marker="s", linestyle="--", markersize=4,
                label=f"AIC {grid.covariance_type}")
        if grid.covariance_type == sel.covariance_type:
            j = int(np.flatnonzero(ks == sel.n_components)[0])
            y = getattr(grid, sel.criterion)[j, grid.best_index[j]]
            ax.plot([sel.n_components], [y], marker="o", markersize=16, markerfacecolor="none",
                    markeredgecolor="black", markeredgewidth=1.5, linestyle="none",
                    label=f"chosen ({sel.criterion.upper()})")
    n_init = sel.grids[0].bic.shape[1]
    ax.set_xlabel("number of components K")
    ax.set_ylabel("criterion (lower is better)")
    ax.set_title(f"Model selection: best of {n_init} restarts; band = BIC range over restarts")
    ax.set_xticks(np.unique(np.concatenate([g.n_components for g in sel.grids])))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return fig


def plot_traces(sel: selection.SelectionResult):
    """Mean log-likelihood against EM iteration for every restart of every grid point, one panel
    per covariance type, coloured by ``n_components``."""
    n = len(sel.grids)
    fig = _figure((4.2 * min(n, 2), 3.4 * ((n + 1) // 2)))
    axes = fig.subplots((n + 1) // 2, min(n, 2), squeeze=False).ravel()
    for ax, grid in zip(axes, sel.grids):
        for i, k in enumerate(grid.n_components):
            color = _COLORS[i % len(_COLORS)]
            for r in range(grid.history.shape[1]):
                h = grid.history[i, r]
                m = np.isfinite(h)
                ax.plot(np.arange(1, h.size + 1)[m], h[m], color=color, alpha=0.7, linewidth=1,
                        label=f"K={k}" if r == 0 else None)
        ax.set_title(f"{grid.covariance_type}: every restart", fontsize=10)
        ax.set_xlabel("EM iteration")
        ax.set_ylabel("mean log-likelihood")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig


def _ellipse_points(mean2, cov2, scale, n=100):
    vals, vecs = np.linalg.eigh(cov2)
    t = np.linspace(0, 2 * np.pi, n)
    circle = np.stack([np.cos(t), np.sin(t)])
    return (mean2[:, None] + vecs @ (np.sqrt(np.maximum(vals, 0))[:, None] * circle) * scale).T


def plot_clusters(X, params: GMMParams, *, feature_names: list | None = None):
    """The data in 2-D coloured by most probable component, with each component's mean and its
    1- and 2-sigma covariance ellipses. ``D > 2``: projected on the first two principal axes of
    the data (means and covariances projected alike); ``D == 1``: the value against the index."""
    X = np.asarray(X, np.float64)
    labels = np.asarray(steps.predict(params, X))
    means = np.asarray(params.means, np.float64)
    k, d = means.shape
    covs = np.asarray(cov_lib.as_full(params.covariance, k, d), np.float64)
    if feature_names is not None and len(feature_names) != d:
        raise ValueError(f"feature_names must name the model's {d} features; got "
                         f"{len(feature_names)}: {list(feature_names)!r}")
    fig = _figure((6.0, 5.0))
    ax = fig.add_subplot()
    if d == 1:
        for j in range(k):
            m = labels == j
            ax.scatter(np.flatnonzero(m), X[m, 0], s=8, color=_COLORS[j % len(_COLORS)],
                       label=f"component {j}")
        ax.set_xlabel("row")
        ax.set_ylabel(feature_names[0] if feature_names else "x0")
        ax.legend(fontsize=8)
        return fig
    if d == 2:
        proj = np.eye(2)
        xlabel, ylabel = (feature_names or ["x0", "x1"])[:2]
        center = np.zeros(2)
    else:
        center = X.mean(0)
        _, s, vt = np.linalg.svd(X - center, full_matrices=False)
        proj = vt[:2].T  # (d, 2)
        share = s[:2] ** 2 / np.sum(s ** 2)
        xlabel, ylabel = (f"principal axis {i + 1} ({100 * share[i]:.0f}% of variance)"
                          for i in range(2))
    Y = (X - center) @ proj
    for j in range(k):
        color = _COLORS[j % len(_COLORS)]
        m = labels == j
        ax.scatter(Y[m, 0], Y[m, 1], s=6, alpha=0.5, color=color,
                   label=f"component {j} (weight {float(params.weights[j]):.2f})")
        mu = (means[j] - center) @ proj
        c2 = proj.T @ covs[j] @ proj
        for scale, ls in ((1.0, "-"), (2.0, "--")):
            e = _ellipse_points(mu, c2, scale)
            ax.plot(e[:, 0], e[:, 1], color=color, linestyle=ls, linewidth=1.5)
        ax.plot(*mu, marker="x", color="black", markersize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{k} components, {params.covariance_type} covariance (ellipses: 1 and 2 sigma)",
                 fontsize=10)
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", markerscale=2)
    return fig


#: The files :func:`save_figures` writes.
FIGURE_NAMES = ("criteria.png", "traces.png", "clusters.png")


def save_figures(sel: selection.SelectionResult, X, directory: str, *,
                 feature_names: list | None = None, dpi: int = 90) -> list:
    """Write :data:`FIGURE_NAMES` to ``directory`` (each whole or not at all); returns the
    paths."""
    from emjax._files import atomic_write

    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(f"{directory} is a file, not a directory: the figures are written "
                         "into a directory")
    os.makedirs(directory, exist_ok=True)
    figs = dict(zip(FIGURE_NAMES, (
        plot_criteria(sel),
        plot_traces(sel),
        plot_clusters(X, sel.params, feature_names=feature_names),
    )))
    paths = []
    for name, fig in figs.items():
        path = os.path.join(directory, name)
        with atomic_write(path, "wb") as f:
            fig.savefig(f, dpi=dpi, format="png")
        paths.append(path)
    return paths
