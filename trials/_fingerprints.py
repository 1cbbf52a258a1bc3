"""Fingerprints of a trial: the versions of the libraries that shape its artifact, and SHA-256
digests of its weights and of its files."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import platform
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

# Distributions whose versions shape a trial's artifact, by import name -> distribution names
# tried in order (a GPU image may ship onnxruntime as onnxruntime-gpu).
_VERSIONED: dict[str, tuple[str, ...]] = {
    "slimtune": ("slimtune",),
    "torch": ("torch",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "onnxscript": ("onnxscript",),
    "torch-pruning": ("torch-pruning",),
    "onnxconverter-common": ("onnxconverter-common",),
    "numpy": ("numpy",),
}


@dataclass(frozen=True)
class VersionDrift:
    """A library whose version here differs from the one the trial ran with."""

    name: str
    recorded: str
    here: str

    def pin(self) -> str:
        """The requirement that restores the recorded version."""
        return f"{self.name}=={self.recorded}"


def library_versions() -> dict[str, str]:
    """The versions of Python and of the libraries in ``_VERSIONED`` in this process (a copy:
    callers may change it)."""
    return dict(_library_versions())


@functools.cache
def _library_versions() -> dict[str, str]:
    # Read once per process: the installed versions do not change under a running process, and
    # reading package metadata costs 2-6 ms, which a reused worker would pay every trial.
    out = {"python": platform.python_version()}
    for name, dists in _VERSIONED.items():
        out[name] = _version(dists)
    return out


def _version(dists: tuple[str, ...]) -> str:
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "absent"


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 over a model's ``state_dict``: each entry's name, dtype, shape and raw bytes, in
    order. Two models have the same digest exactly when their weights are bit-identical (the
    file format they are saved in does not enter)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
