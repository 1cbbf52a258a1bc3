"""A smaller MNIST-1D task for the demo: the same data, a CNN half as wide."""

from __future__ import annotations

from trials.tasks._mnist1d import Mnist1dTask


class Mnist1dSmallTask(Mnist1dTask):
    """MNIST-1D (4000 training / 1000 validation samples, as ``mnist1d``) with the 1D CNN at
    half its widths: 64/128/192 channels and 128 hidden units, ~0.5 M parameters and ~7 M
    multiply-adds per sample, a quarter of ``mnist1d``'s.

    It is the demo's task: the dense baseline trains 10 epochs in about half a minute on one
    core of the 2-core development machine and reaches ~94 %, short of saturation, so that
    pruning and low bit-widths cost accuracy visibly and the front trades accuracy against
    file size and latency. The data are ``mnist1d``'s, cached in the same place.
    """

    name = "mnist1d-small"
    baseline_epochs = 10
    baseline_lr = 1e-3
    baseline_batch_size = 64
    width_factor = 0.5
