"""Errors with a message that names the thing and the fix.

All derive from :class:`ClipOODError` so that scripts can catch the package's own failures.
"""


class ClipOODError(Exception):
    """Base class of the package's errors."""


class MirrorError(ClipOODError, FileNotFoundError):
    """The dataset mirror folder or one of its archives is missing."""


class ChecksumMismatchError(ClipOODError, ValueError):
    """A mirror archive does not match the checksum recorded in ``SHA256SUMS``."""


class DatasetNotPreparedError(ClipOODError, FileNotFoundError):
    """A dataset was asked for but is not present in the data folder."""


class UnknownDatasetError(ClipOODError, KeyError):
    """A dataset name that is neither registered nor an ImageFolder directory."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class UnknownClassError(ClipOODError, KeyError):
    """A class folder asked for (``classes=`` / ``exclude=``) that the dataset does not have."""

    def __str__(self) -> str:
        return str(self.args[0])


class ClassNameMismatchError(ClipOODError, ValueError):
    """The number of class names differs from the number of class folders."""


class CorruptImageError(ClipOODError, OSError):
    """An image file could not be decoded."""


class UnknownModelError(ClipOODError, ValueError):
    """An unknown open_clip architecture or pretrained tag."""


class WeightsUnavailableError(ClipOODError, RuntimeError):
    """Pretrained weights are not cached locally and cannot be downloaded."""


class DamagedCheckpointError(ClipOODError, ValueError):
    """A local checkpoint file that does not read (cut short, overwritten, not a checkpoint)."""


class NonFiniteError(ClipOODError, ValueError):
    """NaN or infinite values in features or scores."""


class EmptyClassError(ClipOODError, ValueError):
    """A class folder of an ImageFolder dataset holds no image."""


class UsageError(ClipOODError, ValueError):
    """A command-line or parameter mistake (unknown notebook, unknown parameter, malformed value)."""


def clause(message: object) -> str:
    """``message`` without its closing period, to be embedded in a longer sentence (so that
    ``f"...: {clause(e)}. Fix: ..."`` never reads ``..``); an ellipsis is kept."""
    text = str(message).rstrip()
    if text.endswith(".") and not text.endswith("..."):
        text = text[:-1]
    return text
