"""Writing files safely: whole or not at all, never through a symlink, never over an input."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile

import numpy as np


def _new_file_mode(path: str) -> int:
    """The permission bits ``open(path, "w")`` would give: an existing regular file's own, else
    ``0o666`` less the umask (a temporary file starts at ``0o600``)."""
    try:
        st = os.lstat(path)
        if not os.path.islink(path):
            return st.st_mode & 0o777
    except FileNotFoundError:
        pass
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb", **open_kwargs):
    """Open a temporary file beside ``path`` for writing; on success it replaces ``path``.

    ``os.replace`` swaps the directory entry in one step, so readers see the old file or the
    new one, never a partial one, and a failure leaves ``path`` as it was and no temporary file
    behind. A symlink at ``path`` is replaced by the new file; its target is not written.

    Yields:
      The open file object (text or binary, per ``mode``).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                               dir=directory)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _new_file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def npz_path(path) -> str:
    """The file a model saved to ``path`` goes to: ``path`` with ``.npz`` appended if missing.
    Raises ``ValueError`` when ``path`` is a directory (appending would write a sibling file
    named after it) or names one."""
    given = os.fspath(path)
    out = given if given.endswith(".npz") else f"{given}.npz"
    for p in (given, out):
        if os.path.isdir(p):
            raise ValueError(f"cannot save the model to {p}: it is a directory; give a file name "
                             f"(e.g. {os.path.join(p, 'model.npz')})")
    return out


def same_file(a: str, b: str) -> bool:
    """Whether paths ``a`` and ``b`` name the same existing file (through links, ``..``, case)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def not_npz(path: str) -> str | None:
    """What ``path`` is when it is not an ``.npz`` (zip) or ``.npy`` file, read from its first
    bytes, else None: ``np.load`` would try to unpickle a text file and speak of pickles."""
    with open(path, "rb") as fh:
        head = fh.read(6)
    if head[:2] == b"PK" or head == b"\x93NUMPY":
        return None
    return "an empty file" if not head else "not an .npz archive (a text or other file?)"


def read_npz_with_metadata(path: str, kind: str, fmt: str, fmt_version: int):
    """The arrays and JSON metadata of an ``.npz`` model file of format ``fmt`` (``kind`` names
    it in errors): ``(arrays, metadata)``.

    Raises:
      FileNotFoundError: no such file.
      ValueError: not such a file, or a format version newer than ``fmt_version``.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such model file: {path}")
    try:
        problem = not_npz(path)
        if problem:
            raise ValueError(f"it is {problem}")
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: f[name] for name in f.files}
        metadata = json.loads(str(arrays["metadata"][()]))
    except (OSError, EOFError, ValueError, KeyError) as exc:
        raise ValueError(f"{path} is not an emjax {kind} file ({exc})") from None
    if metadata.get("format") != fmt:
        raise ValueError(f"{path} is not an emjax {kind} file "
                         f"(format {metadata.get('format')!r})")
    if metadata.get("format_version", 0) > fmt_version:
        raise ValueError(f"{path} has format version {metadata['format_version']}; this emjax "
                         f"reads up to {fmt_version}")
    return arrays, metadata
