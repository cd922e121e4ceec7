"""Errors raised by tierflow. Each carries the offending value in its message.

Each kind of error has the command line's exit status for it (:class:`ExitCode`), so a
scheduler can tell bad data from a bad command from a service that is down.
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar


class ExitCode(IntEnum):
    """The ``tierflow`` command's exit statuses."""

    OK = 0
    DATA = 1  # the data failed its contract, a threshold (bad rows, drift) or a schema check
    USAGE = 2  # a bad command line, configuration or missing dependency
    SERVICE = 3  # a service (Kafka, Redis, Spark, Dask, Ray, object storage) unreachable
    FAILED = 4  # anything else went wrong (a bug comes with its traceback)
    INTERRUPTED = 130  # stopped by Ctrl-C


class TierflowError(Exception):
    """Base class of all tierflow errors."""

    exit_code: ClassVar[ExitCode] = ExitCode.FAILED


class ConfigError(TierflowError):
    """A configuration file is malformed: the message names the file, key and value."""

    exit_code = ExitCode.USAGE


class UsageError(TierflowError):
    """The command asks for something that cannot be done as asked."""

    exit_code = ExitCode.USAGE


class DataError(TierflowError):
    """The data failed a check it must pass (a contract, a threshold, a schema)."""

    exit_code = ExitCode.DATA


class MissingDependencyError(TierflowError):
    """Something tierflow needs is not installed; the message says how to install it."""

    exit_code = ExitCode.USAGE


class ServiceError(TierflowError):
    """A service could not be reached, started, checked or stopped."""

    exit_code = ExitCode.SERVICE


class PortInUseError(ServiceError):
    """A port a service needs is already taken by another process (a configuration clash)."""

    exit_code = ExitCode.USAGE
