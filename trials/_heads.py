"""Structured pruning of attention: whole heads removed from any module that keeps a head count
(``num_heads``, ``n_head``, ...) and projects with q/k/v (or one fused qkv) and out ``nn.Linear``
children, the head count it uses updated. Each removal is checked to compute exactly what the
model computed with those heads' contribution zeroed; a module where that does not hold is put
back and reported as left out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from trials._attention import _K, _OUT, _Q, _QKV, _V, _WIDTH_ATTRS, HEAD_ATTRS


@dataclass(frozen=True)
class AttentionSite:
    """One attention module: its name, the attribute with its head count, and its projections
    (``q``/``k``/``v`` separately, or ``qkv`` fused with q, k, v stacked on the output axis)."""

    name: str
    module: nn.Module
    heads_attr: str
    out: nn.Linear
    q: nn.Linear | None = None
    k: nn.Linear | None = None
    v: nn.Linear | None = None
    qkv: nn.Linear | None = None

    @property
    def heads(self) -> int:
        return int(getattr(self.module, self.heads_attr))

    def projections(self) -> list[nn.Linear]:
        found = [self.q, self.k, self.v, self.qkv, self.out]
        return [p for p in found if p is not None]


@dataclass(frozen=True)
class HeadPruning:
    """Per attention module: heads before and after, or why it was left out."""

    name: str
    heads: int
    kept: int
    reason: str = ""

    def describe(self) -> str:
        if self.reason:
            return f"{self.name} left out ({self.reason})"
        return f"{self.name} heads {self.heads}->{self.kept}"


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """Modules that look like attention: an integer head-count attribute and Linear children.
    Structured pruning never prunes their Linear layers as plain neurons (only whole heads)."""
    return [
        m
        for m in model.modules()
        if _heads_attr(m) and any(isinstance(c, nn.Linear) for c in m.children())
    ]


def inside_attention(model: nn.Module) -> list[nn.Module]:
    """Every module inside an attention module (``attention_modules``), itself included."""
    return [m for a in attention_modules(model) for m in a.modules()]


def held_by_attention(model: nn.Module) -> list[nn.Module]:
    """The modules that attention uses by head, which structured pruning must not prune as
    neurons (whole heads are cut instead, ``prune_heads``): the ``nn.Linear`` children of a
    recognised attention module (``attention_sites``: its q/k/v or qkv and out, and any other
    Linear beside them), and everything inside one whose projections are not recognised. A
    recognised module's other submodules, such as the MLP of a block that keeps its head count
    itself, are not in it."""
    recognised = {id(site.module) for site in attention_sites(model)[0]}
    held: list[nn.Module] = []
    for module in attention_modules(model):
        if id(module) in recognised:
            held += [c for c in module.children() if isinstance(c, nn.Linear)]
        else:
            held += list(module.modules())
    return held


def attention_sites(model: nn.Module) -> tuple[list[AttentionSite], list[HeadPruning]]:
    """The attention modules whose projections are recognised by name, and those that are not
    (as ``HeadPruning`` records with the reason)."""
    sites: list[AttentionSite] = []
    skipped: list[HeadPruning] = []
    for name, module in model.named_modules():
        attr = _heads_attr(module)
        if not attr or not any(isinstance(c, nn.Linear) for c in module.children()):
            continue
        children = {n: c for n, c in module.named_children() if isinstance(c, nn.Linear)}
        out = _pick(children, _OUT)
        q, k, v, qkv = (_pick(children, names) for names in (_Q, _K, _V, _QKV))
        heads = int(getattr(module, attr))
        if out is None or not (qkv is not None or (q and k and v)):
            skipped.append(
                HeadPruning(name, heads, heads, "no q/k/v (or qkv) and out nn.Linear children")
            )
            continue
        site = AttentionSite(
            name, module, attr, out, *((q, k, v, None) if q else (None,) * 3 + (qkv,))
        )
        inner = out.in_features
        widths_ok = inner % heads == 0 and (
            (qkv is not None and qkv.out_features == 3 * inner)
            or all(p is not None and p.out_features == inner for p in (q, k, v))
        )
        if not widths_ok:
            skipped.append(
                HeadPruning(name, heads, heads, "projection widths are not heads x head_dim")
            )
            continue
        sites.append(site)
    return sites, skipped


def prune_heads(
    model: nn.Module, example: Tensor, ratio: float | Mapping[str, float]
) -> list[HeadPruning]:
    """Remove ``floor(ratio * heads)`` heads (lowest L2 norm of their q/k/v rows and out columns)
    from every recognised attention module of ``model``, in place; at least one head stays.
    ``ratio`` is one share for every module, or one per module name (a per-layer plan; modules
    not named keep every head and get no record).

    Checked per module: with the chosen heads' columns of ``out`` zeroed the model computes a
    reference output on ``example``; after the heads are cut (q/k/v rows and out columns
    removed, the head count, and any inner-width attribute, updated) the model must compute the
    same. If not, or if it raises, the module is restored and reported as left out."""
    sites, records = attention_sites(model)
    model.eval()
    for site in sites:
        if isinstance(ratio, Mapping):
            if ratio.get(site.name, 0.0) > 0:
                records.append(_prune_site(model, example, site, ratio[site.name]))
            continue
        records.append(_prune_site(model, example, site, ratio))
    return records


def _prune_site(
    model: nn.Module, example: Tensor, site: AttentionSite, ratio: float
) -> HeadPruning:
    heads = site.heads
    remove = min(int(heads * ratio + 1e-9), heads - 1)
    if remove <= 0:
        return HeadPruning(site.name, heads, heads, f"{ratio:g} of {heads} heads is under one head")
    inner = site.out.in_features
    head_dim = inner // heads
    score = _head_scores(site, heads, head_dim)
    drop = set(torch.argsort(score, stable=True)[:remove].tolist())
    keep_heads = [h for h in range(heads) if h not in drop]
    keep = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in keep_heads])
    reference = _reference(model, example, site.out, drop, head_dim)
    saved = {n: c for n, c in site.module.named_children()}
    saved_attrs = {
        a: getattr(site.module, a)
        for a in (site.heads_attr, *_WIDTH_ATTRS)
        if _is_int(site.module, a)
    }
    _cut(site, keep, inner)
    setattr(site.module, site.heads_attr, len(keep_heads))
    error = _matches(model, example, reference)
    if error:  # maybe the module keeps its inner width in an attribute too
        for attr in saved_attrs:
            if attr != site.heads_attr and saved_attrs[attr] == inner:
                setattr(site.module, attr, len(keep))
        error = _matches(model, example, reference)
    if error:
        for name, child in saved.items():
            setattr(site.module, name, child)
        for attr, value in saved_attrs.items():
            setattr(site.module, attr, value)
        return HeadPruning(site.name, heads, heads, f"cutting heads breaks it: {error}")
    return HeadPruning(site.name, heads, len(keep_heads))


def _head_scores(site: AttentionSite, heads: int, head_dim: int) -> Tensor:
    inner = heads * head_dim
    with torch.no_grad():
        cols = site.out.weight.detach().pow(2).sum(dim=0)
        if site.qkv is not None:
            rows = site.qkv.weight.detach().pow(2).sum(dim=1).view(3, inner).sum(dim=0)
        else:
            projections = [p for p in (site.q, site.k, site.v) if p is not None]
            rows = torch.stack([p.weight.detach().pow(2).sum(dim=1) for p in projections]).sum(0)
        return (cols + rows).view(heads, head_dim).sum(dim=1)


def _reference(
    model: nn.Module, example: Tensor, out: nn.Linear, drop: set[int], head_dim: int
) -> Tensor:
    """The model's output on ``example`` with the dropped heads' input columns of ``out`` zeroed."""
    with torch.no_grad():
        saved = out.weight.detach().clone()
        for h in drop:
            out.weight[:, h * head_dim : (h + 1) * head_dim] = 0
        try:
            return model(example).detach().clone()
        finally:
            out.weight.copy_(saved)


def _cut(site: AttentionSite, keep: Tensor, inner: int) -> None:
    module = site.module
    names = {id(c): n for n, c in module.named_children()}
    if site.qkv is not None:
        rows = torch.cat([keep + i * inner for i in range(3)])
        setattr(module, names[id(site.qkv)], _rows(site.qkv, rows))
    else:
        for p in (site.q, site.k, site.v):
            assert p is not None  # attention_sites guarantees q, k and v without qkv
            setattr(module, names[id(p)], _rows(p, keep))
    setattr(module, names[id(site.out)], _cols(site.out, keep))


def _rows(layer: nn.Linear, idx: Tensor) -> nn.Linear:
    new = nn.Linear(layer.in_features, len(idx), bias=layer.bias is not None)
    new = new.to(layer.weight.device, layer.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(layer.weight[idx.to(layer.weight.device)])
        if layer.bias is not None and new.bias is not None:
            new.bias.copy_(layer.bias[idx.to(layer.weight.device)])
    return new


def _cols(layer: nn.Linear, idx: Tensor) -> nn.Linear:
    new = nn.Linear(len(idx), layer.out_features, bias=layer.bias is not None)
    new = new.to(layer.weight.device, layer.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(layer.weight[:, idx.to(layer.weight.device)])
        if layer.bias is not None and new.bias is not None:
            new.bias.copy_(layer.bias)
    return new


def _matches(model: nn.Module, example: Tensor, reference: Tensor) -> str:
    try:
        with torch.no_grad():
            got = model(example)
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if got.shape != reference.shape:
        return f"output shape {tuple(got.shape)} != {tuple(reference.shape)}"
    if not torch.allclose(got, reference, rtol=1e-3, atol=1e-4):
        return f"outputs differ by {float((got - reference).abs().max()):.3g}"
    return ""


def _heads_attr(module: nn.Module) -> str:
    return next((a for a in HEAD_ATTRS if _is_int(module, a) and getattr(module, a) > 0), "")


def _is_int(module: nn.Module, attr: str) -> bool:
    value = getattr(module, attr, None)
    return isinstance(value, int) and not isinstance(value, bool)


def _pick(children: dict[str, nn.Linear], names: tuple[str, ...]) -> nn.Linear | None:
    return next((children[n] for n in names if n in children), None)
