"""Values objects of a trial: how it runs (settings) and what it returns (result, baseline)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from searchspace import ConfigError


@dataclass(frozen=True)
class TrialSettings:
    """Fixed settings shared by every trial of a search (the knobs are in ``TrialParams``).

    Paths must be absolute: Ray runs each trial in its own working directory. ``epochs=0`` is
    allowed and means post-training compression (prune and quantize without fine-tuning).
    """

    epochs: int
    seed: int
    cache_dir: Path
    work_dir: Path
    latency_warmup: int = 20
    latency_repeats: int = 200
    latency_threads: int = 1
    calibration_samples: int = 256

    def __post_init__(self) -> None:
        for name in ("cache_dir", "work_dir"):
            value = getattr(self, name)
            if not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
                value = getattr(self, name)
            if not value.is_absolute():
                raise ConfigError(
                    field=name,
                    value=str(value),
                    rule="the path must be absolute (trials run in their own working directory)",
                    fix=f"pass Path({str(value)!r}).resolve()",
                    source="TrialSettings",
                )
        minimums = {
            "epochs": 0,
            "latency_warmup": 0,
            "latency_repeats": 5,
            "latency_threads": 1,
            "calibration_samples": 1,
        }
        for name, low in minimums.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(
                    field=name,
                    value=value,
                    rule=f"it must be an integer >= {low}",
                    fix=f"set {name} to an integer >= {low}",
                    source="TrialSettings",
                )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(
                field="seed",
                value=self.seed,
                rule="it must be an integer",
                fix="pass an int seed",
                source="TrialSettings",
            )


@dataclass(frozen=True)
class Baseline:
    """The dense model every trial starts from, trained once and cached on disk.

    ``state_path`` holds a plain ``state_dict`` (``torch.load(path, weights_only=True)``);
    ``accuracy`` is the PyTorch model's metric on the validation data; ``train_seconds`` is the
    time it took to train (when it was trained, also for a cached baseline).
    """

    state_path: Path
    accuracy: float
    train_seconds: float
    cached: bool


@dataclass(frozen=True)
class TrialResult:
    """What a trial measured on its exported artifact (metrics), how to read it (tags), and the
    artifact itself (``onnx_path``, one self-contained file)."""

    metrics: dict[str, float]
    tags: dict[str, str]
    onnx_path: Path
