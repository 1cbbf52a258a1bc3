"""A static HTML report of one search: opens from disk, with no server and no network.

``index.html`` holds the front table, the best trial per constraint band, the search's cost
and the plots as embedded PNGs; ``trials.html`` beside it is the interactive view (plotly.js
inlined). Nothing is fetched from anywhere when either file is opened.
"""

from __future__ import annotations

import base64
import html
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from reports._constraints import BYTES_PER_KB, Constraints
from reports._cost import SearchCost, cost_html, search_cost
from reports._early import StoppedTrials, stopped_mask
from reports._errors import ReportError
from reports._flags import failures_html, flagged
from reports._front_store import hypervolume_history
from reports._interactive import plot_interactive
from reports._knobs import knob_value, varying_knobs
from reports._mlflow import SearchRuns, load_search
from reports._noise import tolerance_summary
from reports._pareto import hypervolume_curve, pareto_ranks, reference_point
from reports._plots import plot_hypervolume, plot_tradeoffs
from reports._select import NoFeasibleTrial, select

# Fractions of the dense baseline's file size and latency, and accuracy drops in points, that
# make the constraint bands of the report.
SIZE_BANDS = (1.0, 0.5, 0.25, 0.1)
LATENCY_BANDS = (1.0, 0.75, 0.5)
DROP_BANDS = (0.5, 1.0, 2.0)


@dataclass(frozen=True)
class Band:
    """One row of the report's "best trial per constraint band" table."""

    label: str
    constraints: Constraints
    optimize: str
    chosen: pd.Series | None
    feasible: int


def constraint_bands(df: pd.DataFrame, baseline: Mapping[str, float]) -> list[Band]:
    """The best trial under budgets derived from the dense baseline.

    The most accurate trial with the ONNX file at most 100/50/25/10 % of the baseline's, and
    with latency at most 100/75/50 % of the baseline's; the smallest file and the fastest
    trial within 0.5/1/2 points of the baseline's accuracy. Bands whose baseline value is
    unknown are left out.
    """
    bands: list[tuple[str, Constraints, str]] = []
    size = baseline.get("size_bytes")
    if size:
        for f in SIZE_BANDS:
            kb = f * size / BYTES_PER_KB
            label = f"most accurate, file <= {100 * f:g}% of baseline ({kb:.1f} KB)"
            bands.append((label, Constraints(max_size_kb=kb), "accuracy"))
    lat = baseline.get("latency_ms")
    if lat:
        for f in LATENCY_BANDS:
            label = f"most accurate, latency <= {100 * f:g}% of baseline ({f * lat:.4g} ms)"
            bands.append((label, Constraints(max_latency_ms=f * lat), "accuracy"))
    if baseline.get("accuracy") is not None:
        for metric, what in (("size_bytes", "smallest file"), ("latency_ms", "fastest")):
            for d in DROP_BANDS:
                label = f"{what}, accuracy drop <= {d:g} points"
                bands.append((label, Constraints(max_accuracy_drop=d), metric))
    out = []
    for label, cons, optimize in bands:
        try:
            sel = select(df, cons, optimize=optimize, baseline=baseline)
        except NoFeasibleTrial:
            out.append(Band(label, cons, optimize, None, 0))
            continue
        out.append(Band(label, cons, optimize, sel.chosen, sel.feasible))
    return out


def build_report(
    tracking_uri: str,
    experiment: str,
    out_dir: Path,
    *,
    parent_run_id: str | None = None,
) -> Path:
    """Load a search from MLflow and write its report to ``out_dir``; return ``index.html``."""
    search = load_search(tracking_uri, experiment, parent_run_id=parent_run_id)
    history = hypervolume_history(MlflowClient(tracking_uri=tracking_uri), search.parent_run_id)
    return write_report(search, out_dir, hv_history=history, tracking_uri=tracking_uri)


def write_report(
    search: SearchRuns,
    out_dir: Path,
    *,
    hv_history: Sequence[tuple[int, float]] | None = None,
    tracking_uri: str | None = None,
) -> Path:
    """Write ``index.html`` (and ``trials.html`` and the PNGs) for ``search`` to ``out_dir``.

    ``hv_history`` is the parent's logged hypervolume as (step, value); when empty it is
    recomputed from the trials in the order they ended.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(
            f"the report folder must be creatable, got {str(out)!r}: {exc.strerror}. Fix: "
            "pass --out a folder you can write to."
        ) from exc
    objectives = search.objectives
    ranked = pareto_ranks(search.trials, objectives, tolerances=search.tolerances)
    finished = ranked[ranked["status"] == "FINISHED"]
    failed = int(((ranked["status"] != "FINISHED") & ~stopped_mask(ranked)).sum())

    reference: dict[str, float] | None
    try:
        reference = reference_point(search.baseline, objectives)
    except ReportError:
        reference = None
    history = list(hv_history or [])
    if not history and reference is not None and len(finished):
        history = [
            (k, hv)
            for k, hv, _ in hypervolume_curve(
                finished, objectives, reference, tolerances=search.tolerances
            )
        ]

    pngs = [
        *plot_tradeoffs(
            finished, objectives, out, baseline=search.baseline, tolerances=search.tolerances
        )
    ]
    pngs.append(plot_hypervolume(history, out / "hypervolume.png", reference=reference))
    plot_interactive(
        ranked,
        objectives,
        out / "trials.html",
        baseline=search.baseline,
        knobs=varying_knobs(search.parent_params, ranked),
    )

    cost = search_cost(search)
    bands = constraint_bands(ranked, search.baseline)
    index = out / "index.html"
    index.write_text(
        _page(
            search, ranked, finished, failed, reference, history, pngs, cost, bands, tracking_uri
        ),
        encoding="utf-8",
    )
    return index


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}
.muted{color:#666;font-size:.85em}img{max-width:100%;border:1px solid #eee;margin:.3em 0}
code{background:#f4f4f4;padding:0 .2em}
"""

# The columns of a trials table: these, with the knobs that vary in the search after the rank.
_COLUMNS = [
    ("trial_number", "trial", "{:d}"),
    ("pareto_rank", "rank", "{:d}"),
    ("accuracy", "accuracy", "{:.4f}"),
    ("size_bytes", "file KB", "kb"),
    ("size_gzip_bytes", "gzip KB", "kb"),
    ("latency_ms", "latency ms", "{:.4g}"),
    ("latency_p90_ms", "p90 ms", "{:.4g}"),
    ("latency_flag", "latency", "{}"),
    ("artifact", "artifact", "{}"),
    ("run_id", "MLflow run", "{}"),
]


def _page(
    search: SearchRuns,
    ranked: pd.DataFrame,
    finished: pd.DataFrame,
    failed: int,
    reference: Mapping[str, float] | None,
    history: list[tuple[int, float]],
    pngs: list[Path],
    cost: SearchCost,
    bands: list[Band],
    tracking_uri: str | None,
) -> str:
    e = html.escape
    objectives = ", ".join(f"{m} ({d})" for m, d in search.objectives)
    knobs = varying_knobs(search.parent_params, ranked)
    front = finished[finished["pareto"]]
    shown = front[front["pareto_representative"]] if "pareto_representative" in front else front
    first, direction = search.objectives[0]
    shown = shown.sort_values(
        [first, "trial_number"], ascending=[direction == "minimize", True], kind="stable"
    )
    strict = int(finished["pareto_strict"].sum()) if "pareto_strict" in finished else len(front)
    tolerances = tolerance_summary(search.objectives, search.tolerances, finished)
    tol_items = "".join(f"<li>{e(m)}: {e(t)}</li>" for m, t in tolerances.items())
    failures = ranked[ranked["status"] != "FINISHED"].sort_values("trial_number", kind="stable")
    hv_text = f"{history[-1][1]:.4f} after {history[-1][0]} finished trials" if history else "n/a"
    ref_text = (
        ", ".join(f"{k} = {v:.4g}" for k, v in reference.items())
        if reference
        else "not available (the search has no complete baseline)"
    )
    base = search.baseline
    base_text = (
        ", ".join(f"{k} = {_fmt_value(k, v)}" for k, v in sorted(base.items())) if base else "none"
    )
    where = ""
    if tracking_uri and "@" not in tracking_uri:
        where = f" Tracking store: <code>{e(tracking_uri)}</code>."
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>slimtune report: {e(search.experiment)}</title><style>{_STYLE}</style></head>",
        "<body>",
        f"<h1>slimtune search report: {e(search.experiment)}</h1>",
        f"<p>Search run <code>{e(search.parent_run_id)}</code>.{where} Objectives: "
        f"{e(objectives)}. {len(finished)} trials finished, {failed} did not. "
        f"Generated {e(time.strftime('%Y-%m-%d %H:%M:%S'))}.</p>",
        f"<p>Dense baseline: {e(base_text)}.</p>",
        "<h2>Hypervolume</h2>",
        f"<p><b>{e(hv_text)}</b>. It is the fraction of the box from the reference point to "
        "the ideal (accuracy 1, size 0, latency 0), objectives scaled to the reference, that "
        f"the finished trials dominate. Reference point (fixed by the baseline: 0 accuracy, 2x "
        f"its size and latency): {e(ref_text)}. It is computed on the measured values, with no "
        "tolerance.</p>",
        f"<h2>Pareto front ({len(front)} of {len(finished)} finished trials, "
        f"{len(shown)} groups)</h2>",
        "<p>Noise-aware dominance (docs/noise.md): a trial dominates another when it is no "
        "worse within the tolerance on every objective and better beyond it on one. Trials "
        "tied within the tolerance on every objective form a group, shown by one "
        "representative (the smallest file, then the highest accuracy); <i>tied</i> names the "
        f"others. The strict front (no tolerance) has {strict} trials (tag pareto_strict). "
        f"Tolerances:</p><ul>{tol_items}</ul>",
        _table(flagged(shown), knobs, tied=True),
        "<h2>Best trial per constraint band</h2>",
        _bands_table(bands),
        "<h2>Cost of the search</h2>",
        cost_html(cost),
        "<h2>Stopped early</h2>",
        StoppedTrials.of(ranked).html(),
        "<h2>Plots</h2>",
        "<p>Interactive view of every trial (hover for details; opens offline): "
        "<a href='trials.html'>trials.html</a>.</p>",
        *(
            f"<img alt='{e(p.stem)}' src='data:image/png;base64,"
            f"{base64.b64encode(p.read_bytes()).decode('ascii')}'>"
            for p in pngs
        ),
        f"<h2>All trials ({len(ranked)})</h2>",
        "<details><summary>show the table</summary>",
        _table(flagged(ranked.sort_values("trial_number", kind="stable")), knobs, status=True),
        "</details>",
        f"<h2>Failed trials ({len(failures)})</h2>",
        failures_html(failures, knobs),
        "<p class='muted'>Accuracy is measured on the exported ONNX file in ONNX Runtime; "
        "sizes are the ONNX file (1 KB = 1000 bytes) and its gzip; latency is the batch-1 "
        "median. A simulated artifact has no real ONNX Runtime format at its bit-width.</p>",
        "</body></html>",
    ]
    return "\n".join(parts)


def _table(
    df: pd.DataFrame, knobs: Sequence[str] = (), *, status: bool = False, tied: bool = False
) -> str:
    cols = [c for c in _COLUMNS if c[0] in df.columns]
    at = 2 if len(cols) > 1 and cols[1][0] == "pareto_rank" else 1
    cols[at:at] = [(k, k, f"knob:{k}") for k in knobs if k in df.columns]
    if tied and "pareto_tied" in df.columns:
        cols.append(("pareto_tied", "tied (within tolerance)", "{}"))
    if status and "status" in df.columns:
        cols.insert(1, ("status", "status", "{}"))
    head = "".join(
        f"<th class='l'>{html.escape(h)}</th>" if f == "{}" else f"<th>{html.escape(h)}</th>"
        for _, h, f in cols
    )
    rows = []
    for _, row in df.iterrows():
        cells = []
        for col, _, fmt in cols:
            text = _cell(row.get(col), fmt)
            cls = " class='l'" if fmt == "{}" else ""
            cells.append(f"<td{cls}>{html.escape(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    if not rows:
        return "<p class='muted'>none</p>"
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _bands_table(bands: list[Band]) -> str:
    if not bands:
        return "<p class='muted'>no bands: the search has no baseline metrics</p>"
    rows = []
    for b in bands:
        if b.chosen is None:
            rows.append(
                f"<tr><td class='l'>{html.escape(b.label)}</td>"
                "<td class='l' colspan='6'>no trial meets it</td></tr>"
            )
            continue
        c = b.chosen
        rows.append(
            f"<tr><td class='l'>{html.escape(b.label)}</td><td>{int(c['trial_number'])}</td>"
            f"<td>{b.feasible}</td><td>{float(c['accuracy']):.4f}</td>"
            f"<td>{float(c['size_bytes']) / BYTES_PER_KB:.1f}</td>"
            f"<td>{float(c['latency_ms']):.4g}</td>"
            f"<td class='l'>{html.escape(str(c.get('run_id')))}</td></tr>"
        )
    head = (
        "<tr><th class='l'>band</th><th>trial</th><th>feasible</th><th>accuracy</th>"
        "<th>file KB</th><th>latency ms</th><th class='l'>MLflow run</th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>"


def _cell(value: object, fmt: str) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):  # type: ignore[arg-type]
        return ""
    if fmt.startswith("knob:"):
        return knob_value(fmt[len("knob:") :], value)
    if fmt == "kb":
        return f"{float(value) / BYTES_PER_KB:.1f}"  # type: ignore[arg-type]
    if fmt == "{:d}":
        return f"{int(value):d}"  # type: ignore[call-overload]
    if fmt in ("{:.2e}", "{:.2f}", "{:.4f}", "{:.4g}"):
        return fmt.format(float(value))  # type: ignore[arg-type]
    return str(value)


def _fmt_value(name: str, value: float) -> str:
    if name.endswith("_bytes"):
        return f"{value / BYTES_PER_KB:.1f} KB"
    return f"{value:.4g}"
