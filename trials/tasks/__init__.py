"""Built-in tasks: examples of the Task interface and the embedded default."""

from trials.tasks._digits import DigitsTask

__all__ = ["DigitsTask"]
