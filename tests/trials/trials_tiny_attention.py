"""Tiny attention models for the trials tests: sequences shaped like the built-in Transformer
task's, on small networks of the two attention kinds users write, plus a GPT-style block
whose attention keeps its head count as ``n_head`` with one fused ``c_attn`` projection."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from trials import Task
from trials.tasks._transformer import CLASSES, SEQ_LEN, VOCAB, LinearBlock, SequenceClassifier


class FusedAttention(nn.Module):
    """nanoGPT-like attention: one ``c_attn`` Linear for q, k, v and ``c_proj`` out."""

    def __init__(self, dim: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(dim, 3 * dim)
        self.c_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        q, k, v = self.c_attn(x).chunk(3, dim=-1)
        q, k, v = (z.view(b, t, self.n_head, -1).transpose(1, 2) for z in (q, k, v))
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
        return self.c_proj((att @ v).transpose(1, 2).reshape(b, t, -1))


class FusedBlock(nn.Module):
    def __init__(self, dim: int, n_head: int, hidden: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = FusedAttention(dim, n_head)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class HeadsBlock(nn.Module):
    """A block that keeps the head count itself: q/k/v/o ``nn.Linear`` children, the MLP in an
    ``nn.Sequential`` beside them; with ``gated``, also a per-head gate (a nested Linear whose
    outputs are the heads) that the attention reads by head."""

    def __init__(self, dim: int, n_heads: int, hidden: int, *, gated: bool = False) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.gate = nn.Sequential(nn.Linear(dim, n_heads), nn.Sigmoid()) if gated else None

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        h = self.norm1(x)
        q, k, v = (
            m(h).view(b, t, self.n_heads, -1).transpose(1, 2) for m in (self.q, self.k, self.v)
        )
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1) @ v
        if self.gate is not None:
            att = att * self.gate(h).transpose(1, 2).unsqueeze(-1)
        x = x + self.o(att.transpose(1, 2).reshape(b, t, -1))
        return x + self.mlp(self.norm2(x))


def tiny_sequences(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Random token sequences of the Transformer task's shape; the label is the class of the
    token at position 1 (``token % CLASSES``), read out at position 0: attention must move it."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (n, SEQ_LEN), generator=generator)
    return tokens.float(), tokens[:, 1] % CLASSES


class _TinyAttention(Task):
    baseline_epochs = 8
    baseline_lr = 3e-3
    baseline_batch_size = 32
    dim, heads, hidden = 32, 4, 64

    def train_data(self) -> tuple[Tensor, Tensor]:
        return tiny_sequences(1000, seed=1)

    def val_data(self) -> tuple[Tensor, Tensor]:
        return tiny_sequences(300, seed=2)


class TinyMHA(_TinyAttention):
    """2 ``nn.TransformerEncoderLayer`` blocks (``nn.MultiheadAttention``), post-norm, ReLU."""

    name = "tiny-mha"

    def build_model(self) -> nn.Module:
        layer = nn.TransformerEncoderLayer(
            self.dim, self.heads, self.hidden, dropout=0.0, batch_first=True
        )
        return SequenceClassifier(
            nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), self.dim
        )


class TinyLinearAttention(_TinyAttention):
    """2 hand-written attention blocks: q/k/v/out nn.Linear, view(B, T, heads, head_dim)."""

    name = "tiny-linear-attention"

    def build_model(self) -> nn.Module:
        blocks = nn.Sequential(*(LinearBlock(self.dim, self.heads, self.hidden) for _ in range(2)))
        return SequenceClassifier(blocks, self.dim)


class TinyFusedAttention(_TinyAttention):
    """2 GPT-style blocks: fused ``c_attn``, ``n_head``, pre-norm, MLP in an nn.Sequential."""

    name = "tiny-fused-attention"

    def build_model(self) -> nn.Module:
        blocks = nn.Sequential(*(FusedBlock(self.dim, self.heads, self.hidden) for _ in range(2)))
        return SequenceClassifier(blocks, self.dim)


class TinyHeadsBlock(_TinyAttention):
    """2 blocks that keep their head count themselves, the MLP nested beside q/k/v/o."""

    name = "tiny-heads-block"
    gated = False

    def build_model(self) -> nn.Module:
        blocks = nn.Sequential(
            *(HeadsBlock(self.dim, self.heads, self.hidden, gated=self.gated) for _ in range(2))
        )
        return SequenceClassifier(blocks, self.dim)


class TinyGatedHeadsBlock(TinyHeadsBlock):
    """As ``TinyHeadsBlock``, with a per-head gate nested in each block."""

    name = "tiny-gated-heads-block"
    gated = True
