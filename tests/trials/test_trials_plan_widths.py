"""Per-layer kept widths in mixed plans: the joint allocator over (format, kept width) on a
recorded sensitivity table, the size prediction composed from groups pruned alone against the
model pruned for real (CNN with BatchNorm, attention heads), and the round trip of a mixed plan
with per-layer widths (config -> plan -> artifact -> record -> rebuild)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from searchspace import SearchSpec, TrialParams
from trials import (
    PLAN_JSON,
    CompressionPlan,
    ExportClaimError,
    LayerSetting,
    Task,
    TrialRecord,
    TrialResult,
    TrialSettings,
    check_plan_export,
    file_sha256,
    run_trial,
)
from trials._compress import prunable_layers
from trials._plan_allocate import Choice, allocate_joint
from trials._plan_export import kept_units_error
from trials._plan_widths import LayerShape, WidthGroup, WidthOption, measure_widths, predict_bytes
from trials._structured import prune_structured
from trials._trial_steps import layer_names

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import uniform_plan_cases as cases  # noqa: E402
from trials_tiny_attention import (  # noqa: E402
    TinyGatedHeadsBlock,
    TinyHeadsBlock,
    TinyLinearAttention,
)

sys.path.remove(str(HERE))

SPEC = SearchSpec.model_validate({"experiment": "plan", "task": "trials_tiny_task:TinyDigits"})

# A recorded table: layer "a" (Linear 64 -> 32) feeds the output layer "b" (Linear 32 -> 10).
# Pruning half of a's neurons also removes half of b's inputs.
SHAPES = (LayerShape("a", 32, 64), LayerShape("b", 10, 32))
LOSSES = {"a": {"fp32": 0.0, "int8": 0.001, "int4": 0.05}, "b": {"fp32": 0.0, "int8": 0.002}}
GROUP_A = WidthGroup(
    "a", "neurons", (WidthOption(1.0), WidthOption(0.5, 0.02, {"a": (16, 64), "b": (10, 16)}))
)
FIXED = 1000


def _choices() -> list[Choice]:
    formats = [
        Choice(f"format:{n}", tuple((f, loss) for f, loss in LOSSES[n].items())) for n in "ab"
    ]
    return [*formats, Choice("keep:a", tuple((o.keep, o.loss) for o in GROUP_A.options))]


def _cost(picks: object) -> int:
    assert isinstance(picks, dict)
    formats = {n: str(picks[f"format:{n}"]) for n in "ab"}
    option = next(o for o in GROUP_A.options if o.keep == picks["keep:a"])
    return predict_bytes(SHAPES, formats, [option], fixed_bytes=FIXED)


def test_pruning_a_layer_is_priced_with_the_next_layers_inputs() -> None:
    dense = _cost({"format:a": "fp32", "format:b": "fp32", "keep:a": 1.0})
    assert dense == FIXED + (4 * 64 * 32 + 4 * 32) + (4 * 32 * 10 + 4 * 10)
    half = _cost({"format:a": "fp32", "format:b": "fp32", "keep:a": 0.5})
    assert half == FIXED + (4 * 64 * 16 + 4 * 16) + (4 * 16 * 10 + 4 * 10)
    # int8 at half width: 1 byte a weight, a scale and zero point per channel, the int32 bias.
    assert _cost({"format:a": "int8", "format:b": "fp32", "keep:a": 0.5}) == FIXED + (
        64 * 16 + 5 * 16 + 8 * 16 + 1000
    ) + (4 * 16 * 10 + 4 * 10)


def test_the_joint_allocator_picks_formats_and_widths_by_loss_per_byte() -> None:
    dense = _cost({"format:a": "fp32", "format:b": "fp32", "keep:a": 1.0})
    loose = allocate_joint(_choices(), _cost, target=0.6 * dense)
    # int8 on the big layer is the cheapest loss per byte and meets the budget alone.
    assert dict(loose.picks) == {"format:a": "int8", "format:b": "fp32", "keep:a": 1.0}
    assert loose.reached and loose.moves == ("format:a->int8",)
    tight = allocate_joint(_choices(), _cost, target=0.3 * dense)
    # Then half of a's width (0.02 for the bytes of a's rows and b's columns) before int4 on a
    # (0.049 more); b, the most sensitive per byte, stays fp32; b's int8 is larger than fp32.
    assert tight.moves == ("format:a->int8", "keep:a->0.5", "format:a->int4")
    assert dict(tight.picks) == {"format:a": "int4", "format:b": "fp32", "keep:a": 0.5}
    assert tight.reached and tight.predicted == _cost(dict(tight.picks))
    assert tight.predicted_loss == pytest.approx(0.05 + 0.02)
    impossible = allocate_joint(_choices(), _cost, target=100)
    assert not impossible.reached and impossible.picks["keep:a"] == 0.5


class _ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(128, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _others(model: nn.Module) -> int:
    inside = {id(p) for layer in prunable_layers(model) for p in layer.parameters(recurse=False)}
    return sum(p.numel() for p in model.parameters() if id(p) not in inside)


ATTENTION: dict[str, type[Task]] = {
    "attention": TinyLinearAttention,
    "heads-block": TinyHeadsBlock,  # the MLP nested in the module that keeps the head count
    "gated-heads-block": TinyGatedHeadsBlock,  # and a gate the attention reads by head
}


@pytest.mark.parametrize("kind", ["cnn", *ATTENTION])
def test_the_size_of_groups_pruned_alone_composes_to_the_model_pruned_together(kind: str) -> None:
    torch.manual_seed(0)
    if kind == "cnn":
        model: nn.Module = _ConvBN().eval()
        example, batch = torch.randn(1, 1, 8, 8), torch.randn(16, 1, 8, 8)
    else:
        task = ATTENTION[kind]()
        model = task.build_model().eval()
        example, batch = task.example_input(), task.train_data()[0][:16]
    groups = measure_widths(model, example, batch, round_to=8, what="test", keeps=(1.0, 0.5))
    kinds = {g.name: g.kind for g in groups}
    if kind == "cnn":  # every layer but the output, each its own group
        assert kinds == {"body.0": "neurons", "body.3": "neurons", "body.8": "neurons"}
    elif kind == "attention":  # each attention module by heads, each MLP's inner layer by neurons
        assert sorted(kinds.values()).count("heads") == 2 and "neurons" in kinds.values()
    else:  # before, a plan offered no width for an MLP inside the block (nor anything here)
        mlps = {"blocks.0.mlp.0": "neurons", "blocks.1.mlp.0": "neurons"}
        heads = {} if kind.startswith("gated") else {"blocks.0": "heads", "blocks.1": "heads"}
        assert kinds == {**mlps, **heads}
    assert all(g.options[1].loss > 0 for g in groups)
    layers = prunable_layers(model)
    shapes = [LayerShape.of(n, x) for n, x in zip(layer_names(model, layers), layers, strict=True)]
    fp32 = {s.name: "fp32" for s in shapes}
    predicted = predict_bytes(shapes, fp32, [g.options[1] for g in groups], fixed_bytes=0)
    dense_others = _others(model)
    prune_structured(
        model,
        example,
        0.0,
        what="test",
        layer_ratios={g.name: 0.5 for g in groups if g.kind == "neurons"},
        head_ratios={g.name: 0.5 for g in groups if g.kind == "heads"},
    )
    pruned = prunable_layers(model)
    names = layer_names(model, pruned)
    real = sum(LayerShape.of(n, x).nbytes("fp32") for n, x in zip(names, pruned, strict=True))
    assert predicted == real + 4 * (_others(model) - dense_others)
    assert real < sum(s.nbytes("fp32") for s in shapes)


def _settings(cache: Path, work: Path) -> TrialSettings:
    return dataclasses.replace(cases.settings(cache, work), int8_format="s8s8-per-channel")


WIDTHS = TrialParams(
    lr=1e-3,
    batch_size=32,
    sparsity=0.3,
    bits=8,
    plan="mixed",
    budget=0.2,
    quant_scheme="ptq",
    pruning="structured",
)


@pytest.fixture(scope="module")
def widths(
    tiny_task: Task, shared_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[TrialSettings, TrialResult]:
    root = tmp_path_factory.mktemp("widths")
    settings = _settings(shared_cache, root / "work")  # the session's tiny baseline
    return settings, run_trial(tiny_task, WIDTHS, settings)


def test_per_layer_widths_round_trip_config_plan_artifact_record_rebuild(
    tiny_task: Task, widths: tuple[TrialSettings, TrialResult], tmp_path: Path
) -> None:
    settings, result = widths
    plan = CompressionPlan.from_dict(json.loads((settings.work_dir / PLAN_JSON).read_text()))
    keeps = {n: s.keep for n, s in plan.layers}
    assert any(k < 1 for k in keeps.values()), plan.to_json()
    assert len({k for k in keeps.values()}) >= 2  # widths differ from layer to layer
    assert result.tags["plan_keeps"] == plan.keep_histogram()
    assert result.tags["export_check"] == "ok"
    # Each layer's kept units, read from the file, are the plan's.
    dense = tiny_task.build_model()
    layers = prunable_layers(dense)
    dense_widths = {
        n: int(x.weight.shape[0]) for n, x in zip(layer_names(dense, layers), layers, strict=True)
    }
    model = onnx.load(str(result.onnx_path))
    assert kept_units_error(model, plan, dense_widths) == ""
    widths_tag = [int(w) for w in result.tags["pruning_widths"].split(",")]
    assert widths_tag == [round(keeps[n] * dense_widths[n]) for n in plan.names]
    size = result.metrics["size_bytes"]
    assert plan.predicted_bytes is not None and plan.target_bytes is not None
    assert abs(plan.predicted_bytes - size) / size <= 0.10  # the 10 % target
    assert plan.predicted_bytes <= plan.target_bytes
    # A claim of another width for one layer fails the check, naming the layer.
    name = next(n for n, k in keeps.items() if k < 1)
    wider = CompressionPlan(
        tuple((n, LayerSetting(s.format) if n == name else s) for n, s in plan.layers),
        kind="mixed",
    )
    with pytest.raises(ExportClaimError, match=f"layer '{name}' keeps 1 of its"):
        check_plan_export(
            result.onnx_path, wider, int8_format=None, what="t", dense_widths=dense_widths
        )
    record = TrialRecord.of(SPEC, 1, WIDTHS, settings, result, torch_threads=1, baseline_threads=1)
    back = TrialRecord.from_json(record.to_json(), source="test")
    assert back.params == WIDTHS and back.lineage is not None
    assert back.lineage.plan == plan.to_dict()
    # Rebuild on a clean sensitivity cache: widths measured again, same plan, same bytes.
    shutil.rmtree(settings.cache_dir / "sensitivity")
    again = run_trial(
        tiny_task,
        back.params,
        back.rebuild_settings(work_dir=tmp_path / "rebuilt", cache_dir=settings.cache_dir),
    )
    assert again.lineage is not None and again.lineage.plan == back.lineage.plan
    assert file_sha256(again.onnx_path) == back.onnx_sha256


def test_a_mixed_plan_with_one_format_everywhere_is_exported_as_a_mixed_plan(
    shared_cache: Path, tmp_path: Path
) -> None:
    """A budget only int4 everywhere meets gives every layer one format. The artifact is still
    the mixed plan's: the embedding table stays float (it was not fake-quantized in training
    and the size prediction counts it float), the check is per layer, and the prediction holds.
    (Before, such a plan took the uniform int4 path, which also stored the table in int4: on
    the Transformer task every all-int4 plan was predicted 14.5 KB high.)"""
    task = TinyLinearAttention()
    params = dataclasses.replace(WIDTHS, budget=0.001, pruning="unstructured", sparsity=0.0)
    result = run_trial(task, params, _settings(shared_cache, tmp_path))
    layers = len(prunable_layers(task.build_model()))
    assert result.tags["plan_formats"] == f"int4:{layers}"
    assert result.tags["format"] == "mixed" and result.tags["export_check"] == "ok"
    model = onnx.load(str(result.onnx_path))
    assert not [n.op_type for n in model.graph.node if n.op_type == "GatherBlockQuantized"]
    tables = [i for i in model.graph.initializer if i.name.startswith("emb.")]
    assert [(t.name, t.data_type) for t in tables] == [("emb.weight", onnx.TensorProto.FLOAT)]
    size = result.metrics["size_bytes"]
    assert abs(float(result.tags["plan_predicted_bytes"]) - size) / size <= 0.02
