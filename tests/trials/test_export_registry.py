"""The exporter's operator registry, built once per process (trials._export_registry)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.onnx._internal.exporter import _registration

from trials import _export_registry
from trials._export import export_onnx
from trials._export_registry import registry_reused


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every registry torch builds from torchlib from now on, with nothing built before."""
    monkeypatch.setattr(_export_registry, "_BUILT", {})
    built: list[Any] = []
    build = _registration.ONNXRegistry.__dict__["from_torchlib"].__func__

    def counted(cls: type, *args: Any, **kwargs: Any) -> Any:
        built.append(build(cls, *args, **kwargs))
        return built[-1]

    monkeypatch.setattr(_registration.ONNXRegistry, "from_torchlib", classmethod(counted))
    return built


def test_exports_build_the_registry_once_and_write_the_same_bytes(
    tmp_path: Path, builds: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, example = _model(), torch.randn(1, 1, 8, 8)
    for name in ("a.onnx", "b.onnx"):
        export_onnx(model, example, tmp_path / name, what="test")
    assert len(builds) == 1
    # Each export building its own (what torch does alone) writes the same file.
    monkeypatch.setattr(_export_registry, "_registry_class", lambda: None)
    export_onnx(model, example, tmp_path / "fresh.onnx", what="test")
    assert len(builds) == 2
    fresh = (tmp_path / "fresh.onnx").read_bytes()
    assert (tmp_path / "a.onnx").read_bytes() == fresh == (tmp_path / "b.onnx").read_bytes()


@pytest.mark.usefixtures("builds")
def test_each_export_gets_its_own_copy_and_torch_is_left_as_it_was() -> None:
    builder = _registration.ONNXRegistry.__dict__["from_torchlib"]
    with registry_reused():
        first = _registration.ONNXRegistry.from_torchlib()
        ops = len(first.functions)
        first.functions.clear()  # as an export registering operators of its own would change it
        second = _registration.ONNXRegistry.from_torchlib()
    assert ops > 100 and len(second.functions) == ops
    assert second.opset_version == first.opset_version
    assert _registration.ONNXRegistry.__dict__["from_torchlib"] is builder
    with pytest.raises(RuntimeError, match="inside"), registry_reused():
        raise RuntimeError("inside")
    assert _registration.ONNXRegistry.__dict__["from_torchlib"] is builder
