"""Exceptions raised by semtrack.

Every problem with a user's files or data is a :class:`SemtrackError`; its
message names the file (when there is one) and what was wrong, so the CLI can
print it as one line without a traceback. Programming errors (wrong argument
types, impossible parameter values) stay ``TypeError`` / ``ValueError``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "SemtrackError",
    "ReadError",
    "MetadataError",
    "TimeParseError",
    "RegistrationError",
    "SegmentationError",
    "ConfigError",
    "OutputError",
]


class SemtrackError(Exception):
    """Base class of every data or file problem semtrack reports.

    Parameters
    ----------
    message : str
        What went wrong and, where possible, what to do about it.
    path : str or Path, optional
        The file concerned; it is prefixed to the message.
    """

    def __init__(self, message: str, *, path: str | Path | None = None):
        self.path = Path(path) if path is not None else None
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)

    def __reduce__(self):
        # Keep keyword-only `path` through pickling (Dask ships exceptions between processes).
        return (_rebuild, (type(self), self.message, self.path))


def _rebuild(cls, message, path):
    return cls(message, path=path)


class ReadError(SemtrackError, ValueError):
    """A file cannot be read as an SEM image, or a series is inconsistent."""


class MetadataError(SemtrackError, ValueError):
    """Calibration or acquisition metadata is missing, malformed or contradictory."""


class TimeParseError(SemtrackError, ValueError):
    """Exposure times cannot be determined, or are duplicated."""


class RegistrationError(SemtrackError):
    """A frame cannot be aligned to the reference (no overlap, another area)."""


class SegmentationError(SemtrackError):
    """Phases cannot be separated (e.g. a constant image), or a model does not fit."""


class ConfigError(SemtrackError, ValueError):
    """A configuration file or option is invalid."""


class OutputError(SemtrackError):
    """Results cannot be written (unwritable folder, disk full)."""
