"""Pruning masks, fake quantization and the analytic packed size, on hand-made layers."""

from __future__ import annotations

import torch
from torch import nn

from trials._compress import (
    attach,
    bake,
    fake_quantize,
    global_magnitude_masks,
    packed_size_bytes,
    prunable_layers,
    weight_sparsity,
)


def _two_layers() -> nn.Sequential:
    torch.manual_seed(0)
    big, small = nn.Linear(20, 10), nn.Linear(10, 10)
    with torch.no_grad():
        big.weight.mul_(10.0)
        small.weight.mul_(0.01)
    return nn.Sequential(big, nn.ReLU(), small)


def test_pruning_is_global_and_exact() -> None:
    model = _two_layers()
    layers = prunable_layers(model)
    masks = global_magnitude_masks(layers, 0.2)
    pruned = [int((~m).sum()) for m in masks]
    # 20 % of 300 weights = 60: all of them in the small-weight layer (global, not per layer).
    assert pruned == [0, 60]
    # The pruned ones are the smallest in magnitude.
    small = layers[1].weight.detach().abs()
    assert small[~masks[1]].max() <= small[masks[1]].min()


def test_masks_survive_training_and_baking() -> None:
    model = _two_layers()
    layers = prunable_layers(model)
    masks = global_magnitude_masks(layers, 0.6)
    attach(layers, masks, bits=32)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(5):
        optimizer.zero_grad()
        model(torch.randn(8, 20)).pow(2).sum().backward()
        optimizer.step()
    bake(layers, masks)
    assert all(type(layer.weight) is nn.Parameter for layer in layers)
    assert weight_sparsity(layers) == 0.6
    assert not any(name.startswith("parametrizations") for name, _ in model.named_parameters())


def test_fake_quantize_grid_and_straight_through_gradient() -> None:
    torch.manual_seed(0)
    weight = torch.randn(6, 3, 3, 3)
    weight[0] = 0.0  # an all-zero (fully pruned) channel must stay zero, not NaN
    weight[1, 0, 0, 0] = 0.0
    for bits in (2, 3, 4, 8):
        q = fake_quantize(weight, bits)
        qmax = 2 ** (bits - 1) - 1
        assert torch.isfinite(q).all()
        assert torch.all(q[0] == 0) and q[1, 0, 0, 0] == 0
        for channel in range(1, 6):
            scale = weight[channel].abs().max() / qmax
            levels = q[channel] / scale
            assert torch.allclose(levels, levels.round(), atol=1e-4)
            assert levels.abs().max() <= qmax + 1e-4
            assert len(torch.unique(q[channel])) <= 2 * qmax + 1
    leaf = weight.clone().requires_grad_(True)
    fake_quantize(leaf, 4).sum().backward()
    assert leaf.grad is not None and torch.all(leaf.grad == 1.0)


def test_packed_size_counts_bits_and_scales() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    weights = 4 * 1 * 3 * 3 + 2 * 4  # 44
    biases = 4 + 2
    assert packed_size_bytes(model, 32) == 4 * (weights + biases)
    assert packed_size_bytes(model, 8) == weights + 4 * (4 + 2) + 4 * biases
    assert packed_size_bytes(model, 4) == (36 // 2) + (8 // 2) + 4 * (4 + 2) + 4 * biases
    assert packed_size_bytes(model, 3) == 14 + 3 + 4 * (4 + 2) + 4 * biases
