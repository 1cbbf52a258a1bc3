"""The dense baseline: trained once per (task, seed), cached on disk, safe under concurrency."""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from searchspace import ConfigError
from trials._device import check_device_name, device_data, prepare_device, training_device
from trials._errors import BaselineCacheError
from trials._files import atomic_write, safe_name
from trials._plain import plain_weights
from trials._settings import Baseline
from trials._task import Task, checked_data
from trials._train import fit, predict

_FORMAT_VERSION = 1


def ensure_baseline(task: Task, *, seed: int, cache_dir: Path, device: str = "cpu") -> Baseline:
    """The task's dense model trained with its baseline settings, from ``cache_dir`` when it
    is there, else trained now and cached.

    The cache key is ``task.fingerprint()`` and ``seed``. Concurrent callers (trials in other
    processes) serialise on an ``fcntl`` lock file; the files are written under temporary names
    and renamed, so a reader never sees half a checkpoint. The first caller trains
    (``cached=False``), the others load (``cached=True``).

    ``device`` is where it trains when it is not cached (``"cuda"``: on the GPU, bf16
    autocast, the data kept there); the device is recorded with it (``Baseline.device``) but
    is not part of the key: a search's trials find the baseline its driver trained, wherever
    that was.
    """
    cache_dir = Path(cache_dir)
    if not cache_dir.is_absolute():
        raise ConfigError(
            field="cache_dir",
            value=str(cache_dir),
            rule="the baseline cache directory must be an absolute path",
            fix=f"pass Path({str(cache_dir)!r}).resolve()",
            source="ensure_baseline",
        )
    check_device_name(device, source="ensure_baseline")
    cache_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = task.fingerprint()
    stem = f"{safe_name(task.name)}-{fingerprint[:16]}-seed{seed}"
    state_path = cache_dir / f"{stem}.pt"
    meta_path = cache_dir / f"{stem}.json"

    cached = _read(meta_path, state_path, fingerprint, seed)
    if cached is not None:
        return cached
    with _locked(cache_dir / f"{stem}.lock"):
        cached = _read(meta_path, state_path, fingerprint, seed)
        if cached is not None:
            return cached
        model, accuracy, seconds = _train(task, seed, training_device(device))
        atomic_write(state_path, lambda f: torch.save(model.state_dict(), f))
        meta = {
            "format_version": _FORMAT_VERSION,
            "task": task.name,
            "fingerprint": fingerprint,
            "seed": seed,
            "accuracy": accuracy,
            "train_seconds": seconds,
            "epochs": task.baseline_epochs,
            "lr": task.baseline_lr,
            "batch_size": task.baseline_batch_size,
            "device": device,
        }
        # The metadata file is written last: its presence marks a complete entry.
        atomic_write(meta_path, lambda f: f.write(json.dumps(meta, indent=1).encode()))
    return Baseline(
        state_path=state_path,
        accuracy=accuracy,
        train_seconds=seconds,
        cached=False,
        device=device,
    )


def load_baseline_model(task: Task, baseline: Baseline) -> nn.Module:
    """A fresh ``task.build_model()`` holding the baseline's weights, in eval mode, its
    reparametrized weights (weight norm, ...) made plain (``trials._plain``)."""
    model = task.build_model()
    state = torch.load(baseline.state_path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    plain_weights(model)
    return model.eval()


def _train(task: Task, seed: int, device: torch.device) -> tuple[nn.Module, float, float]:
    prepare_device(device)
    x_train, y_train = device_data(task, "train", device)
    x_val, y_val = checked_data(task, "val")
    # fork_rng: seed initialisation without touching the caller's global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = task.build_model()
        seconds = fit(
            model,
            x_train,
            y_train,
            epochs=task.baseline_epochs,
            lr=task.baseline_lr,
            batch_size=task.baseline_batch_size,
            seed=seed,
            what=f"baseline of task {task.name!r}",
        )
    accuracy = float(task.metric(predict(model, x_val), y_val.numpy()))
    return model, accuracy, seconds


def _read(meta_path: Path, state_path: Path, fingerprint: str, seed: int) -> Baseline | None:
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        accuracy = float(meta["accuracy"])
        seconds = float(meta["train_seconds"])
        device = str(meta.get("device", "cpu"))
        same = meta["fingerprint"] == fingerprint and meta["seed"] == seed
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BaselineCacheError(
            f"a cached baseline's metadata must be readable JSON, but {meta_path} is not "
            f"({type(exc).__name__}: {exc}). Fix: delete {meta_path} and {state_path}; the "
            "baseline is retrained on the next run."
        ) from exc
    if not same or not state_path.exists():
        raise BaselineCacheError(
            f"a cached baseline must match its task and have its weights file, but {meta_path} "
            f"has fingerprint {meta['fingerprint'][:16]}, seed {meta['seed']} (expected "
            f"{fingerprint[:16]}, seed {seed}) and weights present={state_path.exists()}. "
            f"Fix: delete {meta_path}; the baseline is retrained on the next run."
        )
    return Baseline(
        state_path=state_path,
        accuracy=accuracy,
        train_seconds=seconds,
        cached=True,
        device=device,
    )


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
