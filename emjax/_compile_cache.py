"""The opt-in disk cache of compiled programs (JAX's persistent compilation cache), shared by the
library and the command line: a library does not write to the user's disk unless asked."""

from __future__ import annotations

import os

#: Programs compiling faster than this are not written (JAX's default, 1 s, would skip most
#: small fits once they compile quickly).
MIN_COMPILE_SECONDS = 0.1


def default_directory() -> str:
    """``$EMJAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/emjax/xla``, else ``~/.cache/emjax/xla``."""
    return os.environ.get("EMJAX_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "emjax", "xla")


def enable_disk_cache(directory: str | None = None) -> str | None:
    """Keep compiled programs on disk, so a new process skips XLA compilation of programs an
    earlier run (of any emjax entry point) compiled: ``emjax.fit``, the estimator, selection.

    Off by default in the library; the ``emjax`` command line turns it on (``--no-compile-cache``
    turns it off). It sets JAX's process-wide ``jax_compilation_cache_dir``, so it applies to
    every program compiled afterwards in this process, emjax's or not.

    Args:
      directory: where to keep programs (default :func:`default_directory`).

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
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return directory
