"""Bundled data sets, and reading a user's table of numbers (CSV, NPY, Parquet) with clear errors.

:func:`read_table` never writes to the file it reads; every problem is a :class:`DataError` with
a one-line message saying where (line numbers for text, row indices for arrays).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from importlib import resources
from typing import NamedTuple

import numpy as np

MISSING = {"", "na", "nan", "null", "none", "n/a"}

_DECIMAL_COMMA = re.compile(r"[+-]?\d*,\d+([eE][+-]?\d+)?")


class DataError(ValueError):
    """A data file that cannot be used, with a one-line explanation."""


class MissingValuesError(DataError):
    """Rows holding NaN or missing values where the table must be complete."""


class UnknownColumnError(DataError):
    """A selected column that the table does not have."""


class Table(NamedTuple):
    """A numeric table read from a file.

    Attributes:
      X: ``(n_rows, n_columns)`` float64 values of the selected columns.
      columns: their names (``"0"``, ``"1"``, ... when the file has none).
      row_labels: how to name each row in messages (e.g. ``"line 7"``), ``(n_rows,)``.
      levels: the text columns (read with ``text``): name -> their levels in order; a cell
        holds the index of its level (NaN where missing).
    """

    X: np.ndarray
    columns: list
    row_labels: list
    levels: dict = {}


def row_names(table: Table, idx) -> str:
    """The rows ``idx`` of ``table`` by their labels (line numbers or row indices), the first
    eight, for messages."""
    return ", ".join(table.row_labels[i] for i in idx[:8]) + (", ..." if len(idx) > 8 else "")


def default_path() -> str:
    """Path of the bundled default data set (CSV with a header, 600 rows, 2 columns)."""
    return str(resources.files("emjax") / "data" / "default.csv")


def load_default() -> np.ndarray:
    """The bundled default data set: 600 points from 3 correlated 2-D Gaussians (float64)."""
    return np.loadtxt(default_path(), delimiter=",", skiprows=1)


def parse_number(text: str) -> float:
    """``float(text)``, except that digit separators (``1_000``), which ``float`` accepts and a
    spreadsheet or another reader would not, are a ``ValueError``."""
    if "_" in text:
        raise ValueError(f"digit separator in {text!r}")
    return float(text)


#: What a table separated by spaces needs (its lines are read as one column each).
_SPACED_HINT = "; emjax reads tables separated by commas, semicolons or tabs"


def _spaced_numbers(text: str) -> bool:
    """Whether ``text`` is two or more numbers separated by whitespace."""
    parts = text.split()
    return len(parts) > 1 and all(_is_number(x) for x in parts)


def _is_number(text: str) -> bool:
    try:
        parse_number(text)
    except ValueError:
        return False
    return True


def _sniff_delimiter(first_line: str) -> str:
    for delim in (",", "\t", ";"):
        if delim in first_line:
            return delim
    return ","


def _looks_like_header(rows: list) -> bool:
    """Whether the first of the ``(line number, fields)`` rows is a header: it has a text field
    (non-numeric, not missing) above a column of numbers, or only text fields. Text in a column
    of text (an id, a category) beside a number is a row of data."""
    first = rows[0][1]
    text = [j for j, x in enumerate(first) if not _is_number(x) and x.lower() not in MISSING]
    if not text:
        return False
    rest = [f for _, f in rows[1:] if len(f) == len(first)]
    if rest and any(all(_is_number(f[j]) or f[j].lower() in MISSING for f in rest)
                    for j in text):
        return True
    return not any(_is_number(x) for x in first)


def _select(names: list, columns: Sequence[str] | None, path: str) -> list:
    """Indices of the requested columns (names, or 0-based indices)."""
    if not columns:
        # all columns: a repeated name could not be told apart when a model reads them by name
        for i, c in enumerate(names):
            if c in names[:i]:
                raise DataError(f"{path}: the header names column {c!r} more than once (columns "
                                f"{names.index(c)} and {i}); rename it or choose the columns "
                                f"by 0-based index (--columns)")
        return list(range(len(names)))
    out = []
    for c in columns:
        c = str(c).strip()
        if c in names:
            if names.count(c) > 1:
                raise DataError(f"{path}: the header names column {c!r} more than once; rename "
                                f"it or select columns by 0-based index")
            i = names.index(c)
        elif c.lstrip("-").isdigit() and -len(names) <= int(c) < len(names):
            i = int(c) % len(names)
        else:
            comma = any("," in x for x in names)
            raise UnknownColumnError(f"{path}: no column {c!r} (columns: "
                            f"{', '.join(map(repr, names)) if comma else ', '.join(names)}; "
                            f"give names or 0-based indices"
                            f"{'; a name with a comma by its index' if comma else ''})")
        if i in out:
            raise DataError(f"{path}: column {names[i]!r} is selected twice (as {c!r}); "
                            f"give each column once")
        out.append(i)
    return out


def _read_csv(path: str, columns, header: bool | None, text_columns=False) -> Table:
    with open(path, newline="", encoding="utf-8-sig") as f:
        text = f.read()
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    delim = _sniff_delimiter(first)
    rows = []  # (line number, fields)
    reader = csv.reader(lines, delimiter=delim)
    lineno = 1  # where the next record starts: a quoted field may hold line breaks
    for fields in reader:
        start, lineno = lineno, reader.line_num + 1
        # a blank line is skipped (as pandas does); a line of empty fields is a row, all missing
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue
        rows.append((start, [x.strip() for x in fields]))
    if not rows:
        raise DataError(f"{path} is empty")
    if header is None:
        header = _looks_like_header(rows)
    width = len(rows[0][1])
    for lineno, fields in rows:
        if len(fields) != width:
            raise DataError(f"{path}: ragged table: line {lineno} has {len(fields)} fields, "
                            f"line {rows[0][0]} has {width}")
    if header:
        names = rows[0][1]
        rows = rows[1:]
        # a trailing delimiter on every line: a last column with no name and no value is none
        while len(names) > 1 and not names[-1] and not any(f[len(names) - 1] for _, f in rows):
            names = names[:-1]
            rows = [(lineno, f[:-1]) for lineno, f in rows]
    else:
        names = [str(i) for i in range(width)]
    idx = _select(names, columns, path)
    levels = _text_levels(path, rows, names, idx, text_columns)
    X = np.empty((len(rows), len(idx)))
    for j, c in enumerate(idx):
        code = levels.get(names[c])
        code = None if code is None else {v: i for i, v in enumerate(code)}
        for i, (lineno, fields) in enumerate(rows):
            x = fields[c]
            if x.lower() in MISSING:
                X[i, j] = np.nan
            elif code is not None:
                if x not in code:
                    raise DataError(f"{path}: value {x!r} at line {lineno}, column {names[c]!r} "
                                    f"is not one of the model's levels {list(code)}")
                X[i, j] = code[x]
            else:
                try:
                    X[i, j] = parse_number(x)
                except ValueError:
                    hint = " (digit separators '_' are not accepted)" if "_" in x else ""
                    if _DECIMAL_COMMA.fullmatch(x):
                        hint = f" (a decimal comma: write {x.replace(',', '.')!r})"
                    elif _spaced_numbers(x):
                        hint = f" (numbers separated by spaces{_SPACED_HINT})"
                    if not hint and text_columns is False:
                        hint = (" (a column of text categories needs a mixture of families: "
                                "--family auto)")
                    raise DataError(f"{path}: non-numeric value {x!r} at line {lineno}, column "
                                    f"{names[c]!r}{hint}") from None
    return Table(X, [names[c] for c in idx], [f"line {lineno}" for lineno, _ in rows], levels)


def _text_levels(path: str, rows: list, names: list, idx: list, text) -> dict:
    """The levels of the selected text columns: ``text`` True finds them (a column with a
    non-numeric, non-missing cell; its distinct values, sorted); a dict gives them (a model's,
    by column name); False: none."""
    if text is False:
        return {}
    if isinstance(text, dict):
        unknown = sorted(set(text) - {names[c] for c in idx})
        if unknown:
            raise DataError(f"{path}: no text column {unknown[0]!r} among the columns read "
                            f"({', '.join(names[c] for c in idx)})")
        return {name: list(lv) for name, lv in text.items()}
    out = {}
    for c in idx:
        cells = {f[c] for _, f in rows if f[c].lower() not in MISSING}
        words = sorted(x for x in cells if not _is_number(x))
        if words and all(_DECIMAL_COMMA.fullmatch(x) for x in words):
            # numbers written with a decimal comma, not categories
            raise DataError(f"{path}: column {names[c]!r} holds numbers with a decimal comma "
                            f"({words[0]!r}); write them with a decimal point")
        if words and all(_spaced_numbers(x) for x in words):
            # a table separated by spaces, read as one column: not categories either
            raise DataError(f"{path}: column {names[c]!r} holds numbers separated by spaces "
                            f"({words[0]!r}){_SPACED_HINT}")
        if words:
            out[names[c]] = sorted(cells)
    return out


def _read_npy(path: str, columns) -> Table:
    try:
        a = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"{path}: not a numeric .npy array ({exc})") from None
    if a.dtype.names is not None or not (np.issubdtype(a.dtype, np.number)
                                         or a.dtype == np.bool_) or np.iscomplexobj(a):
        raise DataError(f"{path}: non-numeric array of dtype {a.dtype}")
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise DataError(f"{path}: expected a 2-D array (rows x columns); got shape {a.shape}")
    names = [str(i) for i in range(a.shape[1])]
    idx = _select(names, columns, path)
    return Table(a[:, idx].astype(np.float64), [names[c] for c in idx],
                 [f"row {i}" for i in range(a.shape[0])])


def _read_parquet(path: str, columns) -> Table:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises its own error types
        raise DataError(f"{path}: cannot read as Parquet ({exc})") from None
    names = list(table.column_names)
    idx = _select(names, columns, path)
    cols = []
    for c in idx:
        col = table.column(c)
        try:
            values = col.to_numpy(zero_copy_only=False)
            values = np.asarray(values, dtype=np.float64)
        except (ValueError, TypeError):
            raise DataError(f"{path}: non-numeric column {names[c]!r} of type "
                            f"{col.type}") from None
        cols.append(values)
    X = np.stack(cols, axis=1) if cols else np.empty((table.num_rows, 0))
    return Table(X, [names[c] for c in idx], [f"row {i}" for i in range(table.num_rows)])


def read_table(path: str, *, columns: Sequence[str] | None = None,
               header: bool | None = None, min_rows: int = 2,
               allow_missing: bool = False, text=False) -> Table:
    """Read a numeric table: ``.npy``, ``.parquet``/``.pq`` (needs pyarrow), else CSV/TSV.

    Args:
      path: the file (only read, never written).
      columns: names or 0-based indices of the columns to use (default: all). Columns not
        selected may hold anything.
      header: CSV only; ``None`` detects a header: a first row with a non-numeric field above
        a column of numbers, or with no number at all.
      min_rows: fewer rows than this is an error.
      allow_missing: keep missing entries as NaN (for models that marginalise them); a row
        with no observed value in the selected columns is still an error.
      text: CSV only; ``True``: a column with a non-numeric cell is a column of text
        categories, read as the index of each cell's level (``Table.levels``, sorted); a dict
        ``{name: levels}``: those columns read with these levels (another value is an error);
        ``False``: numbers only.

    Blank lines of a CSV are skipped; a line of empty fields (``,,``) is a row of missing
    values, so rows stay aligned with the file's data lines. A last column with an empty name
    and no value (a delimiter ending every line) is not read.

    Raises:
      DataError: missing file, ragged or non-numeric table, unknown column, infinite values,
        NaN/missing values (:class:`MissingValuesError`; with ``allow_missing``, rows with
        nothing observed), naming the rows, or fewer than ``min_rows`` rows.
    """
    if not os.path.exists(path):
        raise DataError(f"no such file: {path}")
    if os.path.isdir(path):
        raise DataError(f"{path} is a directory, not a data file")
    ext = os.path.splitext(path)[1].lower()
    if isinstance(text, dict) and text and ext in (".npy", ".parquet", ".pq"):
        raise DataError(f"{path}: the model reads text columns {sorted(text)}, which only a CSV "
                        f"table holds")
    if ext == ".npy":
        table = _read_npy(path, columns)
    elif ext in (".parquet", ".pq"):
        table = _read_parquet(path, columns)
    else:
        try:
            table = _read_csv(path, columns, header, text)
        except UnicodeDecodeError as exc:
            line = exc.object[:exc.start].count(b"\n") + 1
            raise DataError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at line "
                            f"{line}); save the table as UTF-8, or as .npy or .parquet") from None
    X = table.X
    if X.shape[1] == 0:
        raise DataError(f"{path}: no columns selected")

    # infinities first: an error whatever is done with missing values
    bad = np.flatnonzero(np.isinf(X).any(axis=1))
    if bad.size:
        raise DataError(f"{path}: infinite values (or numbers too large for float64, like 1e400) "
                        f"in {bad.size} row(s): {row_names(table, bad)}")
    bad = np.flatnonzero(np.isnan(X).any(axis=1) & (not allow_missing))
    if bad.size:
        raise MissingValuesError(f"{path}: NaN or missing values in {bad.size} row(s): "
                                 f"{row_names(table, bad)}")
    empty = np.flatnonzero(np.all(np.isnan(X), axis=1) & allow_missing)
    if empty.size:
        raise DataError(f"{path}: no observed value in {empty.size} row(s) (every selected "
                        f"entry missing): {row_names(table, empty)}; drop them")
    if X.shape[0] < min_rows:
        raise DataError(f"{path}: too few rows: {X.shape[0]} (need at least {min_rows})")
    return table
