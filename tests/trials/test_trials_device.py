"""Where trials train: device names, the once-per-process set-up, and trials on a GPU.

The CPU tests run everywhere; the ``gpu`` ones need CUDA and are skipped without it (run them
on a GPU machine with ``pytest -m gpu``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from searchspace import ConfigError, TrialParams
from trials import (
    BUILTIN_TASKS,
    Mnist1dLargeTask,
    Mnist1dTask,
    Task,
    TrainingDivergedError,
    TrialSettings,
    ensure_baseline,
    load_task,
    run_trial,
)
from trials._device import device_data, prepare_device, training_device
from trials._train import _LossCheck, fit
from trials.tasks._mnist1d import DEFAULT_ARGS

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
ABS = Path("/tmp/slimtune-test")


@pytest.mark.parametrize("value", ["gpu", "cuda:x", "CUDA", "", 0, None])
def test_device_names_are_validated(value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        TrialSettings(epochs=1, seed=0, cache_dir=ABS, work_dir=ABS, device=value)
    assert info.value.field == "device"
    assert "'cpu', 'cuda' or 'cuda:N'" in str(info.value) and "Fix:" in str(info.value)


@pytest.mark.parametrize("value", ["cpu", "cuda", "cuda:1"])
def test_device_names_accepted_without_looking_for_the_device(value: str) -> None:
    # A driver without a GPU builds settings for GPU trials: availability is checked where
    # the trial runs, not here.
    assert TrialSettings(epochs=1, seed=0, cache_dir=ABS, work_dir=ABS, device=value).device == (
        value
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_cuda_without_a_gpu_says_what_to_change() -> None:
    with pytest.raises(ConfigError) as info:
        training_device("cuda")
    message = str(info.value)
    assert "torch.cuda.is_available() is False" in message
    assert "resources: {gpu: 0}" in message


def test_cpu_set_up_is_free_and_data_are_the_tasks_own(tiny_task: Task) -> None:
    cpu = training_device("cpu")
    assert prepare_device(cpu) < 0.01
    x, y = device_data(tiny_task, "train", cpu)
    x2, _ = device_data(tiny_task, "train", cpu)
    # No copy on the CPU: the task's tensors (the tiny task slices its split: same storage).
    assert x.device.type == "cpu" and x.data_ptr() == x2.data_ptr() and len(x) == len(y) == 800


def test_loss_check_names_the_first_bad_step_when_it_looks_late() -> None:
    check = _LossCheck("trial t", lr=0.5, batch_size=8, every=4)
    check.add(torch.tensor(1.0), 0, 0)
    check.add(torch.tensor(float("nan")), 0, 1)
    check.add(torch.tensor(float("inf")), 0, 2)  # not read yet: only every 4th add looks
    with pytest.raises(TrainingDivergedError, match=r"nan at epoch 1, step 2 \(lr=0.5"):
        check.flush()
    check.add(torch.tensor(2.0), 1, 0)
    check.flush()  # finite: nothing raised, nothing pending
    assert check.pending == []


def test_cpu_trial_reports_its_device_and_set_up_costs(
    tiny_task: Task,
    shared_cache: Path,
    make_settings: Callable[..., TrialSettings],
    tmp_path: Path,
) -> None:
    params = TrialParams(lr=1e-3, batch_size=64, sparsity=0.3, bits=32)
    result = run_trial(tiny_task, params, make_settings(shared_cache, tmp_path, epochs=1))
    assert result.tags["device"] == "cpu" and result.tags["device_name"] == "cpu"
    assert result.metrics["device_init_seconds"] < 0.01
    assert 0 <= result.metrics["data_seconds"] < result.metrics["trial_seconds"]


def test_large_mnist1d_is_builtin_and_leaves_mnist1d_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLIMTUNE_DATA_DIR", str(tmp_path))
    assert BUILTIN_TASKS["mnist1d-large"] is Mnist1dLargeTask
    large = load_task("mnist1d-large")
    assert isinstance(large, Mnist1dLargeTask)
    assert large.args == {**DEFAULT_ARGS, "num_samples": 40000, "train_split": 0.95}
    assert large.data_dir == tmp_path.resolve() / "mnist1d"
    model = large.build_model()
    assert model(torch.randn(2, 1, 40)).shape == (2, 10)
    assert 7_000_000 < sum(p.numel() for p in model.parameters()) < 9_000_000
    # The original task keeps its data, model and baseline settings.
    small = Mnist1dTask(data_dir=tmp_path)
    assert small.args == DEFAULT_ARGS and small.name == "mnist1d"
    assert sum(p.numel() for p in small.build_model().parameters()) == 2_020_106
    assert (small.baseline_epochs, small.baseline_lr, small.baseline_batch_size) == (10, 1e-3, 64)
    # Overrides still apply on top of the large defaults (tests use a small sample count).
    tiny = Mnist1dLargeTask(data_dir=tmp_path, args={"num_samples": 300})
    assert tiny.args["train_split"] == 0.95 and tiny.args["num_samples"] == 300


@pytest.mark.gpu
@needs_cuda
def test_fit_on_gpu_trains_and_returns_the_model_to_the_cpu(tiny_task: Task) -> None:
    cuda = training_device("cuda")
    prepare_device(cuda)
    x, y = device_data(tiny_task, "train", cuda)
    assert x.device.type == "cuda" and device_data(tiny_task, "train", cuda)[0] is x
    torch.manual_seed(0)
    model = tiny_task.build_model()
    before = [p.detach().clone() for p in model.parameters()]
    seconds = fit(model, x, y, epochs=2, lr=3e-3, batch_size=64, seed=0, what="gpu fit")
    assert seconds > 0
    assert all(p.device.type == "cpu" for p in model.parameters()) and not model.training
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    with pytest.raises(TrainingDivergedError, match="epoch 1"):
        fit(tiny_task.build_model(), x, y, epochs=1, lr=1e9, batch_size=64, seed=0, what="big")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize(
    "params",
    [
        TrialParams(lr=1e-3, batch_size=64, sparsity=0.5, bits=8),
        TrialParams(lr=1e-3, batch_size=64, sparsity=0.5, bits=4, pruning="structured"),
        TrialParams(lr=1e-3, batch_size=64, sparsity=0.3, bits=32, distill_weight=0.5),
    ],
    ids=["unstructured-int8", "structured-int4", "distill-fp32"],
)
def test_gpu_trials_train_on_cuda_and_measure_on_cpu(
    params: TrialParams, tiny_task: Task, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    baseline = ensure_baseline(tiny_task, seed=0, cache_dir=cache, device="cuda")
    assert baseline.device == "cuda" and baseline.accuracy > 0.8
    meta = json.loads(next(cache.glob("*.json")).read_text())
    assert meta["device"] == "cuda"
    settings = TrialSettings(
        epochs=2,
        seed=0,
        cache_dir=cache,
        work_dir=tmp_path / "trial",
        latency_warmup=2,
        latency_repeats=20,
        device="cuda",
    )
    first = run_trial(tiny_task, params, settings)
    assert first.tags["device"] == "cuda" and first.tags["device_name"]
    assert first.metrics["accuracy"] > 0.6 and first.onnx_path.exists()
    again = run_trial(tiny_task, params, settings)
    # Paid once per process: the second trial finds CUDA set up and the data on the GPU.
    assert again.metrics["device_init_seconds"] < 0.01
    assert again.metrics["data_seconds"] < 0.01
