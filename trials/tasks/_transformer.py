"""The built-in Transformer tasks: a sequence classifier with token embeddings, two encoder blocks
(multi-head attention, LayerNorm, a GELU MLP) and a classification head, on generated token
sequences whose label depends on token interactions (attention has to find matching tokens)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from trials._task import Split, SplitTask

VOCAB = 16
SEQ_LEN = 24
CLASSES = 4
_SPLIT_SEED = 20261130
_TRAIN, _VAL = 6000, 1000
_LABEL_NOISE = 0.04  # labels replaced by a random class: accuracy stays below saturation


def counting_sequences(n: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` token sequences and labels: position 0 holds a query token ``q``; the label is how
    many of the other ``SEQ_LEN - 1`` positions hold ``q`` (0 to ``CLASSES - 1``, uniform), the
    rest are random tokens other than ``q``. A fraction ``_LABEL_NOISE`` of the labels is then
    replaced by a random class. Deterministic in ``seed``; generated in milliseconds."""
    rng = np.random.default_rng(seed)
    query = rng.integers(0, VOCAB, size=n)
    count = rng.integers(0, CLASSES, size=n)
    others = rng.integers(0, VOCAB - 1, size=(n, SEQ_LEN - 1))
    others = others + (others >= query[:, None])  # any token but the query
    for i in range(n):
        slots = rng.choice(SEQ_LEN - 1, size=count[i], replace=False)
        others[i, slots] = query[i]
    tokens = np.concatenate([query[:, None], others], axis=1)
    labels = count.copy()
    noisy = rng.random(n) < _LABEL_NOISE
    labels[noisy] = rng.integers(0, CLASSES, size=int(noisy.sum()))
    return tokens.astype(np.float32), labels.astype(np.int64)


class LinearSelfAttention(nn.Module):
    """Multi-head self-attention written by hand, as many users do: q/k/v/out ``nn.Linear``,
    heads split with ``view(B, T, heads, head_dim)``."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim)
        return self.out(y)


class LinearBlock(nn.Module):
    """A pre-norm encoder block like ``nn.TransformerEncoderLayer``, on ``LinearSelfAttention``."""

    def __init__(self, dim: int, num_heads: int, hidden: int) -> None:
        super().__init__()
        self.attn = LinearSelfAttention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class SequenceClassifier(nn.Module):
    """Token and position embeddings, encoder blocks, a Linear head on the first position (where
    the query token sits). Inputs are
    token ids as floats (slimtune's tasks feed float tensors), cast to int64 here."""

    def __init__(self, blocks: nn.Module, dim: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, dim)
        self.pos = nn.Parameter(torch.randn(1, SEQ_LEN, dim) * 0.02)
        self.blocks = blocks
        self.head = nn.Linear(dim, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        h = self.emb(x.long()) + self.pos
        return self.head(self.blocks(h)[:, 0])


class TransformerTask(SplitTask):
    """Counting matches in token sequences (``counting_sequences``: ``SEQ_LEN`` (24) tokens of a
    ``VOCAB`` (16)-token vocabulary, ``CLASSES`` (4) classes, 6000 training and 1000 validation
    sequences generated from a fixed seed, no download) with a 2-block Transformer encoder
    (d_model 256, 8 heads, MLP 1024, ~1.6 M parameters; batch-1 fp32 latency about 0.9 ms on one
    ONNX Runtime thread) built from ``nn.TransformerEncoderLayer`` (``nn.MultiheadAttention``).
    4 % of the labels are random, so accuracy saturates below 97 %.

    ``transformer-linear`` (``TransformerLinearTask``) is the same network with hand-written
    attention on ``nn.Linear``."""

    name = "transformer"
    baseline_epochs = 16
    baseline_lr = 1e-3
    baseline_batch_size = 64
    dim, heads, hidden, depth = 256, 8, 1024, 2

    def build_model(self) -> nn.Module:
        layer = nn.TransformerEncoderLayer(
            self.dim,
            self.heads,
            self.hidden,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        encoder = nn.TransformerEncoder(layer, self.depth, enable_nested_tensor=False)
        return SequenceClassifier(encoder, self.dim)

    def make_split(self) -> Split:
        x, y = counting_sequences(_TRAIN + _VAL, seed=_SPLIT_SEED)
        return (
            torch.from_numpy(x[:_TRAIN]),
            torch.from_numpy(y[:_TRAIN]),
            torch.from_numpy(x[_TRAIN:]),
            torch.from_numpy(y[_TRAIN:]),
        )


class TransformerLinearTask(TransformerTask):
    """``transformer`` with hand-written attention: q/k/v/out ``nn.Linear`` and
    ``view(B, T, heads, head_dim)`` (``LinearSelfAttention``)."""

    name = "transformer-linear"

    def build_model(self) -> nn.Module:
        blocks = nn.Sequential(
            *(LinearBlock(self.dim, self.heads, self.hidden) for _ in range(self.depth))
        )
        return SequenceClassifier(blocks, self.dim)
