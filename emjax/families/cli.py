"""``emjax fit DATA --family SPEC``: a mixture of component families on a typed table, one model
per K, chosen by BIC/AIC (the Gaussian grid's command, the family path)."""

from __future__ import annotations

import os

import numpy as np

from emjax.families.base import Family
from emjax.families.expfam import Bernoulli, Categorical, Exponential, Gamma, Poisson
from emjax.families.gaussian import Gaussian, StudentT
from emjax.families.product import Product

TYPES = {
    "gaussian": lambda: Gaussian("diag"),
    "normal": lambda: Gaussian("diag"),
    "bernoulli": Bernoulli,
    "binary": Bernoulli,
    "categorical": Categorical,
    "poisson": Poisson,
    "count": Poisson,
    "exponential": Exponential,
    "gamma": Gamma,
    "student": lambda: StudentT("diag"),
}


def infer_type(x: np.ndarray) -> str:
    """A column's type from its observed values: 0/1 -> bernoulli; integers >= 0 with at most
    10 distinct values -> categorical; other integers >= 0 -> poisson; else gaussian."""
    v = x[~np.isnan(x)]
    if v.size == 0 or np.all((v == 0) | (v == 1)):
        return "bernoulli"
    if np.all(v >= 0) and np.all(v == np.round(v)):
        return "categorical" if np.unique(v).size <= 10 else "poisson"
    return "gaussian"


def parse_family(spec: str, X: np.ndarray, names: list,
                 text: frozenset = frozenset()) -> tuple[Family, list]:
    """``(Product family, column types)`` from ``spec``: ``auto``; one type per column in order
    (``type``, comma separated); or ``name:type`` for every column, by the columns' names in
    any order. A type may be ``auto`` (inferred from the column, :func:`infer_type`; the
    ``text`` columns, level indices, are categorical)."""
    d = X.shape[1]
    items = ["auto"] * d if spec.strip().lower() == "auto" else \
        [s.strip() for s in spec.split(",") if s.strip()]
    named = [":" in s for s in items]
    if any(named) and not all(named):
        raise ValueError(f"--family {spec!r}: give every column as name:type, or types alone "
                         "in the table's column order")
    if all(named) and items:
        given = {}
        for s in items:
            name, t = (x.strip() for x in s.split(":", 1))
            if name not in names:
                raise ValueError(f"--family names column {name!r}, which the table does not "
                                 f"have (columns: {', '.join(names)})")
            if name in given:
                raise ValueError(f"--family gives column {name!r} twice")
            given[name] = t.lower()
        left = [n for n in names if n not in given]
        if left:
            raise ValueError(f"--family gives no type for column(s) {', '.join(left)} (use "
                             f"name:auto to infer one)")
        types = [given[n] for n in names]
    else:
        types = [t.lower() for t in items]
        if len(types) != d:
            raise ValueError(f"--family gives {len(types)} column types; the table has {d} "
                             f"columns ({', '.join(names)})")
    unknown = sorted({t for t in types if t not in TYPES and t != "auto"})
    if unknown:
        raise ValueError(f"unknown column type(s) {unknown}; use {', '.join(sorted(TYPES))} "
                         "or auto")
    types = [("categorical" if names[j] in text else infer_type(X[:, j])) if t == "auto" else t
             for j, t in enumerate(types)]
    wrong = [n for n, t in zip(names, types) if n in text and t != "categorical"]
    if wrong:
        raise ValueError(f"column {wrong[0]!r} holds text categories: its type must be "
                         "categorical (or auto)")
    return Product({name: TYPES[t]() for name, t in zip(names, types)}), types


def run_family_fit(args, ks: tuple, *, data_path: str, title: str) -> int:
    from emjax import datasets
    from emjax._validation import as_key
    from emjax.cli import _x64, as_dtype
    from emjax.em import describe_status
    from emjax.families import fitting
    from emjax.families import io as fio

    table = datasets.read_table(data_path, columns=args.columns.split(",") if args.columns
                                else None, header=args.header, min_rows=max(max(ks), 2),
                                allow_missing=_allow_missing(args), text=True)
    X = as_dtype(table, args.dtype, data_path)
    # a column with no observed value has nothing to fit (its type would be a guess)
    empty = [n for n, seen in zip(table.columns, (~np.isnan(X)).any(0)) if not seen]
    if empty:
        raise ValueError(f"{data_path}: no observed value in column(s) "
                         f"{', '.join(map(repr, empty))}; leave them out with --columns")
    family, types = parse_family(args.family, X, table.columns, frozenset(table.levels))
    print(f"{title}: {data_path}: {X.shape[0]} rows x {X.shape[1]} columns, {args.dtype}, "
          f"{int(np.isnan(X).sum())} missing entries; {args.n_init} restarts per K")
    print("column types: " + ", ".join(
        f"{n}={t}" + (f" (levels {', '.join(table.levels[n])})" if n in table.levels else "")
        for n, t in zip(table.columns, types)))
    from emjax.cli import check_outputs

    summary_file = os.path.join(args.output, "selection.csv")
    check_outputs([os.path.join(args.output, "model.npz"), summary_file], [data_path],
                  args.force, out_dir=args.output)
    os.makedirs(args.output, exist_ok=True)
    rows, best = [], None
    with _x64(args.dtype):
        for k in ks:
            res = fitting.fit(X, family, k, key=as_key(args.seed), n_init=args.n_init,
                              tol=args.tol, max_iter=args.max_iter)
            bic, aic = (float(f(res.family, res.params, X)) for f in (fitting.bic, fitting.aic))
            crit = bic if args.criterion == "bic" else aic
            rows.append((k, float(res.log_likelihood), crit, bool(res.converged),
                         int(res.n_iter), int(res.status), bic, aic))
            if best is None or crit < best[0]:
                best = (crit, k, res)
    print(f"{'K':>3} {'loglik/n':>10} {args.criterion.upper():>12} {'conv':>5} {'iters':>5}")
    for k, ll, crit, conv, it, status, _, _ in rows:
        flag = f"  ! {describe_status(status)}" if status else ""
        mark = "  <- chosen" if k == best[1] else ""
        print(f"{k:>3} {ll:>10.4f} {crit:>12.2f} {conv!s:>5} {it:>5}{flag}{mark}")
    res = best[2]
    path = fio.save(os.path.join(args.output, "model.npz"), res.family, res.params,
                    config=dict(column_types=types, columns=table.columns,
                                levels=table.levels, seed=args.seed,
                                n_init=args.n_init, tol=args.tol, max_iter=args.max_iter,
                                criterion=args.criterion, data=os.path.abspath(data_path)))
    _write_summary(summary_file, rows, best[1], args.n_init)
    print(f"chosen K={best[1]} by {args.criterion.upper()}; weights "
          f"{np.round(np.asarray(res.params.weights, np.float64), 3).tolist()}; wrote {path} "
          f"and {summary_file}")
    return 0


def _allow_missing(args) -> bool:
    """Family mixtures marginalise missing entries unless ``--missing error`` says otherwise
    (the table's reader then names the rows)."""
    return getattr(args, "missing", None) != "error"


def _write_summary(path: str, rows: list, chosen: int, n_init: int) -> None:
    """selection.csv of a family fit: one line per K (the Gaussian grid's columns that apply)."""
    import csv

    from emjax._files import atomic_write

    with atomic_write(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["n_components", "bic", "aic", "log_likelihood", "converged", "n_init",
                    "n_iter", "status", "chosen"])
        for k, ll, _, conv, it, status, bic, aic in rows:
            w.writerow([k, bic, aic, ll, int(conv), n_init, it, status, k == chosen])


def is_family_model(path: str) -> bool:
    """Whether ``path`` is a model file written by :func:`emjax.families.io.save`."""
    import json

    try:
        with np.load(path, allow_pickle=False) as f:
            return json.loads(str(f["metadata"][()])).get("format") == "emjax.families"
    except Exception:  # not an .npz, no metadata: the Gaussian path reports it
        return False


def run_family_predict(args) -> int:
    """``emjax predict MODEL DATA`` for a family model: labels and responsibilities as CSV
    (written atomically; the caller has checked the output against the inputs), missing
    entries marginalised."""
    import csv
    import functools

    from emjax import datasets
    from emjax._files import atomic_write
    from emjax.cli import CLIError, _x64, as_dtype, check_probabilities, read_model_columns
    from emjax.families import fitting
    from emjax.families import io as fio

    saved = fio.load(args.model)
    config = saved.metadata.get("config", {})
    fitted, levels = config.get("columns"), config.get("levels") or {}
    # text columns read with the fitted levels (by name: with --columns, the model's names)
    read = functools.partial(datasets.read_table, args.data, header=args.header, min_rows=1,
                             allow_missing=_allow_missing(args))
    table = read_model_columns(read, args.data, fitted, levels) if fitted and not args.columns \
        else read(columns=args.columns.split(",") if args.columns else None,
                  text=levels or False)
    d = saved.family.width()
    if table.X.shape[1] != d:
        raise CLIError(f"{args.data} has {table.X.shape[1]} columns but the model was fitted on "
                       f"{d}; choose them with --columns")
    dtype = saved.metadata["dtype"]
    X = as_dtype(table, dtype, args.data, n_rows=1)
    with _x64(dtype):
        proba = np.asarray(fitting.predict_proba(saved.family, saved.params, X))
    check_probabilities(proba, table, args.data)
    labels = proba.argmax(1)
    k = proba.shape[1]
    with atomic_write(args.output, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label"] + [f"p{j}" for j in range(k)])
        for lab, p in zip(labels, proba):
            w.writerow([int(lab)] + [f"{x:.8g}" for x in p])
    print(f"emjax predict: {len(labels)} rows -> {args.output} (label, p0..p{k - 1}); "
          f"points per component {np.bincount(labels, minlength=k).tolist()}")
    return 0
