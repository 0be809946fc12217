"""The opt-in disk cache of compiled programs (JAX's persistent compilation cache), shared by the
library and the command line: a library does not write to the user's disk unless asked."""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import os
import tempfile
import threading

#: Programs compiling faster than this are not written (JAX's default, 1 s, would skip most
#: small fits once they compile quickly).
MIN_COMPILE_SECONDS = 0.1

#: Default bound of the store of whole programs (:func:`executable_directory`): past it, the
#: programs used least recently are deleted (each emjax version writes programs of its own).
MAX_STORE_BYTES = 2**30
_store_limit = {"bytes": MAX_STORE_BYTES}

#: A temporary file of the store older than this is a write that never finished (a killed
#: process): it is deleted.
STALE_TMP_SECONDS = 3600.0

#: Hex digits of a program's fingerprint in its file name (``{name}-{digest}.pkl``).
_NAME_DIGEST = 40


@contextlib.contextmanager
def gc_paused():
    """Python's cyclic garbage collector paused (then restored): tracing and lowering a fit
    allocate so many objects that the full collections they trigger took a third of the trace
    time (docs/performance.md). Reference counting still frees everything acyclic."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def default_directory() -> str:
    """``$EMJAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/emjax/xla``, else ``~/.cache/emjax/xla``."""
    return os.environ.get("EMJAX_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "emjax", "xla")


def enable_disk_cache(directory: str | None = None, *,
                      max_bytes: int = MAX_STORE_BYTES) -> str | None:
    """Keep compiled programs on disk, so a new process skips XLA compilation of programs an
    earlier run (of any emjax entry point) compiled: ``emjax.fit``, the estimator, selection.

    Off by default in the library; the ``emjax`` command line turns it on (``--no-compile-cache``
    turns it off). It sets JAX's process-wide ``jax_compilation_cache_dir``, so it applies to
    every program compiled afterwards in this process, emjax's or not. emjax's fitting programs
    (small :func:`emjax.fit` fits and the estimator's, selection grids, the failure-mode,
    family and missing-value fits) are also kept whole in its ``emjax-executables``
    sub-directory (:func:`load_or_compile`): a new process loads them without tracing.

    Args:
      directory: where to keep programs (default :func:`default_directory`).
      max_bytes: the bound of emjax's store of whole programs: once it is passed, the programs
        used least recently are deleted (only files the store wrote itself). JAX's own cache
        in ``directory`` is JAX's (``jax_compilation_cache_max_size``).

    Returns:
      The directory used, or None when it cannot be created (e.g. a read-only home): then
      nothing is cached.

    Examples:
      >>> import emjax
      >>> emjax.enable_disk_cache()  # doctest: +SKIP
      '/home/me/.cache/emjax/xla'
    """
    import jax

    directory = default_directory() if directory is None else os.fspath(directory)
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
        raise ValueError(f"max_bytes must be an int >= 0, got {max_bytes!r}")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError:
        return None
    _store_limit["bytes"] = max_bytes
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return directory


#: Sub-directory of JAX's compilation cache directory that holds emjax's whole compiled fits.
EXECUTABLES = "emjax-executables"


def executable_directory() -> str | None:
    """Where :func:`load_or_compile` keeps compiled programs: ``emjax-executables`` inside JAX's
    compilation cache directory (set by :func:`enable_disk_cache`), or None when that is off."""
    import jax

    directory = jax.config.jax_compilation_cache_dir
    return os.path.join(directory, EXECUTABLES) if directory else None


#: JAX options that change what is logged or cached, never a compiled program.
_NOT_IN_PROGRAMS = ("jax_log_compiles", "jax_explain_cache_misses", "jax_compilation_cache",
                    "jax_persistent_cache", "jax_traceback", "jax_logging", "jax_debug_log")


def _environment() -> str:
    """Everything outside a program's arguments that its compiled form depends on: emjax's own
    source, JAX's version and configuration, the backend and the XLA flags."""
    import jax

    # read at every call: the configuration changes in a process (jax.enable_x64, config.update)
    configuration = repr(sorted((k, v) for k, v in jax.config.values.items()
                                if not k.startswith(_NOT_IN_PROGRAMS)))
    return repr((_build(), configuration))


@functools.lru_cache(maxsize=1)
def _build() -> tuple:
    """What stays fixed in a process: emjax's source, JAX's version, the backend, the flags."""
    import jax
    import jaxlib

    digest = hashlib.sha256()
    package = os.path.dirname(os.path.abspath(__file__))
    for root, dirs, files in os.walk(package):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                digest.update(name.encode())
                with open(os.path.join(root, name), "rb") as f:
                    digest.update(f.read())
    client = jax.devices()[0].client
    parts = (digest.hexdigest(), jax.__version__, jaxlib.__version__, client.platform,
             client.platform_version, repr(jax.devices()), _host_cpu(),
             os.environ.get("XLA_FLAGS", ""), os.environ.get("LIBTPU_INIT_ARGS", ""))
    return parts


def _host_cpu() -> str:
    """The host CPU's model and instruction-set features: XLA:CPU compiles for them, so a cache
    shared between machines (a home directory on a cluster) must not hand one's code to the
    other, which might not run it."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags", "Features"))]
        info = "".join(sorted(set(lines)))
    except OSError:  # not Linux
        info = ""
    return hashlib.sha256((platform.machine() + platform.processor() + info).encode()
                          ).hexdigest()[:16]


def _fingerprint(jitted, args: tuple, static: dict, options: tuple = ()) -> str | None:
    """A digest of everything the compiled ``jitted(*args, **static)`` depends on, or None when
    a static value has no stable text (e.g. a function: its address changes between runs).
    ``options``: the XLA compiler options ``jitted`` was made with."""
    import jax

    leaves, tree = jax.tree_util.tree_flatten(args)
    avals = []
    for leaf in leaves:
        # jax.ShapeDtypeStruct (a program compiled before its input exists) is its own aval
        aval = leaf if isinstance(leaf, jax.ShapeDtypeStruct) else jax.typeof(leaf)
        avals.append((aval.shape, str(aval.dtype), bool(getattr(aval, "weak_type", False))))
    text = repr((_environment(), getattr(jitted, "__qualname__", repr(jitted)),
                 getattr(jitted, "__module__", ""), str(tree), avals,
                 sorted(static.items()), tuple(options)))
    if " at 0x" in text:
        return None
    return hashlib.sha256(text.encode()).hexdigest()


def _initialize_lapack() -> None:
    """Point jaxlib's CPU LAPACK kernels at their LAPACK routines, as lowering a linear-algebra
    operation does: a program loaded without lowering anything would otherwise call a null
    routine (a segmentation fault) in a new process. ``jax.export`` does the same on loading."""
    from jax._src.lax import linalg

    linalg.initialize_lapack()


def _register_targets() -> None:
    """Register the progress report's FFI target (done when a program using it is traced): a
    program loaded without tracing finds its custom call by name when it is loaded."""
    import jax

    if jax.default_backend() == "cpu":
        from emjax import progress

        progress._ffi_target()


_JAX_CACHE_HITS = threading.local()


def _count_jax_cache_hits(event: str, **kwargs) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        _JAX_CACHE_HITS.count = getattr(_JAX_CACHE_HITS, "count", 0) + 1


@functools.lru_cache(maxsize=1)
def _listen_for_jax_cache_hits() -> None:
    import jax

    jax.monitoring.register_event_listener(_count_jax_cache_hits)


def compile_lowered(lowered, kept: bool = False):
    """``lowered`` compiled, and whether XLA compiled it here (False: JAX's own disk cache had
    it; counted in the thread that compiles). ``kept``: the program goes to a :class:`Slot`,
    so JAX's disk cache gets no copy of it (:func:`_no_jax_copy`). jaxlib re-serialises a
    program it loaded from disk without all of its kernels: a new process that loaded such a
    copy would fail with ``Function ... not found``."""
    _listen_for_jax_cache_hits()
    before = getattr(_JAX_CACHE_HITS, "count", 0)
    with _no_jax_copy() if kept else contextlib.nullcontext():
        compiled = lowered.compile()
    return compiled, getattr(_JAX_CACHE_HITS, "count", 0) == before


def _no_jax_copy():
    """JAX's disk cache not written in this thread: a program kept whole here needs no second
    copy, which cost a first fit 0.1-0.2 s to serialise and write (docs/performance.md). It is
    still read (an older copy is used, and then not written here)."""
    try:
        from jax._src import config  # the setting is public; its per-thread form is not
    except ImportError:
        return contextlib.nullcontext()
    setting = getattr(config, "persistent_cache_min_compile_time_secs", None)
    return setting(float("inf")) if callable(setting) else contextlib.nullcontext()


class Slot:
    """A program's place in the store of :func:`executable_directory`: :attr:`compiled` when it
    was held or could be loaded, else None until :meth:`keep` is given it."""

    def __init__(self, compiled, path: str, fingerprint: str, memo: dict):
        self.compiled, self.path, self.fingerprint, self.memo = compiled, path, fingerprint, memo

    def keep(self, compiled, fresh: bool, submit=None):
        """Hold ``compiled`` and, when XLA compiled it here, write it atomically (by
        ``submit(fn)``, e.g. an executor's, when given: off this thread); returns it."""
        self.compiled = self.memo[self.fingerprint] = compiled
        if fresh:
            (submit or (lambda fn: fn()))(functools.partial(self._write, compiled))
        return compiled

    def _write(self, compiled) -> None:
        import pickle

        from jax.experimental import serialize_executable

        tmp = None
        try:
            blob = pickle.dumps(serialize_executable.serialize(compiled))
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.path), prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            os.replace(tmp, self.path)
        except Exception:  # not serialisable here, or a read-only directory: kept in memory
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
            return
        trim_store(os.path.dirname(self.path), _store_limit["bytes"], keep=self.path)


def _is_program(name: str) -> bool:
    """Whether ``name`` is a program file of the store (``{name}-{fingerprint}.pkl``)."""
    stem, _, digest = name[:-4].rpartition("-")
    return name.endswith(".pkl") and bool(stem) and len(digest) == _NAME_DIGEST and all(
        c in "0123456789abcdef" for c in digest)


def trim_store(directory: str, max_bytes: int, keep: str | None = None,
               now: float | None = None) -> list[str]:
    """Delete the store's unfinished temporary files older than :data:`STALE_TMP_SECONDS`, and
    then its programs used least recently (oldest modification time: a load touches it) until
    the programs total at most ``max_bytes``; ``keep`` (the file just written) is never deleted.
    Only the store's own files are looked at. Returns the paths deleted. Failures (a file
    another process deleted first, a read-only directory) are skipped."""
    import time

    now = time.time() if now is None else now
    deleted, programs = [], []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return deleted
    for entry in entries:
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            st = entry.stat(follow_symlinks=False)
            if entry.name.startswith(".tmp-"):
                if now - st.st_mtime > STALE_TMP_SECONDS:
                    os.unlink(entry.path)
                    deleted.append(entry.path)
            elif _is_program(entry.name):
                programs.append((st.st_mtime, st.st_size, entry.path))
        except OSError:
            continue
    total = sum(size for _, size, _ in programs)
    for _, size, path in sorted(programs):
        if total <= max_bytes:
            break
        if keep is not None and os.path.abspath(path) == os.path.abspath(keep):
            continue
        try:
            os.unlink(path)
        except OSError:
            continue
        deleted.append(path)
        total -= size
    return deleted


def lookup(jitted, args: tuple, static: dict, memo: dict, name: str,
           options: tuple = ()) -> Slot | None:
    """The :class:`Slot` of ``jitted(*args, **static)``: from ``memo``, else loaded from
    :func:`executable_directory`, else empty; None when the disk cache is off or the program
    cannot be kept. ``options``: the XLA compiler options ``jitted`` carries (part of the key).

    JAX's own disk cache keys a program by its lowered text, so a new process still traces and
    lowers the program before finding it; this one keys it by the inputs' shapes, the static
    arguments and the environment, so a new process only loads it. The files are written
    atomically and are compiled code: keep the directory private to you.
    """
    directory = executable_directory()
    if directory is None:
        return None
    try:
        fingerprint = _fingerprint(jitted, args, static, options)
    except TypeError:
        return None
    if fingerprint is None:
        return None
    path = os.path.join(directory, f"{name}-{fingerprint[:_NAME_DIGEST]}.pkl")
    if fingerprint in memo:
        return Slot(memo[fingerprint], path, fingerprint, memo)
    import pickle

    from jax.experimental import serialize_executable

    compiled = None
    try:
        with open(path, "rb") as f:
            raw = f.read()
        _register_targets()
        compiled = serialize_executable.deserialize_and_load(*pickle.loads(raw))
        if b"lapack" in raw:  # calls jaxlib's LAPACK kernels, by name (initialising: 0.13 s)
            _initialize_lapack()
        memo[fingerprint] = compiled
        try:
            os.utime(path)  # used now: the store deletes the least recently used first
        except OSError:
            pass
    except Exception:  # absent, unreadable or from an incompatible build: compile it again
        compiled = None
    return Slot(compiled, path, fingerprint, memo)


def load_or_compile(jitted, args: tuple, static: dict, memo: dict, name: str,
                    options: tuple = ()):
    """The compiled ``jitted(*args, **static)`` (call it with ``*args``) from its
    :func:`lookup` slot, compiled and kept there when it is empty; None when the disk cache is
    off or the program cannot be kept (the caller then calls ``jitted``)."""
    slot = lookup(jitted, args, static, memo, name, options)
    if slot is None or slot.compiled is not None:
        return None if slot is None else slot.compiled
    with gc_paused():
        return slot.keep(*compile_lowered(jitted.lower(*args, **static), kept=True))
