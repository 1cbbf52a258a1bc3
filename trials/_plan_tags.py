"""What a trial says about its plan: the tags of the plan the allocator made (predicted cost,
target, each layer's setting), the measured cost next to the predicted one, and ``plan.json``."""

from __future__ import annotations

from pathlib import Path

from trials._plan import CompressionPlan

PLAN_JSON = "plan.json"


def plan_tags(plan: CompressionPlan) -> dict[str, str]:
    """The tags of a plan: its kind, the histogram of formats and, for a mixed plan, the budget
    and what it is a fraction of, the predicted size (and latency, when a latency table was
    measured), the target, whether the prediction meets it, each layer's setting."""
    tags = {"plan": plan.kind, "plan_formats": plan.histogram()}
    if plan.kind != "mixed":
        return tags
    tags["plan_budget"] = f"{plan.budget:g}"
    tags["plan_budget_metric"] = plan.budget_metric
    tags["plan_predicted_bytes"] = str(plan.predicted_bytes)
    if plan.predicted_ms is not None:
        tags["plan_predicted_ms"] = f"{plan.predicted_ms:.6g}"
    if plan.budget_metric == "latency":
        predicted, target = plan.predicted_ms, plan.target_ms
        if target is not None:
            tags["plan_target_ms"] = f"{target:.6g}"
    else:
        predicted, target = plan.predicted_bytes, plan.target_bytes
        tags["plan_target_bytes"] = str(target)
    if predicted is not None and target is not None:
        tags["plan_budget_met"] = (
            "true"
            if predicted <= target
            else "false: even the cheapest format of every layer is predicted over budget"
        )
    tags["plan_layers"] = ",".join(
        f"{n}={s.format}" + (f"@{s.keep:.3g}" if s.keep < 1 else "") for n, s in plan.layers
    )[:5000]
    tags["plan_keeps"] = plan.keep_histogram()
    return tags


def measured_plan_tags(
    plan: CompressionPlan, size_bytes: float, latency_ms: float | None = None
) -> dict[str, str]:
    """The measured size (and latency) next to the predicted ones, and each prediction's error
    (``(predicted - measured) / measured``)."""
    tags: dict[str, str] = {}
    if plan.predicted_bytes is not None:
        error = (plan.predicted_bytes - size_bytes) / size_bytes if size_bytes else 0.0
        tags["plan_measured_bytes"] = str(int(size_bytes))
        tags["plan_prediction_error"] = f"{error:+.3f}"
    if plan.predicted_ms is not None and latency_ms:
        tags["plan_measured_ms"] = f"{latency_ms:.6g}"
        tags["plan_latency_error"] = f"{(plan.predicted_ms - latency_ms) / latency_ms:+.3f}"
    return tags


def write_plan(plan: CompressionPlan, work_dir: Path) -> Path:
    """``plan.json`` next to the trial's ONNX file (a search logs it as ``trial/plan.json``)."""
    path = work_dir / PLAN_JSON
    path.write_text(plan.to_json())
    return path
