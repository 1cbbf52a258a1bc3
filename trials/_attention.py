"""Attention made compressible: ``nn.MultiheadAttention`` rewritten on four ``nn.Linear``
(so every knob reaches its projections), and the attention modules of any model found by their
head count and q/k/v/out ``nn.Linear`` children (so structured pruning removes whole heads).

Both rewrites are checked numerically on the spot: a module whose rewritten form does not compute
what the original did is put back and reported, never exported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Attribute names a user's attention module keeps its head count in.
HEAD_ATTRS = ("num_heads", "n_heads", "n_head", "nhead", "heads", "num_attention_heads")
_Q = ("q", "q_proj", "query", "wq", "to_q", "q_lin")
_K = ("k", "k_proj", "key", "wk", "to_k", "k_lin")
_V = ("v", "v_proj", "value", "wv", "to_v", "v_lin")
_QKV = ("qkv", "in_proj", "c_attn", "to_qkv", "wqkv", "Wqkv", "qkv_proj")
_OUT = ("out", "out_proj", "o_proj", "o", "proj", "wo", "to_out", "c_proj", "dense", "out_lin")
# Integer attributes that may hold the attention's inner width (heads x head_dim).
_WIDTH_ATTRS = ("embed_dim", "inner_dim", "all_head_size", "d_inner", "hidden_size", "dim")


class SlimMultiheadAttention(nn.Module):
    """What ``nn.MultiheadAttention`` computes, on ``q_proj``/``k_proj``/``v_proj``/``out_proj``
    ``nn.Linear`` layers, with an inner width ``num_heads * head_dim`` that may differ from the
    model width (after heads are pruned). Same call signature and return value as
    ``nn.MultiheadAttention.forward``; attention weights are returned when asked for."""

    # torch's TransformerEncoderLayer reads these to decide on its fused fast path: this module
    # has no fused in-projection, so the fast path is off and forward() below always runs.
    in_proj_bias = None
    _qkv_same_embed_dim = False

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int,
        *,
        kdim: int,
        vdim: int,
        bias: bool,
        batch_first: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.batch_first = batch_first
        self.dropout = dropout
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.k_proj = nn.Linear(kdim, inner, bias=bias)
        self.v_proj = nn.Linear(vdim, inner, bias=bias)
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        if not self.batch_first or not batched:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        n, length, _ = query.shape
        source = key.shape[1]
        q = self.q_proj(query).reshape(n, length, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(key).reshape(n, source, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(value).reshape(n, source, self.num_heads, self.head_dim).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(length, source, dtype=torch.bool, device=q.device).triu(1)
        if attn_mask is not None:
            mask = (
                attn_mask.reshape(-1, self.num_heads, length, source)
                if attn_mask.dim() == 3
                else attn_mask
            )
            scores = _masked(scores, mask)
        if key_padding_mask is not None:
            scores = _masked(scores, key_padding_mask.reshape(n, 1, 1, source))
        weights = torch.softmax(scores, dim=-1)
        dropped = F.dropout(weights, p=self.dropout, training=self.training)
        inner = (dropped @ v).transpose(1, 2).reshape(n, length, self.num_heads * self.head_dim)
        out = self.out_proj(inner)
        if not self.batch_first or not batched:
            out = out.transpose(0, 1)
        if not batched:
            out = out.squeeze(1)
        if not need_weights:
            return out, None
        returned = weights.mean(dim=1) if average_attn_weights else weights
        return out, returned if batched else returned.squeeze(0)

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention) -> SlimMultiheadAttention:
        """The same attention with the same weights (in_proj_weight split into q, k, v)."""
        e, h = mha.embed_dim, mha.num_heads
        bias = mha.in_proj_bias is not None
        slim = cls(
            e,
            h,
            e // h,
            kdim=mha.kdim,
            vdim=mha.vdim,
            bias=bias,
            batch_first=mha.batch_first,
            dropout=mha.dropout,
        )
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                weights = mha.in_proj_weight.chunk(3)
            else:
                weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
            biases = mha.in_proj_bias.chunk(3) if mha.in_proj_bias is not None else (None,) * 3
            for proj, w, b in zip(
                (slim.q_proj, slim.k_proj, slim.v_proj), weights, biases, strict=True
            ):
                proj.weight.copy_(w)
                if b is not None and proj.bias is not None:
                    proj.bias.copy_(b)
            slim.out_proj.weight.copy_(mha.out_proj.weight)
            if bias and mha.out_proj.bias is not None and slim.out_proj.bias is not None:
                slim.out_proj.bias.copy_(mha.out_proj.bias)
        slim.train(mha.training)
        return slim.to(mha.out_proj.weight.device)


def _masked(scores: Tensor, mask: Tensor) -> Tensor:
    """Scores with a boolean mask (True: not attended) or an additive float mask applied."""
    if mask.dtype == torch.bool:
        return scores.masked_fill(mask, float("-inf"))
    return scores + mask


@dataclass(frozen=True)
class AttentionRewrite:
    """What ``rewrite_multihead_attention`` did: the modules rewritten and those left as they
    were, with the reason."""

    rewritten: tuple[str, ...]
    kept: tuple[tuple[str, str], ...]

    def tag(self) -> str:
        parts = [f"rewritten={len(self.rewritten)}"]
        parts += [f"kept {name} ({why})" for name, why in self.kept]
        return "; ".join(parts)


def rewrite_multihead_attention(model: nn.Module) -> AttentionRewrite:
    """Replace every ``nn.MultiheadAttention`` in ``model`` by a ``SlimMultiheadAttention`` with
    the same weights, in place, so that fake quantization, pruning and the int8/int4 exports
    reach its projections (``in_proj_weight`` is a bare parameter no ``nn.Linear`` holds).
    Each replacement is checked to compute the same outputs on random inputs (eval mode);
    modules with ``add_bias_kv``/``add_zero_attn`` or a mismatch are kept and reported."""
    rewritten: list[str] = []
    kept: list[tuple[str, str]] = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.MultiheadAttention):
            continue
        if module.bias_k is not None or module.add_zero_attn:
            kept.append((name, "add_bias_kv/add_zero_attn are not rewritten"))
            continue
        slim = SlimMultiheadAttention.from_torch(module)
        error = _rewrite_error(module, slim)
        if error:
            kept.append((name, error))
            continue
        _set_submodule(model, name, slim)
        rewritten.append(name)
    return AttentionRewrite(rewritten=tuple(rewritten), kept=tuple(kept))


def _rewrite_error(mha: nn.MultiheadAttention, slim: SlimMultiheadAttention) -> str:
    """ "" when both compute the same on random inputs (eval mode), else what differs."""
    was_training = mha.training
    mha.eval()
    slim.eval()
    device = mha.out_proj.weight.device
    generator = torch.Generator().manual_seed(0)
    n, length, source = 2, 5, 7

    def sample(width: int, rows: int) -> Tensor:
        shape = (n, rows, width) if mha.batch_first else (rows, n, width)
        return torch.randn(shape, generator=generator).to(device)

    query, key, value = (
        sample(mha.embed_dim, length),
        sample(mha.kdim, source),
        sample(mha.vdim, source),
    )
    try:
        with torch.no_grad():
            want = mha(query, key, value, need_weights=False)[0]
            got = slim(query, key, value, need_weights=False)[0]
        error = "" if torch.allclose(want, got, rtol=1e-4, atol=1e-5) else "outputs differ"
    except Exception as exc:  # the rewritten form cannot run: keep the original
        error = f"{type(exc).__name__}: {exc}"
    mha.train(was_training)
    slim.train(was_training)
    return error


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
