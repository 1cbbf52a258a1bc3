"""The dense baseline of a search: trained (or loaded from the cache) in the driver, exported and
measured by the search's meter, and logged on the search run; every trial is compared with it."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient

from orchestrator._latency import MeterRef
from orchestrator._progress import format_metrics
from orchestrator._tracking import log_metrics, log_onnx
from searchspace import SearchSpec, SlimtuneError
from trials import Task, TrialSettings, ensure_baseline, run_baseline


def measure_baseline(
    spec: SearchSpec,
    client: MlflowClient,
    parent: str,
    *,
    task: Task,
    cache_dir: Path,
    runs_dir: Path,
    out: TextIO,
    meter: MeterRef,
) -> None:
    """Train (or load) the dense model and measure its export: the reference for every trial.
    Its latency is measured by the search's meter, as every trial's is."""
    device = baseline_device(spec, out)
    base = ensure_baseline(task, seed=spec.seed, cache_dir=cache_dir, device=device)
    how = (
        "loaded from cache"
        if base.cached
        else f"trained on {base.device} in {base.train_seconds:.0f} s"
    )
    work = runs_dir / "baseline"
    work.mkdir(parents=True, exist_ok=True)
    settings = TrialSettings.for_search(spec, seed=spec.seed, cache_dir=cache_dir, work_dir=work)
    search_meter = meter.connect()
    with search_meter.working():
        result = run_baseline(task, settings, meter=search_meter)
    log_metrics(client, parent, {f"baseline_{k}": v for k, v in result.metrics.items()})
    where = {f"baseline_{k}": v for k, v in result.tags.items() if k.startswith("latency_")}
    client.log_batch(parent, tags=[RunTag(k, v) for k, v in where.items()])
    log_onnx(client, parent, result.onnx_path, "baseline")
    print(f"dense baseline ({how}): {format_metrics(result.metrics)}", file=out, flush=True)
    print(_latency_place(result.tags, meter), file=out, flush=True)


def baseline_device(spec: SearchSpec, out: TextIO) -> str:
    """Where the driver trains the dense baseline: on the GPU when the trials train on GPUs
    and this process sees one (one machine), else on its CPUs (e.g. a driver on a head node
    without GPUs; the trials still fine-tune on theirs)."""
    if spec.resources.gpu <= 0:
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    print(
        "note: trials train on GPUs, but this process sees none: the dense baseline (if not "
        "cached) trains on the CPU",
        file=out,
        flush=True,
    )
    return "cpu"


def _latency_place(tags: dict[str, str], meter: MeterRef) -> str:
    where = tags.get("latency_where", "inline")
    node = tags.get("latency_node", "?")
    ip = tags.get("latency_node_ip") or tags.get("latency_host", "")
    gate = {"exclusive": "trials on that machine pause while it measures", "off": "no pause"}
    how = gate.get(tags.get("latency_gate", ""), "gate timed out")
    if meter.pinning is not None:
        cores = ",".join(str(c) for c in meter.pinning.cores)
        how = f"it has core(s) {cores} to itself, the trials there keep to the others"
    return (
        f"latency: measured {'by the search meter' if where == 'actor' else 'in each trial'} "
        f"on node {node[:12]} ({ip}); isolation {meter.isolation} ({meter.rule}): {how}"
    )


class BaselineFailed(SlimtuneError):
    """Training or measuring the dense baseline failed."""
