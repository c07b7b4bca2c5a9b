"""Project exceptions. Each names the file, row or id it is about and why it failed."""

from __future__ import annotations


class ReidError(Exception):
    """Base class of every error comic-reid raises on purpose."""


class DataFormatError(ReidError, ValueError):
    """An input file (CSV, JSON, image, Parquet) breaks the format of docs/DATA.md."""

    def __init__(self, source: str, reason: str, where: str | None = None) -> None:
        self.source = source
        self.where = where
        self.reason = reason
        location = f"{source}, {where}" if where else source
        super().__init__(f"{location}: {reason}")

    def __reduce__(self):  # picklable across Ray processes (the default would call __init__(message))
        return (self.__class__, (self.source, self.reason, self.where))


class ConfigError(ReidError, ValueError):
    """A configuration value is invalid; raised before any work starts."""


class CheckpointError(ReidError):
    """A checkpoint is missing, unreadable, or does not match the requested model."""


class NonFiniteLossError(ReidError, FloatingPointError):
    """Training produced a NaN/inf loss; not retried."""


class WorkUnitLostError(ReidError):
    """A work unit's process died every time it ran (killed for memory, its node lost) and its retries are used
    up: the job stops with the units that were not committed named, instead of re-running them for ever."""
