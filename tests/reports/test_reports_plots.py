"""plot_tradeoffs writes real PNGs; the package keeps to its allowed imports."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import reports
from reports import ReportError, Tolerance, plot_tradeoffs
from reports._plots import pair_front

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OBJECTIVES = [("accuracy", "maximize"), ("size_gzip_bytes", "minimize"), ("latency_ms", "minimize")]


def _df(n: int = 20, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "trial_number": np.arange(n),
            "status": ["FINISHED"] * (n - 1) + ["FAILED"],
            "accuracy": rng.uniform(0.8, 0.99, n),
            "size_bytes": rng.uniform(2e4, 5e5, n),
            "size_gzip_bytes": rng.uniform(1e4, 4e5, n),
            "latency_ms": rng.uniform(0.5, 3.0, n),
            "bits": rng.choice([2, 4, 8, 32], n),
            "sparsity": rng.uniform(0, 0.9, n),
            "artifact": ["simulated", "real"] * (n // 2),
        }
    )


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5_000


def test_plots_are_written(tmp_path: Path) -> None:
    paths = plot_tradeoffs(
        _df(),
        OBJECTIVES,
        tmp_path / "plots",
        baseline={"accuracy": 0.99, "size_gzip_bytes": 4.5e5, "latency_ms": 3.1},
    )
    assert [p.name for p in paths] == ["accuracy_vs_size.png", "accuracy_vs_latency.png"]
    assert all(_is_png(p) for p in paths)


def test_size_axis_falls_back_to_size_bytes(tmp_path: Path) -> None:
    df = _df().drop(columns=["size_gzip_bytes"])
    paths = plot_tradeoffs(df, [("accuracy", "maximize"), ("latency_ms", "minimize")], tmp_path)
    assert all(_is_png(p) for p in paths)


def test_no_finished_trial_still_draws(tmp_path: Path) -> None:
    df = _df().iloc[:0]
    assert all(_is_png(p) for p in plot_tradeoffs(df, OBJECTIVES, tmp_path))


def test_missing_column_is_named(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=r"missing \['latency_ms'\]"):
        plot_tradeoffs(_df().drop(columns=["latency_ms"]), OBJECTIVES[:2], tmp_path)


def test_reports_keeps_to_its_imports() -> None:
    """No ray/torch/onnxruntime, no pyplot global state, no fluent MLflow API."""
    allowed_mlflow = {"mlflow.tracking", "mlflow.entities", "mlflow.exceptions"}
    package = Path(reports.__file__).parent
    for source in package.glob("*.py"):
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                root = name.split(".")[0]
                assert root not in {"ray", "torch", "onnxruntime"}, (source.name, name)
                assert "pyplot" not in name, (source.name, name)
                if root == "mlflow":
                    assert name in allowed_mlflow, (source.name, name)


def test_the_step_line_uses_the_searchs_noise_aware_dominance() -> None:
    """The 2-D front drawn on a plot is ranked by the same rule as the front: trial 1 is only
    0.2 points more accurate than trial 0, inside a 1 % accuracy tolerance, and 1.5x larger."""
    df = pd.DataFrame(
        {
            "status": ["FINISHED", "FINISHED", "FINISHED"],
            "accuracy": [0.950, 0.952, 0.990],
            "size_bytes": [100_000.0, 150_000.0, 400_000.0],
        }
    )
    strict = pair_front(df, "size_bytes", {"accuracy": Tolerance("accuracy", "exact")})
    assert strict.tolist() == [True, True, True]
    tolerant = pair_front(df, "size_bytes", {"accuracy": Tolerance("accuracy", "relative", 0.01)})
    assert tolerant.tolist() == [True, False, True]
