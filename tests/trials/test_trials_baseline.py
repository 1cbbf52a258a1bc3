"""The baseline cache: trained once, loaded after, safe when processes race for it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import trials._baseline
from searchspace import SlimtuneError
from trials import (
    BaselineCacheError,
    Task,
    TrainingDivergedError,
    ensure_baseline,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def test_second_call_loads_from_disk_without_training(
    tiny_task: Task, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = ensure_baseline(tiny_task, seed=3, cache_dir=tmp_path)
    assert not first.cached
    assert first.state_path.parent == tmp_path and first.state_path.exists()
    assert 0.5 < first.accuracy <= 1.0 and first.train_seconds > 0

    def no_training(*args: object, **kwargs: object) -> float:
        raise AssertionError("a cached baseline must not be retrained")

    monkeypatch.setattr(trials._baseline, "fit", no_training)
    second = ensure_baseline(tiny_task, seed=3, cache_dir=tmp_path)
    assert second.cached
    assert second.state_path == first.state_path
    assert second.accuracy == first.accuracy
    assert second.train_seconds == first.train_seconds
    # The weights file is a plain state_dict that loads into a fresh model.
    state = torch.load(second.state_path, weights_only=True)
    tiny_task.build_model().load_state_dict(state)


def test_cache_key_includes_seed_and_architecture(
    tiny_task: Task, tiny_task_class: type[Task], tmp_path: Path
) -> None:
    class Wider(tiny_task_class):  # type: ignore[valid-type,misc]
        def build_model(self) -> nn.Module:
            return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    assert tiny_task.fingerprint() == type(tiny_task)().fingerprint()
    assert Wider().fingerprint() != tiny_task.fingerprint()
    a = ensure_baseline(tiny_task, seed=0, cache_dir=tmp_path)
    b = ensure_baseline(tiny_task, seed=1, cache_dir=tmp_path)
    c = ensure_baseline(Wider(), seed=0, cache_dir=tmp_path)
    assert len({a.state_path, b.state_path, c.state_path}) == 3
    assert not (a.cached or b.cached or c.cached)


def test_training_is_deterministic_for_a_seed(tiny_task: Task, tmp_path: Path) -> None:
    a = ensure_baseline(tiny_task, seed=5, cache_dir=tmp_path / "a")
    b = ensure_baseline(tiny_task, seed=5, cache_dir=tmp_path / "b")
    state_a = torch.load(a.state_path, weights_only=True)
    state_b = torch.load(b.state_path, weights_only=True)
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert a.accuracy == b.accuracy


def test_two_processes_at_once_train_once(tmp_path: Path) -> None:
    # Each process trains slowly (a 1 s pause first), so the two overlap: the second must wait
    # on the lock and then load what the first wrote.
    script = textwrap.dedent(
        f"""
        import json, sys, time
        from pathlib import Path
        import torch
        torch.set_num_threads(1)
        sys.path.insert(0, {str(HERE)!r})
        import trials._baseline
        from trials import ensure_baseline, load_task

        real_fit = trials._baseline.fit
        def slow_fit(*args, **kwargs):
            time.sleep(1.0)
            return real_fit(*args, **kwargs)
        trials._baseline.fit = slow_fit
        task = load_task("trials_tiny_task:TinyDigits")
        baseline = ensure_baseline(task, seed=0, cache_dir=Path({str(tmp_path)!r}))
        print(json.dumps({{"cached": baseline.cached, "path": str(baseline.state_path),
                          "accuracy": baseline.accuracy}}))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        for _ in range(2)
    ]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-2000:]
        outputs.append(json.loads(out.decode().strip().splitlines()[-1]))
    assert sorted(o["cached"] for o in outputs) == [False, True]
    assert outputs[0]["path"] == outputs[1]["path"]
    assert outputs[0]["accuracy"] == outputs[1]["accuracy"]
    # Nothing half-written is left behind: one weights file, one metadata file, the lock.
    leftovers = sorted(p.suffix for p in tmp_path.iterdir())
    assert leftovers == [".json", ".lock", ".pt"]


def test_corrupt_metadata_is_reported_with_the_fix(tiny_task: Task, tmp_path: Path) -> None:
    baseline = ensure_baseline(tiny_task, seed=0, cache_dir=tmp_path)
    meta = baseline.state_path.with_suffix(".json")
    meta.write_text("{not json")
    with pytest.raises(BaselineCacheError, match="delete") as info:
        ensure_baseline(tiny_task, seed=0, cache_dir=tmp_path)
    assert str(meta) in str(info.value)


def test_relative_cache_dir_is_refused(tiny_task: Task) -> None:
    with pytest.raises(SlimtuneError, match="absolute"):
        ensure_baseline(tiny_task, seed=0, cache_dir=Path("relative/cache"))


def test_nan_loss_raises_a_clear_error(tiny_task_class: type[Task], tmp_path: Path) -> None:
    class Diverging(tiny_task_class):  # type: ignore[valid-type,misc]
        name = "diverging"

        def build_model(self) -> nn.Module:
            model = super().build_model()
            with torch.no_grad():
                model[-1].bias.fill_(float("nan"))
            return model

    expected = r"finite.*nan.*lower the learning rate"
    with pytest.raises(TrainingDivergedError, match=expected) as info:
        ensure_baseline(Diverging(), seed=0, cache_dir=tmp_path)
    assert isinstance(info.value, SlimtuneError)
    assert "epoch 1, step 1" in str(info.value)
