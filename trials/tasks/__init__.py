"""Built-in tasks: examples of the Task interface and the embedded default."""

from trials.tasks._digits import DigitsTask
from trials.tasks._mnist1d import Mnist1dTask

__all__ = ["DigitsTask", "Mnist1dTask"]
