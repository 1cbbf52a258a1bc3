"""An interactive view of every trial (plotly), self-contained: it opens without a network."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from reports._errors import ReportError
from reports._flags import latency_flag
from reports._pareto import pareto_ranks

_SIZE_METRICS = ("size_gzip_bytes", "size_bytes")
_PARAMS = ("lr", "batch_size", "sparsity", "bits")
_METRICS = ("accuracy", "size_bytes", "size_gzip_bytes", "latency_ms", "latency_p90_ms")


def interactive_figure(
    df: pd.DataFrame,
    objectives: Sequence[tuple[str, str]],
    *,
    baseline: Mapping[str, float] | None = None,
    knobs: Sequence[str] = _PARAMS,
) -> go.Figure:
    """Accuracy vs size and vs latency for every FINISHED trial, hover for its details.

    Colour is the non-dominated rank (0 = the Pareto front, drawn larger with a black edge);
    a diamond marks a simulated artifact. Hovering a point shows the trial number, MLflow run
    id, its ``knobs`` (e.g. :func:`reports.varying_knobs`), metrics, artifact kind, rank, the
    trials it ties with within the tolerances and a flag on an unconverged latency. The
    baseline, when given, is a star.
    """
    size_metric = next((m for m, _ in objectives if m in _SIZE_METRICS), "size_bytes")
    needed = ["accuracy", size_metric, "latency_ms"]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ReportError(
            f"the interactive plot needs the columns {needed}; missing {missing} "
            f"(columns are {list(df.columns)}). Fix: pass the trials table of load_search."
        )
    data = df if "pareto_rank" in df.columns else pareto_ranks(df, objectives)
    if "status" in data.columns:
        data = data[data["status"] == "FINISHED"]
    data = data[np.isfinite(pd.to_numeric(data["accuracy"], errors="coerce").astype(float))]

    fig = make_subplots(
        rows=1,
        cols=2,
        shared_yaxes=True,
        horizontal_spacing=0.06,
        subplot_titles=(f"accuracy vs {size_metric}", "accuracy vs latency_ms"),
    )
    hover = [_hover(row, knobs) for _, row in data.iterrows()]
    rank = data["pareto_rank"].astype("Float64").fillna(-1).to_numpy(dtype=float)
    on_front = rank == 0
    simulated = (data.get("artifact", pd.Series(index=data.index)) == "simulated").to_numpy()
    for col, (metric, scale) in enumerate(((size_metric, 1e-3), ("latency_ms", 1.0)), start=1):
        fig.add_trace(
            go.Scatter(
                x=data[metric].to_numpy(dtype=float) * scale,
                y=data["accuracy"].to_numpy(dtype=float) * 100,
                mode="markers",
                name="trials" if col == 1 else "trials ",
                showlegend=col == 1,
                text=hover,
                hovertemplate="%{text}<extra></extra>",
                marker={
                    "color": rank,
                    "colorscale": "Viridis_r",
                    "cmin": 0,
                    "size": np.where(on_front, 13, 8).tolist(),
                    "symbol": np.where(simulated, "diamond", "circle").tolist(),
                    "line": {"width": np.where(on_front, 1.5, 0).tolist(), "color": "black"},
                    "colorbar": {"title": {"text": "Pareto rank"}} if col == 2 else None,
                    "showscale": col == 2,
                },
            ),
            row=1,
            col=col,
        )
        if baseline and metric in baseline and "accuracy" in baseline:
            fig.add_trace(
                go.Scatter(
                    x=[baseline[metric] * scale],
                    y=[baseline["accuracy"] * 100],
                    mode="markers",
                    name="dense baseline",
                    showlegend=col == 1,
                    marker={"symbol": "star", "size": 16, "color": "red"},
                    hovertemplate=(
                        f"dense baseline<br>accuracy={baseline['accuracy']:.4f}<br>"
                        f"{metric}={baseline[metric]:.4g}<extra></extra>"
                    ),
                ),
                row=1,
                col=col,
            )
    fig.update_xaxes(title_text=f"{size_metric} (KB, 1 KB = 1000 bytes)", row=1, col=1)
    fig.update_xaxes(title_text="latency, batch 1, median in ONNX Runtime (ms)", row=1, col=2)
    fig.update_yaxes(title_text="accuracy, ONNX Runtime (%)", row=1, col=1)
    fig.update_layout(
        title=f"{len(data)} finished trials, {int(on_front.sum())} on the Pareto front "
        "(diamond = simulated artifact)",
        template="plotly_white",
        height=560,
    )
    return fig


def plot_interactive(
    df: pd.DataFrame,
    objectives: Sequence[tuple[str, str]],
    path: Path,
    *,
    baseline: Mapping[str, float] | None = None,
    knobs: Sequence[str] = _PARAMS,
) -> Path:
    """Write :func:`interactive_figure` as a standalone HTML file (plotly.js inlined)."""
    fig = interactive_figure(df, objectives, baseline=baseline, knobs=knobs)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(out), include_plotlyjs=True, full_html=True, config={"displaylogo": False})
    return out


def _hover(row: pd.Series, params: Sequence[str] = _PARAMS) -> str:
    lines = []
    if "trial_number" in row and not pd.isna(row["trial_number"]):
        lines.append(f"<b>trial {int(row['trial_number'])}</b>")
    if "run_id" in row and row["run_id"] is not None:
        lines.append(f"run {row['run_id']}")
    knobs = [f"{p}={_fmt(row[p])}" for p in params if p in row and not pd.isna(row[p])]
    if knobs:
        lines.append(" ".join(knobs))
    for m in _METRICS:
        if m in row and not pd.isna(row[m]):
            lines.append(f"{m}={_fmt(row[m])}")
    if row.get("artifact"):
        lines.append(f"artifact={row['artifact']} format={row.get('format') or '?'}")
    if "pareto_rank" in row and not pd.isna(row["pareto_rank"]):
        lines.append(f"pareto_rank={int(row['pareto_rank'])}")
    if row.get("pareto_tied"):
        lines.append(f"tied within tolerance with trials {row['pareto_tied']}")
    flag = latency_flag(row)
    if flag:
        lines.append(f"latency {flag}")
    return "<br>".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float | np.floating):
        return f"{float(value):.4g}"
    return str(value)
