"""The one error type a user is meant to see: a flag or an input they must fix."""

from __future__ import annotations


class ConfigError(ValueError):
    """A flag or input the user must fix; the CLI prints it on one line and exits with 2."""
