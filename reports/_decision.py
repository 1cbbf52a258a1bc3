"""The decision record of a selection, and the Model Registry version that ships it."""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from reports._errors import ReportError
from reports._mlflow import MODEL_ARTIFACT, SearchRuns
from reports._select import Selection

_PARAMS = ("lr", "batch_size", "sparsity", "bits", "seed", "epochs")
_METRICS = (
    "accuracy",
    "size_bytes",
    "size_gzip_bytes",
    "latency_ms",
    "latency_p90_ms",
    "latency_ms_logged",
)
DECISIONS_DIR = "decisions"
MAX_TAG_CHARS = 5000


def with_remeasured_latency(df: pd.DataFrame, latencies: Mapping[str, float]) -> pd.DataFrame:
    """A copy of ``df`` whose ``latency_ms`` is the re-measured value for the runs in
    ``latencies`` (run id -> median ms); ``latency_ms_logged`` keeps the logged value and
    ``latency_remeasured`` says which rows changed. Select on the result so the final choice
    rests on the side-by-side measurement."""
    out = df.copy()
    out["latency_ms_logged"] = out["latency_ms"]
    mask = out["run_id"].isin(list(latencies))
    out.loc[mask, "latency_ms"] = out.loc[mask, "run_id"].map(dict(latencies)).astype(float)
    out["latency_remeasured"] = mask
    return out


def decision_record(
    selection: Selection,
    search: SearchRuns,
    *,
    remeasurement: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A JSON-able account of a choice: constraints, the chosen trial, the runners-up and why
    each lost, the baseline, and (optionally) how latency was re-measured."""
    return {
        "kind": "slimtune.decision",
        "version": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "experiment": search.experiment,
        "search_run_id": search.parent_run_id,
        "objectives": [{"metric": m, "direction": d} for m, d in search.objectives],
        "constraints": selection.constraints.active(),
        "constraints_applied": selection.describe_bounds(),
        "optimize": selection.optimize,
        "considered": selection.considered,
        "feasible": selection.feasible,
        "baseline": dict(search.baseline),
        "chosen": _trial(selection.chosen),
        "reason": selection.reason,
        "runners_up": [
            {**_trial(row), "why_lost": selection.why_lost(row)}
            for _, row in selection.runners_up.iterrows()
        ],
        "latency_remeasurement": dict(remeasurement) if remeasurement else None,
    }


def register_selection(
    tracking_uri: str, name: str, selection: Selection, record: Mapping[str, Any]
) -> Any:
    """Create a Model Registry version of ``name`` holding the chosen trial's ONNX artifact;
    return it (an ``mlflow`` ``ModelVersion``).

    The version's source is the child run's ``model`` artifact folder (``model/model.onnx``),
    ``run_id`` is set, its tags carry the trial's config (``lr``, ``bits``, ...), metrics, the
    constraints and the search run, and its description is the reason and the runners-up. The
    full decision record is logged on the chosen child run as
    ``decisions/<name>-v<version>.json`` (and named by the version tag ``slimtune.decision``).
    """
    if not name or not name.strip():
        raise ReportError(
            f"a registered model name must be a non-empty string, got {name!r}. Fix: pass "
            "--register NAME, e.g. --register digits-cnn."
        )
    client = MlflowClient(tracking_uri=tracking_uri)
    chosen = selection.chosen
    run_id = str(chosen["run_id"])
    try:
        client.create_registered_model(
            name, description="Compressed models chosen by `slimtune select`."
        )
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise ReportError(
                f"cannot create registered model {name!r} at {tracking_uri}: {exc.message}. "
                "Fix: use a tracking store with a Model Registry (SQLite or a server)."
            ) from exc
    run = client.get_run(run_id)
    source = f"{run.info.artifact_uri.rstrip('/')}/{MODEL_ARTIFACT.rsplit('/', 1)[0]}"
    tags = {
        "slimtune.search_run_id": str(record.get("search_run_id", "")),
        "slimtune.trial_number": str(record["chosen"].get("trial_number")),
        "slimtune.constraints": str(record.get("constraints_applied", "")),
        "slimtune.optimize": str(record.get("optimize", "")),
        **{
            f"config.{k}": str(v)
            for k, v in record["chosen"].get("params", {}).items()
            if v is not None
        },
        **{
            f"metric.{k}": f"{v:.6g}"
            for k, v in record["chosen"].get("metrics", {}).items()
            if v is not None
        },
        "artifact": str(record["chosen"].get("artifact")),
    }
    version = client.create_model_version(
        name,
        source,
        run_id=run_id,
        tags={k: v[:MAX_TAG_CHARS] for k, v in tags.items()},
        description=_description(record)[:MAX_TAG_CHARS],
    )
    artifact = f"{DECISIONS_DIR}/{name}-v{version.version}.json"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}-v{version.version}.json"
        path.write_text(
            json.dumps(
                {**record, "registered": {"name": name, "version": version.version}}, indent=2
            )
        )
        client.log_artifact(run_id, str(path), DECISIONS_DIR)
    client.set_model_version_tag(name, version.version, "slimtune.decision", artifact)
    runners = "; ".join(
        f"trial {r.get('trial_number')}: {r.get('why_lost')}" for r in record.get("runners_up", [])
    )
    if runners:
        client.set_model_version_tag(
            name, version.version, "slimtune.runners_up", runners[:MAX_TAG_CHARS]
        )
    return client.get_model_version(name, version.version)


def download_model_version(tracking_uri: str, name: str, version: str | int, dst: Path) -> Path:
    """Download a registered version's ``model.onnx`` into the folder ``dst``; return its path.

    The version is looked up in the registry; its ONNX file is read from where its source
    points: the ``model`` folder of the run it was registered from (as
    :func:`register_selection` registers).
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        mv = client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise ReportError(
            f"model version {name}/{version} does not exist at {tracking_uri}: {exc.message}. "
            "Fix: pass a name and version that `slimtune select --register` printed."
        ) from exc
    folder = MODEL_ARTIFACT.rsplit("/", 1)[0]
    if not mv.run_id or not str(mv.source).rstrip("/").endswith(f"{mv.run_id}/artifacts/{folder}"):
        raise ReportError(
            f"model version {name}/{version} must point at the '{folder}' folder of a slimtune "
            f"trial run, got source {mv.source!r} (run {mv.run_id!r}). Fix: register the "
            "version with `slimtune select --register`."
        )
    target = Path(dst)
    target.mkdir(parents=True, exist_ok=True)
    local = client.download_artifacts(mv.run_id, MODEL_ARTIFACT, dst_path=str(target))
    return Path(local)


def _trial(row: pd.Series) -> dict[str, Any]:
    return {
        "trial_number": _num(row.get("trial_number"), integer=True),
        "run_id": row.get("run_id"),
        "params": {k: _num(row.get(k)) for k in _PARAMS if k in row.index},
        "metrics": {k: _num(row.get(k)) for k in _METRICS if k in row.index},
        "artifact": row.get("artifact"),
        "format": row.get("format"),
    }


def _num(value: object, *, integer: bool = False) -> float | int | str | None:
    if value is None or (not isinstance(value, str) and pd.isna(value)):  # type: ignore[arg-type]
        return None
    if isinstance(value, str):
        return value
    v = float(value)  # type: ignore[arg-type]
    if not math.isfinite(v):
        return None
    return int(v) if integer or (v.is_integer() and abs(v) >= 1) else v


def _description(record: Mapping[str, Any]) -> str:
    lines = [str(record.get("reason", ""))]
    for r in record.get("runners_up", []):
        lines.append(f"- runner-up trial {r.get('trial_number')}: {r.get('why_lost')}")
    m = record.get("latency_remeasurement")
    if m:
        lines.append(f"Latency re-measured side by side: {m.get('method', '')}")
    return "\n".join(lines)
