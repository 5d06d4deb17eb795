"""`GemsError`: the base of every error gems reports as one line (the CLI maps each to a message and an exit code)."""

from __future__ import annotations


class GemsError(Exception):
    """An error whose message is one line saying what was wrong and how to fix it.

    `exit_code` is what the CLI exits with: 2 for bad input the user can correct (config, arguments, files),
    1 for a failure while running (an endpoint, the store, the generator).
    """

    exit_code = 1


class ConfigError(GemsError, ValueError):
    """A configuration file or value is invalid; the message is one line naming what to fix."""

    exit_code = 2


class UsageError(GemsError, ValueError):
    """Bad command-line or request input."""

    exit_code = 2
