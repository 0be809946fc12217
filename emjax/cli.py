"""The ``emjax`` command line: fit a grid of Gaussian mixtures to a table, predict, demo.

    emjax fit DATA [-k 1-6] [-c full,diag] [--n-init 4] [-o DIR]   choose, save, plot
    emjax predict MODEL DATA [-o predictions.csv]                 labels and probabilities
    emjax demo                                                    ``fit`` on the bundled data

Every problem with the input is one line on stderr (``emjax: error: ...``) and exit status 1.
Input files are only read; an output is never written over an input, an existing output is
replaced only with ``--force``, and every output is written whole or not at all (a temporary
file in the same directory, then ``os.replace``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import math
import os
import sys

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


#: The largest number of components a grid may ask for (checked before the grid is built).
MAX_COMPONENTS = 1000

#: Fewer samples than this per free parameter of a grid point prints a warning.
MIN_SAMPLES_PER_PARAMETER = 3


class CLIError(Exception):
    """An error reported as one line, without a traceback."""


def strict_int(text: str) -> int:
    """An integer written with digits only (``int`` would also take ``1_000`` and spaces)."""
    t = str(text).strip()
    if not (t.lstrip("+-").isdigit() and t.lstrip("+-").isascii()):
        raise ValueError(f"invalid integer {text!r}")
    return int(t)


def strict_float(text: str) -> float:
    """A number as ``float`` reads it, except digit separators (``1_000``), which are rejected."""
    if "_" in str(text):
        raise ValueError(f"invalid number {text!r} (digit separators '_' are not accepted)")
    return float(text)


def _arg_type(parse, what: str):
    def convert(text):
        try:
            return parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {what}: {text!r}") from None
    convert.__name__ = what
    return convert


def parse_components(text: str, max_components: int = MAX_COMPONENTS) -> tuple:
    """``"3"`` -> ``(3,)``; ``"1-6"`` -> ``(1, ..., 6)``; ``"2,4,6"`` -> ``(2, 4, 6)``.

    Every K must be in ``[1, max_components]``; that is checked before a range is expanded.
    """
    out = []
    try:
        for part in str(text).split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = (strict_int(x) for x in part.split("-", 1))
                if lo > hi:
                    raise ValueError
                if lo < 1 or hi > max_components:
                    raise CLIError(f"bad --n-components {text!r}: components must be between 1 "
                                   f"and {max_components}")
                out.extend(range(lo, hi + 1))
            else:
                out.append(strict_int(part))
    except ValueError:
        raise CLIError(f"bad --n-components {text!r}: give K, a range like 1-6, or a list "
                       f"like 2,4,6") from None
    if not out or min(out) < 1 or max(out) > max_components:
        raise CLIError(f"bad --n-components {text!r}: components must be between 1 and "
                       f"{max_components}")
    return tuple(sorted(set(out)))


def _x64(dtype: str):
    import jax

    return jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()


def _columns_arg(text: str | None, option: str = "--columns"):
    if not text:
        return None
    names = [c.strip() for c in text.split(",") if c.strip()]
    seen = set()
    for c in names:
        if c in seen:
            raise CLIError(f"{option} names {c!r} twice; give each once")
        seen.add(c)
    return names


def check_outputs(outputs: list, inputs: list, force: bool, out_dir: str | None = None) -> None:
    """Refuse to write over an input (ever), over an existing output (unless ``force``), or
    where an output's directory is not a directory, or is missing and not to be created (a
    command given its output directory ``out_dir`` creates the missing ones)."""
    from emjax._files import same_file

    if out_dir is not None and not out_dir:
        raise CLIError("bad output directory '': give a directory name (. for this one)")
    for out in outputs:
        if os.path.isdir(out):
            raise CLIError(f"cannot write {out}: it is a directory; choose another output (-o)")
        if not os.path.basename(out):
            raise CLIError(f"bad output path {out!r}: give a file name")
        # the directory: checked now, not found wrong after the fit
        parent = os.path.dirname(out)
        existing = parent
        while existing and not os.path.lexists(existing):
            existing = os.path.dirname(existing)
        if existing and not os.path.isdir(existing):
            raise CLIError(f"cannot write {out}: {existing} is not a directory; choose another "
                           f"output (-o)")
        if existing != parent and out_dir is None:
            raise CLIError(f"cannot write {out}: no such directory {parent}")
        for inp in inputs:
            if same_file(out, inp):
                raise CLIError(f"refusing to write {out}: it is the input {inp}; choose another "
                               f"output (-o)")
        if os.path.lexists(out) and not force:
            raise CLIError(f"{out} exists; pass --force to overwrite it, or choose another "
                           f"output (-o)")


def as_dtype(table, dtype: str, path: str, n_rows: int | None = None):
    """The table's values in ``dtype``; values whose squares, summed over ``n_rows`` rows (EM's
    statistics; default the table's), overflow it are an error naming their rows, not an
    infinity or NaN inside the fit or the probabilities."""
    import numpy as np

    from emjax.datasets import row_names

    X = table.X
    limit = float(np.sqrt(np.finfo(dtype).max / max(n_rows or len(X), 1)))
    big = np.flatnonzero((np.abs(X) > limit).any(axis=1))  # NaN (missing) compares False
    if big.size:
        raise CLIError(f"{path}: values too large for {dtype} (above {limit:.2g} in magnitude) in "
                       f"{big.size} row(s): {row_names(table, big)}; rescale the columns"
                       + (" or use --dtype float64" if dtype == "float32" and n_rows is None
                          else ""))
    return X.astype(dtype)


def read_model_columns(read, path: str, fitted: list, levels: dict | None = None):
    """The table's columns a model was fitted on, by name (in another order or beside others,
    read right); in a table without a header (columns ``"0"``, ``"1"``, ...), by position.
    ``read``: :func:`emjax.datasets.read_table` with the file and its options bound;
    ``levels``: the fitted text columns' levels, by name."""
    from emjax import datasets

    try:
        return read(columns=fitted, text=levels or False)
    except datasets.UnknownColumnError:
        table = read(columns=None, text=bool(levels))
    if table.columns != [str(i) for i in range(len(table.columns))]:
        raise CLIError(f"{path} has columns {table.columns} but the model was fitted on "
                       f"{fitted}; choose them with --columns")
    if not levels:
        return table
    # the text columns by position, with the fitted levels
    return read(columns=None, text={str(fitted.index(n)): lv for n, lv in levels.items()})


def check_probabilities(proba, table, path: str) -> None:
    """Refuse to write labels for rows with no finite probability (too far from every
    component for the model's precision): argmax would call them component 0."""
    import numpy as np

    from emjax.datasets import row_names

    bad = np.flatnonzero(~np.isfinite(proba).all(axis=1))
    if bad.size:
        raise CLIError(f"{path}: no finite probability in {bad.size} row(s): "
                       f"{row_names(table, bad)} (values too far from every component); nothing "
                       f"written")


def _warn(message: str) -> None:
    print(f"emjax: warning: {message}", file=sys.stderr)


def _few_samples(n: int, d: int, ks: tuple, types: tuple) -> str | None:
    from emjax.gmm import n_parameters

    low = []
    for ctype in types:
        bad = [k for k in ks if n < MIN_SAMPLES_PER_PARAMETER * n_parameters(ctype, k, d)]
        if bad:
            low.append(f"{ctype} K >= {min(bad)}")
    if not low:
        return None
    return (f"fewer than {MIN_SAMPLES_PER_PARAMETER} samples ({n} rows) per free parameter for "
            f"{', '.join(low)}: those fits are poorly determined and their BIC/AIC unreliable; "
            f"use fewer components, a simpler covariance type or more data")


def _format_rows(rows: list, criterion: str) -> list:
    head = (f"{'cov':>9} {'K':>3} {'BIC':>11} {'AIC':>11} {'loglik/n':>10} "
            f"{'BIC range over restarts':>25} {'conv':>5} {'iters':>5} {'time s':>7}")
    # time s: compile + run of the one call that fitted all K and restarts of that type.
    lines = [head, "-" * len(head)]
    for r in rows:
        spread = f"{r['bic_min']:.1f} .. {r['bic_max']:.1f}"
        mark = f"  <- chosen by {criterion.upper()}" if r["chosen"] else ""
        flags = "" if r["status"] == 0 else "  !"
        lines.append(
            f"{r['covariance_type']:>9} {r['n_components']:>3} {r['bic']:>11.2f} "
            f"{r['aic']:>11.2f} {r['log_likelihood']:>10.4f} {spread:>25} "
            f"{r['converged']:>2}/{r['n_init']:<2} {r['n_iter']:>5} {r['seconds']:>7.2f}"
            f"{flags}{mark}")
    return lines


def _write_summary_csv(path: str, rows: list) -> None:
    from emjax._files import atomic_write

    keys = ["covariance_type", "n_components", "bic", "aic", "log_likelihood", "bic_min",
            "bic_max", "converged", "n_init", "n_iter", "status", "chosen", "seconds"]
    with atomic_write(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in keys})


def run_fit(args, *, data_path: str, title: str) -> int:
    import numpy as np

    from emjax import _validation, datasets
    from emjax import progress as progress_lib
    from emjax.em import describe_status
    from emjax.gmm import io, selection, steps
    from emjax.plotting import FIGURE_NAMES

    gaussian_only = {flag: value for flag, value in (
        ("--covariance-type", args.covariance_type), ("--reg-covar", args.reg_covar),
        ("--init", args.init), ("--figures", args.figures)) if value is not None}
    if getattr(args, "family", None) and gaussian_only:
        # they would be ignored: a family's Gaussian columns each have their own variance
        verb = "applies" if len(gaussian_only) == 1 else "apply"
        raise CLIError(f"{', '.join(gaussian_only)} {verb} to Gaussian mixtures, not to "
                       "--family (whose Gaussian columns are independent given the component, "
                       "each with its own variance, and which writes no figures)")
    args.covariance_type = args.covariance_type or args.default_covariance
    args.reg_covar = 1e-6 if args.reg_covar is None else args.reg_covar
    args.init = args.init or "kmeans"
    if args.n_init < 1 or args.max_iter < 1:
        raise CLIError("--n-init and --max-iter must be >= 1")
    if not (math.isfinite(args.tol) and args.tol >= 0 and math.isfinite(args.reg_covar)
            and args.reg_covar >= 0):
        raise CLIError("--tol and --reg-covar must be finite and >= 0")
    ks = parse_components(args.n_components)
    if getattr(args, "family", None):
        from emjax.families.cli import run_family_fit

        return run_family_fit(args, ks, data_path=data_path, title=title)
    types = selection.check_covariance_types(
        "all" if args.covariance_type == "all"
        else _columns_arg(args.covariance_type, "--covariance-type") or [])
    out_dir = args.output
    model_file = os.path.join(out_dir, "model.npz")
    summary_file = os.path.join(out_dir, "selection.csv")
    outputs = [model_file, summary_file]
    if args.plots:
        outputs += [os.path.join(args.figures or out_dir, name) for name in FIGURE_NAMES]
    marginalize = getattr(args, "missing", "error") == "marginalize"
    try:
        table = datasets.read_table(data_path, columns=_columns_arg(args.columns),
                                    header=args.header, min_rows=max(max(ks), 2),
                                    allow_missing=marginalize)
    except datasets.MissingValuesError as exc:
        raise CLIError(f"{exc}; pass --missing marginalize to marginalise missing entries "
                       "(missing at random)") from None
    # after the data's errors, before fitting
    check_outputs(outputs, [data_path], args.force, out_dir=out_dir)
    if args.compile_cache:
        enable_compile_cache()
    X = as_dtype(table, args.dtype, data_path)
    n, d = X.shape
    for problem in (_validation.reg_covar_problem(X, args.reg_covar, "--reg-covar"),
                    _few_samples(n, d, ks, types)):
        if problem:
            _warn(problem)
    print(f"{title}: {data_path}: {n} rows x {d} columns ({', '.join(table.columns)}), "
          f"{args.dtype}; K = {selection._grid_label(ks)}; covariance {', '.join(types)}; "
          f"{args.n_init} restarts each")
    config = dict(n_components=list(ks), covariance_types=list(types), n_init=args.n_init,
                  seed=args.seed, tol=args.tol, reg_covar=args.reg_covar,
                  max_iter=args.max_iter, init_params=args.init, criterion=args.criterion,
                  dtype=args.dtype, data=os.path.abspath(data_path), columns=table.columns)
    from emjax._validation import as_key

    kwargs = dict(key=as_key(args.seed), n_init=args.n_init, tol=args.tol,
                  reg_covar=args.reg_covar, max_iter=args.max_iter, init_params=args.init)
    if marginalize:
        from emjax.gmm import missing as missing_lib

        kwargs["missing"] = "marginalize"
        config["missing"] = "marginalize"
        print(f"missing entries: {int(np.isnan(X).sum())} of {X.size} "
              f"({100 * float(np.isnan(X).mean()):.1f} %), marginalised")
    grids = []
    with _x64(args.dtype):
        for ctype in types:
            if args.progress:
                lanes = len(ks) * args.n_init
                cb = progress_lib.make_callback(progress_lib.every_for(n, d, max(ks), lanes))
                bar = progress_lib.ProgressBar(f"{ctype:>9} K={selection._grid_label(ks)}",
                                               lanes, args.max_iter)
                with bar:
                    g = selection.fit_grid(X, ks, covariance_type=ctype, callback=cb, **kwargs)
                    bar.finish(g.n_iter, g.log_likelihood, g.converged)
                grids.append(g)
            else:
                grids.append(selection.fit_grid(X, ks, covariance_type=ctype, **kwargs))
        sel = selection.choose(grids, args.criterion)
        rows = selection.summary_rows(sel)
        if marginalize and np.isnan(X).any():
            labels = np.asarray(missing_lib.predict(sel.params, X))
            X = np.asarray(missing_lib.impute(sel.params, X))  # the figures show imputed rows
        else:
            labels = np.asarray(steps.predict(sel.params, X))
    print("\n".join(_format_rows(rows, args.criterion)))
    for i, g in enumerate(grids):
        shared = " (with the k-means initialisation shared by all types)" if i == 0 else ""
        print(f"{g.covariance_type:>9}: {len(g.n_components)} K x {g.bic.shape[1]} restarts in "
              f"one compiled EM call: compile {g.compile_seconds:.2f} s{shared} + run "
              f"{g.run_seconds:.3f} s")
    bad = [r for r in rows if r["status"]]
    for r in bad:
        print(f"  ! {r['covariance_type']} K={r['n_components']}: {describe_status(r['status'])}")
    counts = np.bincount(labels, minlength=sel.n_components)
    print(f"chosen: {sel.covariance_type} covariance, K={sel.n_components} by "
          f"{args.criterion.upper()}; weights "
          f"{np.round(np.asarray(sel.params.weights, np.float64), 3).tolist()}; "
          f"points per component {counts.tolist()}")
    config["selection"] = rows
    os.makedirs(out_dir, exist_ok=True)
    model_path = io.save(model_file, sel.params, config=config)
    _write_summary_csv(summary_file, rows)
    print(f"wrote {model_path} and {summary_file}")
    if args.plots:
        fig_dir = args.figures or out_dir
        try:
            from emjax import plotting

            with _x64(args.dtype):
                paths = plotting.save_figures(sel, X, fig_dir, feature_names=table.columns)
            print("wrote figures " + ", ".join(paths))
        except ImportError as exc:
            print(f"figures skipped: {exc}")
    return 0


def enable_compile_cache(directory: str | None = None) -> str | None:
    """Keep compiled programs on disk between runs (:func:`emjax.enable_disk_cache`)."""
    from emjax._compile_cache import enable_disk_cache

    return enable_disk_cache(directory)


def run_predict(args) -> int:
    import numpy as np

    from emjax import datasets
    from emjax._files import atomic_write
    from emjax.gmm import io, steps

    if not os.path.exists(args.model):
        raise CLIError(f"no such model file: {args.model}")
    check_outputs([args.output], [args.data, args.model], args.force)
    from emjax.families.cli import is_family_model, run_family_predict

    if is_family_model(args.model):
        return run_family_predict(args)
    saved = io.load(args.model)
    meta = saved.metadata
    d = meta["n_features"]
    columns = _columns_arg(args.columns)
    # a model fitted with --missing marginalize labels rows with holes from their observed entries
    # an explicit --missing error wins over the model's own setting
    marginalize = getattr(args, "missing", None) != "error" and (
        getattr(args, "missing", None) == "marginalize"
        or meta.get("config", {}).get("missing") == "marginalize")
    fitted = meta.get("config", {}).get("columns")
    read = functools.partial(datasets.read_table, args.data, header=args.header, min_rows=1,
                             allow_missing=marginalize)
    try:
        table = read_model_columns(read, args.data, fitted) if columns is None and fitted \
            else read(columns=columns)
    except datasets.MissingValuesError as exc:
        raise CLIError(f"{exc}; pass --missing marginalize to label rows with missing entries "
                       "from their observed ones") from None
    if table.X.shape[1] != d:
        raise CLIError(f"{args.data} has {table.X.shape[1]} columns but the model was fitted on "
                       f"{d}; choose them with --columns")
    dtype = meta["dtype"]
    X = as_dtype(table, dtype, args.data, n_rows=1)
    with _x64(dtype):
        if np.isnan(X).any():
            from emjax.gmm import missing as missing_lib

            proba = np.asarray(missing_lib.predict_proba(saved.params, X))
            labels = np.argmax(proba, axis=1)
        else:
            labels = np.asarray(steps.predict(saved.params, X))
            proba = np.asarray(steps.predict_proba(saved.params, X))
    check_probabilities(proba, table, args.data)
    k = proba.shape[1]
    with atomic_write(args.output, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label"] + [f"p{j}" for j in range(k)])
        for lab, p in zip(labels, proba):
            w.writerow([int(lab)] + [f"{x:.8g}" for x in p])
    counts = np.bincount(labels, minlength=k)
    print(f"emjax predict: {len(labels)} rows -> {args.output} (label, p0..p{k - 1}); "
          f"points per component {counts.tolist()}")
    return 0


def _add_fit_options(p: argparse.ArgumentParser, *, output: str, covariance: str) -> None:
    g = p.add_argument_group("model")
    g.add_argument("-k", "--n-components", default="1-6", metavar="K",
                   help="K, a range like 1-6, or a list like 2,4,6 (default 1-6)")
    # options of Gaussian mixtures only default to None: --family refuses them when given
    g.add_argument("-c", "--covariance-type", default=None, metavar="TYPES",
                   help=f"full, tied, diag, spherical, a comma list, or 'all' "
                   f"(default {covariance})")
    g.add_argument("-n", "--n-init", "--restarts", type=_INT, default=4, dest="n_init",
                   help="random restarts per grid point (default 4)")
    g.add_argument("--seed", type=_INT, default=0, help="random seed in [0, 2**32) (default 0)")
    g.add_argument("--tol", type=_FLOAT, default=1e-3,
                   help="convergence threshold on the mean log-likelihood (default 1e-3)")
    g.add_argument("--max-iter", type=_INT, default=200, help="EM iterations at most (200)")
    g.add_argument("--reg-covar", type=_FLOAT, default=None, help="covariance ridge (1e-6)")
    g.add_argument("--init", default=None,
                   choices=["kmeans", "k-means++", "random", "random_from_data"],
                   help="initialisation (default kmeans)")
    g.add_argument("--family", default=None, metavar="SPEC",
                   help="fit a mixture of component families instead of Gaussians: column "
                   "types 'gaussian,bernoulli,categorical,poisson,exponential,gamma' in column "
                   "order, or name:type for every column by name (a type may be auto), or "
                   "'auto' to infer and print them all; NaN/empty = missing")
    g.add_argument("--criterion", default="bic", choices=["bic", "aic"],
                   help="chooses the model (default bic)")
    g.add_argument("--missing", default=None, choices=["error", "marginalize"],
                   help="NaN/empty entries: an error (default; with --family: marginalised "
                   "unless this says error), or missing at random and marginalised exactly "
                   "(figures show them imputed)")
    g.add_argument("--dtype", default="float64", choices=["float64", "float32"],
                   help="precision of the fit (default float64)")
    o = p.add_argument_group("output")
    o.add_argument("-o", "--output", default=output, metavar="DIR",
                   help=f"directory for model.npz, selection.csv and figures (default {output})")
    p.set_defaults(default_covariance=covariance)
    o.add_argument("--figures", default=None, metavar="DIR",
                   help="directory for the figures (default: the output directory)")
    _add_force_option(o)
    o.add_argument("--no-plots", dest="plots", action="store_false", help="write no figures")
    o.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar on stderr")
    o.add_argument("--no-compile-cache", dest="compile_cache", action="store_false",
                   help="do not keep compiled programs in ~/.cache/emjax/xla between runs")


_INT = _arg_type(strict_int, "integer")
_FLOAT = _arg_type(strict_float, "number")


def _add_force_option(p) -> None:
    p.add_argument("--force", action="store_true",
                   help="overwrite existing output files (inputs are never overwritten)")


def _add_table_options(p: argparse.ArgumentParser, columns: str = "all") -> None:
    p.add_argument("--columns", default=None, metavar="COLS",
                   help=f"comma list of column names or 0-based indices (default: {columns})")
    h = p.add_mutually_exclusive_group()
    h.add_argument("--header", dest="header", action="store_true", default=None,
                   help="the CSV's first row is a header (default: detected)")
    h.add_argument("--no-header", dest="header", action="store_false",
                   help="the CSV has no header row")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emjax", description="Gaussian mixtures by EM in JAX: choose K and the covariance "
        "type by BIC/AIC over a grid fitted in one compiled call per covariance type.")
    from emjax import __version__

    parser.add_argument("--version", action="version", version=f"emjax {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fit", help="fit a grid of mixtures to a table and keep the best")
    p.add_argument("data", help="CSV/TSV (header detected), .npy, or .parquet (needs pyarrow)")
    _add_table_options(p)
    _add_fit_options(p, output="emjax-out", covariance="full")
    p = sub.add_parser("predict", help="labels and probabilities from a saved model")
    p.add_argument("model", help="a model.npz written by 'emjax fit'")
    p.add_argument("data", help="the table to label (same columns as the fit)")
    _add_table_options(p, columns="the model's columns by name; by position in a table "
                       "without a header")
    p.add_argument("-o", "--output", default="predictions.csv",
                   help="CSV to write: label, p0, p1, ... (default predictions.csv)")
    p.add_argument("--missing", default=None, choices=["error", "marginalize"],
                   help="NaN/empty entries: marginalised if the model was fitted with "
                   "--missing marginalize or this says so, an error if this says so or "
                   "otherwise (family models: marginalised unless this says error)")
    _add_force_option(p)
    p = sub.add_parser("demo", help="'emjax fit' on the bundled default data set")
    _add_fit_options(p, output="emjax-demo", covariance="all")
    p.set_defaults(columns=None, header=None)
    return parser


class _Report:
    """Standard output that, once its reader has gone (``emjax fit DATA | head``), drops the
    rest of the report instead of failing: the command still writes its files."""

    def __init__(self, stream):
        self._stream = stream

    def _gone(self) -> None:
        # the rest, and the interpreter's flush at exit, go to the null device
        with contextlib.suppress(OSError, ValueError, AttributeError):
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self._stream.fileno())
            os.close(null)

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._gone()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._gone()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def main(argv=None) -> int:
    """Run the command line; returns the exit status (0 success, 1 bad input, 2 usage, 130
    interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed its usage message
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    stdout, sys.stdout = sys.stdout, _Report(sys.stdout)
    try:
        return _run(args)
    finally:
        sys.stdout = stdout


def _run(args) -> int:
    try:
        if args.command == "fit":
            return run_fit(args, data_path=args.data, title="emjax fit")
        if args.command == "predict":
            return run_predict(args)
        from emjax import datasets

        return run_fit(args, data_path=datasets.default_path(), title="emjax demo")
    except (CLIError, ValueError, OSError, ImportError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"emjax: error: {msg}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:  # Ctrl-C: the shell's status for SIGINT, no traceback
        print("\nemjax: interrupted (outputs are written whole or not at all)", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
