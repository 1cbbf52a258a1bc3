"""Pruning masks, fake quantization and the analytic packed size, on hand-made layers."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

from trials._compress import (
    attach,
    bake,
    fake_quantize,
    global_magnitude_masks,
    packed_size_bytes,
    prunable_layers,
    smallest,
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


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(st.integers(0, 6), min_size=1, max_size=60),
    count=st.integers(-1, 61),
    nans=st.lists(st.integers(0, 59), max_size=3),
)
@example(values=[4, 0, 2, 0, 8], count=4, nans=[1, 3])  # the 4th smallest is a NaN
def test_smallest_picks_what_a_stable_sort_picks(
    values: list[int], count: int, nans: list[int]
) -> None:
    """The selection names the same entries as ``argsort(stable=True)[:count]`` (the masks of
    every trial before it, which a rebuild reproduces bit for bit): many ties (values drawn from
    7 levels, as weights on a quantization grid), counts past both ends, NaN ranked last."""
    scores = torch.tensor(values, dtype=torch.float32) / 4
    for i in nans:
        if i < len(values):
            scores[i] = float("nan")
    expected = torch.zeros(len(values), dtype=torch.bool)
    expected[torch.argsort(scores, stable=True)[: max(count, 0)]] = True
    assert torch.equal(smallest(scores, count), expected)


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


def test_cubic_schedule_of_zhu_and_gupta() -> None:
    from trials._compress import cubic_sparsity

    values = [cubic_sparsity(step, 30, 0.8) for step in range(0, 41)]
    assert values[0] == 0.0 and values[30] == 0.8 and values[40] == 0.8
    assert values[10] == pytest.approx(0.8 * (1 - (2 / 3) ** 3))
    steps = list(itertools.pairwise(values))
    assert all(a <= b for a, b in steps)
    # Fast at first, slow near the target (the cubic's point).
    assert values[5] - values[0] > values[30] - values[25]
    assert cubic_sparsity(0, 0, 0.5) == 0.5  # no steps: at once


def test_gradual_pruning_is_monotone_and_ends_at_target() -> None:
    from trials._compress import GradualPruning

    model = _two_layers()
    layers = prunable_layers(model)
    ones = [torch.ones_like(layer.weight, dtype=torch.bool) for layer in layers]
    attach(layers, ones, bits=32)
    schedule = GradualPruning(layers, 0.7, total_steps=30)
    assert (schedule.ramp_steps, schedule.every) == (20, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    previous = [m.clone() for m in ones]
    for step in range(30):
        schedule(step, 30)
        current = [layer.parametrizations.weight[0].mask.bool() for layer in layers]
        # A pruned weight stays pruned.
        assert all(torch.all(c <= p) for c, p in zip(current, previous, strict=True))
        previous = [c.clone() for c in current]
        optimizer.zero_grad()
        model(torch.randn(8, 20)).pow(2).sum().backward()
        optimizer.step()
    masks = schedule.finish()
    assert [s for _, s in schedule.history][-1] == 0.7
    assert [st for st, _ in schedule.history] == [*range(0, 21, 2)]
    bake(layers, masks)
    assert weight_sparsity(layers) == pytest.approx(0.7, abs=1 / 300)


def test_gradual_pruning_without_steps_is_one_shot() -> None:
    from trials._compress import GradualPruning

    model = _two_layers()
    layers = prunable_layers(model)
    attach(layers, [torch.ones_like(la.weight, dtype=torch.bool) for la in layers], bits=32)
    schedule = GradualPruning(layers, 0.4, total_steps=0)
    masks = schedule.finish()
    assert schedule.history == [(0, 0.4)]
    assert sum(int((~m).sum()) for m in masks) == 120


def test_structured_pruning_removes_channels_and_keeps_the_output() -> None:
    from trials._structured import output_units, prune_structured

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv1d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 12, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )
    example = torch.randn(1, 1, 12)
    dense_params = sum(p.numel() for p in model.parameters())
    assert output_units(model) == 16 + 32 + 64 + 10
    pruned = prune_structured(model, example, 0.5, what="test")
    assert pruned.widths == (8, 16, 32, 10)
    assert pruned.dense_units == 122 and pruned.units == 66
    assert pruned.channel_sparsity == pytest.approx(56 / 122)
    assert model(torch.randn(5, 1, 12)).shape == (5, 10)
    assert sum(p.numel() for p in model.parameters()) < 0.3 * dense_params
