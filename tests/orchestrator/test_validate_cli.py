"""`slimtune validate` runs a task plugin through every stage on a tiny batch, in seconds."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

PLUGIN_HEAD = """
import torch
from torch import nn
from trials import Task

class Base(Task):
    name = "plugin"
    def build_model(self):
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    def train_data(self):
        g = torch.Generator().manual_seed(0)
        return torch.rand(32, 1, 4, 4, generator=g), torch.randint(0, 3, (32,), generator=g)
    def val_data(self):
        g = torch.Generator().manual_seed(1)
        return torch.rand(8, 1, 4, 4, generator=g), torch.randint(0, 3, (8,), generator=g)
"""

PLUGINS = {
    "good": "class T(Base):\n    pass\n",
    # float(tensor) in forward: torch.export cannot trace it (a data-dependent Python value).
    "noexport": textwrap.dedent(
        """
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(16, 3)
            def forward(self, x):
                if float(x.mean()) > 0.5:
                    return self.fc(x.flatten(1))
                return -self.fc(x.flatten(1))
        class T(Base):
            def build_model(self):
                return Net()
        """
    ),
    "badshape": textwrap.dedent(
        """
        class T(Base):
            def val_data(self):
                return torch.rand(8, 1, 5, 5), torch.randint(0, 3, (8,))
        """
    ),
    "badlabels": textwrap.dedent(
        """
        class T(Base):
            def train_data(self):
                return torch.rand(32, 1, 4, 4), torch.randint(0, 9, (32,))
        """
    ),
    "floatlabels": textwrap.dedent(
        """
        class T(Base):
            def train_data(self):
                return torch.rand(32, 1, 4, 4), torch.rand(32)
        """
    ),
    "nanval": textwrap.dedent(
        """
        class T(Base):
            def val_data(self):
                x, y = super().val_data()
                x[3, 0, 1, 1] = float("nan")
                return x, y
        """
    ),
    # A GRU classifier: int8 leaves its recurrent weights fp32 and structured pruning has only
    # the output layer to cut.
    "gru": textwrap.dedent(
        """
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.rnn = nn.GRU(4, 16, batch_first=True)
                self.head = nn.Linear(16, 3)
            def forward(self, x):
                out, _ = self.rnn(x.flatten(1, 2))
                return self.head(out[:, -1])
        class T(Base):
            def build_model(self):
                return Net()
        """
    ),
    "notmodule": textwrap.dedent(
        """
        class T(Base):
            def build_model(self):
                return "a model"
        """
    ),
}


def _validate(
    tmp_path: Path, module: str, attr: str = "T", extra: str = ""
) -> subprocess.CompletedProcess[str]:
    (tmp_path / f"{module}.py").write_text(PLUGIN_HEAD + PLUGINS.get(module, ""))
    (tmp_path / "c.yaml").write_text(f"experiment: x\ntask: {module}:{attr}\n{extra}")
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "validate", "c.yaml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_a_good_plugin_passes(tmp_path: Path) -> None:
    proc = _validate(tmp_path, "good")
    assert proc.returncode == 0, proc.stderr
    assert "task 'good:T': valid" in proc.stdout
    assert "export" in proc.stdout
    # One tiny trial of each scheme the default space allows (bits 8 and 32, unstructured).
    assert "compression schemes: 2 exported and export-checked" in proc.stdout
    assert "8 bits x unstructured" in proc.stdout


GRU_SPACE = "space:\n  bits: {choices: [32, 8]}\n  pruning: {choices: [unstructured, structured]}\n"


def test_knobs_a_gru_cannot_take_are_refused_in_seconds_naming_layer_knob_and_fix(
    tmp_path: Path,
) -> None:
    t0 = time.perf_counter()
    proc = _validate(tmp_path, "gru", extra=GRU_SPACE)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr
    assert "Traceback" not in err
    assert "space.bits=8 with space.pruning=unstructured" in err  # the knob
    assert "rnn.weight_hh_l0" in err and "keep_float: [rnn]" in err  # the layer, the fix
    assert "space.bits=32 with space.pruning=structured" in err and "rnn (GRU)" in err
    assert "space.bits=32 with space.pruning=unstructured" not in err  # fp32 works
    assert elapsed < 90


def test_a_gru_opted_out_by_name_validates(tmp_path: Path) -> None:
    extra = "space:\n  bits: {choices: [32, 8, 4]}\nquantization:\n  keep_float: [rnn]\n"
    proc = _validate(tmp_path, "gru", extra=extra)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "compression schemes: 3 exported and export-checked" in proc.stdout


@pytest.mark.parametrize(
    ("module", "step", "words"),
    [
        ("noexport", "export", "torch.onnx.export"),
        ("badshape", "data", "same per-sample shape"),
        ("badlabels", "forward", "class indices below"),
        ("floatlabels", "data", "int64"),
        ("nanval", "data", "non-finite value(s) (NaN) in 1 sample(s) of the val split"),
        ("notmodule", "build_model", "torch.nn.Module"),
    ],
)
def test_a_broken_plugin_is_rejected_in_seconds_naming_plugin_and_step(
    tmp_path: Path, module: str, step: str, words: str
) -> None:
    t0 = time.perf_counter()
    proc = _validate(tmp_path, module)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"step '{step}'" in proc.stderr and words in proc.stderr
    assert "Traceback" not in proc.stderr
    assert elapsed < 60


@pytest.mark.parametrize(
    ("ref", "words"),
    [("nosuchmodule:T", "nosuchmodule"), ("good:Missing", "Missing")],
)
def test_unloadable_references_are_named(tmp_path: Path, ref: str, words: str) -> None:
    module, attr = ref.split(":")
    proc = _validate(tmp_path, module, attr) if module == "good" else None
    if proc is None:
        (tmp_path / "c.yaml").write_text(f"experiment: x\ntask: {ref}\n")
        proc = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", "validate", "c.yaml"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert proc.returncode == 2
    assert words in proc.stderr and "Traceback" not in proc.stderr


def test_a_search_refuses_a_doomed_space_before_ray_starts(tmp_path: Path) -> None:
    (tmp_path / "gru.py").write_text(PLUGIN_HEAD + PLUGINS["gru"])
    (tmp_path / "c.yaml").write_text(f"experiment: x\ntask: gru:T\ntrials: 2\n{GRU_SPACE}")
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "MLFLOW_DISABLE_TELEMETRY": "true"}
    work = tmp_path / "work"
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "search", "c.yaml", "--workdir", str(work)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "space.bits=8 with space.pruning=unstructured" in proc.stderr
    assert "keep_float: [rnn]" in proc.stderr and "Traceback" not in proc.stderr
    # Refused before Ray and MLflow: no store, no Ray state, no trial.
    assert not (work / "mlflow.db").exists() and not (work / ".slimtune" / "ray").exists()
    assert "Traceback" not in proc.stderr


def test_a_passing_scheme_check_is_cached_for_the_next_search(tmp_path: Path) -> None:
    import io

    from orchestrator._schemes import check_space_schemes
    from searchspace import parse_spec
    from trials import load_task

    spec = parse_spec("experiment: x\ntask: digits\n")
    task = load_task(spec.task)
    first, second = io.StringIO(), io.StringIO()
    checks = check_space_schemes(spec, task, out=first, cache_dir=tmp_path)
    assert "exported and export-checked" in first.getvalue()
    assert check_space_schemes(spec, task, out=second, cache_dir=tmp_path) == checks
    assert "(cached," in second.getvalue()
    # A damaged cache file is checked again, not trusted.
    (cached,) = (tmp_path / "schemes").iterdir()
    cached.write_text("{not json")
    third = io.StringIO()
    again = check_space_schemes(spec, task, out=third, cache_dir=tmp_path)
    assert [(c.bits, c.pruning) for c in again] == [(c.bits, c.pruning) for c in checks]
    assert "exported and export-checked" in third.getvalue()
