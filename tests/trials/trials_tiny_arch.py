"""Tiny models of the architecture families users bring, on the digits images (1 x 8 x 8):
a ResNet-style network (BatchNorm, residual adds, a projection shortcut), a MobileNetV2-style
network (depthwise convolutions, inverted residuals, ReLU6), GRU / LSTM classifiers that read
the image as a sequence of 8 rows, and a network whose weights are reparametrized (weight norm,
spectral norm), as audio and GAN-style models have them."""

from __future__ import annotations

import warnings

from torch import Tensor, nn
from torch.nn.utils import parametrizations, spectral_norm, weight_norm

from trials import DigitsTask, Task


def conv_bn(cin: int, cout: int, k: int = 3, *, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    )


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 conv + BN, added to the input (or its 1x1 projection)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.conv2 = conv_bn(cin, cout, stride=stride), conv_bn(cout, cout)
        self.shortcut = (
            conv_bn(cin, cout, 1, stride=stride) if stride != 1 or cin != cout else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        return (self.conv2(self.conv1(x).relu()) + self.shortcut(x)).relu()


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand, 3x3 depthwise, 1x1 linear projection, residual add."""

    def __init__(self, dim: int, expand: int) -> None:
        super().__init__()
        hidden = dim * expand
        self.body = nn.Sequential(
            conv_bn(dim, hidden, 1),
            nn.ReLU6(),
            conv_bn(hidden, hidden, 3, groups=hidden),
            nn.ReLU6(),
            conv_bn(hidden, dim, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class _Digits(Task):
    baseline_epochs = 2
    baseline_lr = 3e-3
    baseline_batch_size = 32

    def __init__(self) -> None:
        self._digits = DigitsTask()

    def train_data(self) -> tuple[Tensor, Tensor]:
        x, y = self._digits.train_data()
        return x[:400], y[:400]

    def val_data(self) -> tuple[Tensor, Tensor]:
        x, y = self._digits.val_data()
        return x[:200], y[:200]


class TinyResNet(_Digits):
    name = "tiny-resnet"

    def build_model(self) -> nn.Module:
        return nn.Sequential(
            conv_bn(1, 16),
            nn.ReLU(),
            BasicBlock(16, 16),
            BasicBlock(16, 32, stride=2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(32, 10),
        )


class TinyMobileNet(_Digits):
    name = "tiny-mobilenet"

    def build_model(self) -> nn.Module:
        return nn.Sequential(
            conv_bn(1, 16),
            nn.ReLU6(),
            InvertedResidual(16, 2),
            InvertedResidual(16, 2),
            conv_bn(16, 32, 1),
            nn.ReLU6(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(32, 10),
        )


class RecurrentClassifier(nn.Module):
    """Reads the 8 image rows as a sequence; classifies from the last hidden state."""

    def __init__(self, kind: type[nn.GRU] | type[nn.LSTM], hidden: int = 32) -> None:
        super().__init__()
        self.rnn = kind(8, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x.flatten(1, 2))
        return self.head(out[:, -1])


class TinyGRU(_Digits):
    name = "tiny-gru"

    def build_model(self) -> nn.Module:
        return RecurrentClassifier(nn.GRU)


class TinyLSTM(_Digits):
    name = "tiny-lstm"

    def build_model(self) -> nn.Module:
        return RecurrentClassifier(nn.LSTM)


class TinyWeightNorm(_Digits):
    """Weight norm as a parametrization (``parametrizations.weight_norm``) and in the older
    hook form (``weight_norm``), and spectral norm (hook form)."""

    name = "tiny-weight-norm"

    def build_model(self) -> nn.Module:
        with warnings.catch_warnings():  # the hook forms are deprecated, and still in use
            warnings.simplefilter("ignore", FutureWarning)
            return nn.Sequential(
                parametrizations.weight_norm(nn.Conv2d(1, 16, 3, padding=1)),
                nn.ReLU(),
                weight_norm(nn.Conv2d(16, 16, 3, padding=1)),
                nn.ReLU(),
                nn.Flatten(),
                spectral_norm(nn.Linear(16 * 64, 32)),
                nn.ReLU(),
                nn.Linear(32, 10),
            )
