"""Built-in tasks: examples of the Task interface and the embedded default."""

from trials.tasks._digits import DigitsTask
from trials.tasks._mnist1d import Mnist1dTask
from trials.tasks._mnist1d_large import Mnist1dLargeTask
from trials.tasks._mnist1d_small import Mnist1dSmallTask
from trials.tasks._transformer import TransformerLinearTask, TransformerTask

__all__ = [
    "DigitsTask",
    "Mnist1dLargeTask",
    "Mnist1dSmallTask",
    "Mnist1dTask",
    "TransformerLinearTask",
    "TransformerTask",
]
