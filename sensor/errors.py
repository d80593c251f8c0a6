"""One error root for the sensor, with a subclass per area; each renders as one clear line."""

from __future__ import annotations


class SensorError(Exception):
    """Root of every error the sensor reports to a user (exit code 2 at start-up)."""

    exit_code = 2


class ConfigError(SensorError):
    """A bad configuration: unknown key, bad address, unknown role, bad value.

    The message names the key and the file, so one line tells the user what to fix.
    """

    def __init__(self, message: str, *, key: str | None = None, source: str | None = None) -> None:
        self.key = key
        self.source = source
        where = ": ".join(part for part in (source, key) if part)
        super().__init__(f"{where}: {message}" if where else message)


class SourceError(SensorError):
    """A capture or log that cannot be read at all (missing, not a capture, unsupported link type)."""


class SinkError(SensorError):
    """The lake (or another sink) cannot be written."""
