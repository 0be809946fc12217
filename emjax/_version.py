"""The package version, in one place: ``emjax.__version__``, the saved files' metadata and
the packaging metadata (pyproject's dynamic version) all read it."""

__version__ = "0.1.0"
