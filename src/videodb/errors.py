"""The one exception tree. Library code raises these; only the CLI prints them and exits."""


class VideoDBError(Exception):
    """Root of every error this project raises on purpose.

    Messages say what failed, the value that was seen, and what to do next.
    """

    exit_code = 1


class ConfigError(VideoDBError):
    """The configuration is malformed or inconsistent."""

    exit_code = 2


class PrerequisiteError(VideoDBError):
    """Something must be installed or freed before the platform can start (binary, port)."""

    exit_code = 2


class ClusterError(VideoDBError):
    """The cluster did not reach or is not in the state a command needs."""


class NotRunningError(ClusterError):
    """A command needs the platform running and it is not."""

    exit_code = 3


class TimeoutExpired(ClusterError):
    """A deadline passed while waiting for the cluster to reach a state."""
