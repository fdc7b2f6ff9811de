"""The ``DefaultRunner`` facade users hold, with its configuration, results and management APIs."""

from cloacina.runner.default_runner import DefaultRunner

__all__ = ["DefaultRunner"]
