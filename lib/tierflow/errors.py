"""Errors raised by tierflow. Each carries the offending value in its message."""

from __future__ import annotations


class TierflowError(Exception):
    """Base class of all tierflow errors."""


class ConfigError(TierflowError):
    """A configuration file is malformed: the message names the file, key and value."""


class MissingDependencyError(TierflowError):
    """Something tierflow needs is not installed; the message says how to install it."""


class ServiceError(TierflowError):
    """A local service could not be started, checked or stopped."""


class PortInUseError(ServiceError):
    """A port a service needs is already taken by another process."""
