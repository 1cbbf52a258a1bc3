"""Trade-off plots: accuracy against size and against latency, with the Pareto front marked."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter

from reports._errors import ReportError
from reports._noise import Tolerance
from reports._pareto import pareto_front, pareto_ranks

_SIZE_METRICS = ("size_gzip_bytes", "size_bytes")
_X_LABELS = {
    "size_bytes": "ONNX file size (KB, 1 KB = 1000 bytes)",
    "size_gzip_bytes": "ONNX file size, gzip-compressed (KB, 1 KB = 1000 bytes)",
    "latency_ms": "latency, batch 1, median in ONNX Runtime (ms)",
}
_X_SCALE = {"size_bytes": 1e-3, "size_gzip_bytes": 1e-3, "latency_ms": 1.0}


def plot_tradeoffs(
    df: pd.DataFrame,
    objectives: Sequence[tuple[str, str]],
    out_dir: Path,
    *,
    baseline: Mapping[str, float] | None = None,
    tolerances: Mapping[str, Tolerance] | None = None,
) -> list[Path]:
    """Write ``accuracy_vs_size.png`` and ``accuracy_vs_latency.png`` to ``out_dir``.

    Every trial with the two metrics is a grey dot; trials on the Pareto front (column
    ``pareto``, computed over ``objectives`` when absent) are coloured by bit-width and
    annotated with bits and sparsity (``*`` marks a simulated artifact); the 2-D front of each
    plotted pair (:func:`pair_front`, the same noise-aware dominance under ``tolerances``) is
    drawn as a step line; ``baseline`` (metric -> value, e.g. the uncompressed
    model's ``accuracy`` and ``size_bytes``) is a star. The size axis uses the size metric
    among the objectives, else ``size_bytes``, in KB; it is logarithmic when sizes span more
    than 10x.
    """
    size_metric = next((m for m, _ in objectives if m in _SIZE_METRICS), "size_bytes")
    needed = ["accuracy", size_metric, "latency_ms"]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ReportError(
            f"plot_tradeoffs needs the columns {needed}; missing {missing} "
            f"(columns are {list(df.columns)})"
        )
    if "pareto" not in df.columns:
        df = pareto_front(df, objectives, tolerances=tolerances)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [
        _tradeoff(df, size_metric, out / "accuracy_vs_size.png", baseline, tolerances),
        _tradeoff(df, "latency_ms", out / "accuracy_vs_latency.png", baseline, tolerances),
    ]


def pair_front(
    df: pd.DataFrame, x_metric: str, tolerances: Mapping[str, Tolerance] | None = None
) -> pd.Series:
    """Which rows of ``df`` are on the 2-D front of accuracy (maximized) against ``x_metric``
    (minimized), by the search's noise-aware dominance (:func:`reports.pareto_ranks` over the
    two objectives, with their ``tolerances``): the step line of a trade-off plot."""
    pair = [("accuracy", "maximize"), (x_metric, "minimize")]
    ranks = pareto_ranks(df, pair, tolerances=tolerances)["pareto_rank"]
    return (ranks == 0).fillna(False).astype(bool)


def _tradeoff(
    df: pd.DataFrame,
    x_metric: str,
    path: Path,
    baseline: Mapping[str, float] | None,
    tolerances: Mapping[str, Tolerance] | None,
) -> Path:
    fig = Figure(figsize=(7.5, 5.0), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    scale = _X_SCALE.get(x_metric, 1.0)

    x_all = pd.to_numeric(df[x_metric], errors="coerce").to_numpy(dtype=float) * scale
    y_all = pd.to_numeric(df["accuracy"], errors="coerce").to_numpy(dtype=float) * 100
    keep = np.isfinite(x_all) & np.isfinite(y_all)
    if "status" in df.columns:
        keep &= (df["status"] == "FINISHED").to_numpy(dtype=bool)
    data = df[keep]
    x, y = x_all[keep], y_all[keep]
    on_front = data["pareto"].fillna(False).astype(bool).to_numpy()

    ax.scatter(x, y, s=16, color="0.72", label=f"trials ({len(data)})", zorder=1)
    if len(data):
        pair = pair_front(data, x_metric, tolerances).to_numpy(dtype=bool)
        order = np.argsort(x[pair], kind="stable")
        ax.step(
            x[pair][order],
            y[pair][order],
            where="post",
            color="tab:red",
            lw=1.0,
            alpha=0.6,
            label=f"2-D front (accuracy vs {x_metric}, noise-aware)",
            zorder=2,
        )
    _draw_front(ax, data[on_front], x[on_front], y[on_front])

    xs = list(x)
    if baseline and "accuracy" in baseline and x_metric in baseline:
        bx, by = baseline[x_metric] * scale, baseline["accuracy"] * 100
        ax.scatter(
            [bx],
            [by],
            marker="*",
            s=220,
            color="gold",
            edgecolor="black",
            zorder=4,
            label="baseline (uncompressed)",
        )
        xs.append(bx)
    positive = [v for v in xs if v > 0]
    xlabel = _X_LABELS.get(x_metric, x_metric)
    if positive and max(positive) / min(positive) > 10:
        ax.set_xscale("log")
        # Plain numbers (20, 50, 100), not 2x10^1; a few minor ticks labelled in short ranges.
        ax.xaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
        ax.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 1)))
        xlabel += ", log scale"

    if not len(data):
        ax.text(
            0.5,
            0.5,
            "no finished trial with these metrics yet",
            transform=ax.transAxes,
            ha="center",
            va="center",
            color="0.4",
        )
    if "artifact" in data.columns and (data["artifact"][on_front] == "simulated").any():
        ax.text(
            0.99,
            0.01,
            "* simulated artifact: this bit-width has no real ONNX Runtime format",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=7,
            color="0.3",
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy on held-out data, ONNX Runtime (%)")
    ax.set_title(
        f"accuracy vs {x_metric}: {len(data)} trials, {int(on_front.sum())} on the Pareto front "
        "(noise-aware)"
    )
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="best")
    fig.savefig(path)
    return path


def _draw_front(ax: Axes, front: pd.DataFrame, x: np.ndarray, y: np.ndarray) -> None:
    bits = front["bits"] if "bits" in front.columns else pd.Series(np.nan, index=front.index)
    keys = [_bits_key(b) for b in bits]
    for key in sorted(set(keys), key=lambda k: -1 if k is None else k, reverse=True):
        sel = np.array([k == key for k in keys], dtype=bool)
        ax.scatter(
            x[sel],
            y[sel],
            s=46,
            color=_BITS_COLOURS.get(key, "black") if key is not None else "black",
            edgecolor="black",
            lw=0.5,
            zorder=3,
            label=f"Pareto front, {key if key is not None else '?'} bits",
        )
    # One label per distinct point (duplicated trials get "x2"), alternating above and below
    # along the x axis so that neighbours overlap less.
    labels: dict[tuple[float, float, str], int] = {}
    for (_, row), xi, yi in zip(front.iterrows(), x, y, strict=True):
        key3 = (float(xi), float(yi), _point_label(row))
        labels[key3] = labels.get(key3, 0) + 1
    for i, ((xi, yi, text), count) in enumerate(sorted(labels.items())):
        ax.annotate(
            text + (f" x{count}" if count > 1 else ""),
            (xi, yi),
            xytext=(4, 4 if i % 2 == 0 else -10),
            textcoords="offset points",
            fontsize=7,
        )


# A fixed colour per bit-width, the same in every plot of every search.
_BITS_COLOURS = {bits: f"C{i}" for i, bits in enumerate((32, 16, 8, 7, 6, 5, 4, 3, 2))}


def _bits_key(bits: object) -> int | None:
    return None if pd.isna(bits) else int(float(bits))  # type: ignore[arg-type]


def _point_label(row: pd.Series) -> str:
    parts = []
    if "bits" in row and not pd.isna(row["bits"]):
        parts.append(f"{int(row['bits'])}b")
    if "sparsity" in row and not pd.isna(row["sparsity"]):
        parts.append(f"s{float(row['sparsity']):.2f}")
    label = " ".join(parts)
    if row.get("artifact") == "simulated":
        label += "*"
    return label


def plot_hypervolume(
    history: Sequence[tuple[int, float]],
    path: Path,
    *,
    reference: Mapping[str, float] | None = None,
) -> Path:
    """Write the hypervolume over finished trials (``history``: (step, value) pairs) as a PNG.

    ``reference`` (objective -> reference value) is printed under the title so the figure says
    what the numbers are measured against.
    """
    fig = Figure(figsize=(7.5, 4.0), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    points = sorted((int(s), float(v)) for s, v in history)
    if points:
        steps, values = zip(*points, strict=True)
        ax.step(steps, values, where="post", color="C0", lw=1.5)
        ax.scatter(steps, values, s=14, color="C0", zorder=3)
        ax.set_xlim(left=0)
    else:
        ax.text(0.5, 0.5, "no finished trial yet", transform=ax.transAxes, ha="center")
    xlabel = "finished trials"
    if reference:
        ref = ", ".join(f"{k}={v:.4g}" for k, v in reference.items())
        xlabel += f"\nreference point: {ref}"
    ax.set_xlabel(xlabel)
    ax.set_ylabel("hypervolume (fraction of the reference box)")
    last = f"{points[-1][1]:.4f} after {points[-1][0]} trials" if points else "none"
    ax.set_title(f"hypervolume over the search: {last}")
    ax.grid(True, alpha=0.25)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
