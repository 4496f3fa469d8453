"""Errors a user can cause and fix; the command line prints them without a traceback."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data or options: a file, a line or a setting that must change.

    The message names the file (and line or column where known), what was expected and what was
    found. Command-line entry points print it and exit with status 2.
    """


class TrainingDiverged(RuntimeError):
    """A fit whose loss became NaN or infinite: the message names the step, the learning rate and
    what to try. Command-line entry points print it and exit with status 1."""
