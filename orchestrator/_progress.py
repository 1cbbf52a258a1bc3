"""Console output of a search: one line per finished trial, the Pareto table at the end."""

from __future__ import annotations

import sys
from typing import Any, TextIO

import pandas as pd
from ray.tune import Callback

from orchestrator._scheduler import RUNG_KEY
from orchestrator._searcher import TRIAL_NUMBER_KEY


class TrialLines(Callback):
    """Print a line for each trial as it finishes or fails."""

    def __init__(self, total: int, *, out: TextIO | None = None) -> None:
        self._total = total
        self._done = 0
        self._out = out or sys.stdout

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._done += 1
        r = trial.last_result or {}
        if r.get("trial_failed"):
            self._print(f"{_knobs(trial.config)} | FAILED: {str(r.get('trial_error'))[:200]}")
            return
        if RUNG_KEY in r:  # its last report was a rung: the early-stopping scheduler stopped it
            acc = r.get("rung_accuracy")
            at = f" (accuracy {acc:.4f})" if isinstance(acc, float) else ""
            self._print(f"{_knobs(trial.config)} | stopped early at epoch {r[RUNG_KEY]}{at}")
            return
        self._print(f"{_knobs(trial.config)} | {format_metrics(r)}")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._done += 1
        err = trial.get_error()
        first = str(err).strip().splitlines()[-1] if err else "unknown error"
        self._print(f"{_knobs(trial.config)} | FAILED: {first[:200]}")

    def _print(self, text: str) -> None:
        print(f"[{self._done:>3}/{self._total}] {text}", file=self._out, flush=True)


def _knobs(config: dict[str, Any]) -> str:
    return (
        f"trial {int(config.get(TRIAL_NUMBER_KEY, -1)):03d} lr={float(config['lr']):.2e} "
        f"batch={int(config['batch_size']):>3} sparsity={float(config['sparsity']):.2f} "
        f"bits={int(config['bits']):>2}"
    )


def format_metrics(r: dict[str, Any]) -> str:
    if "accuracy" not in r:
        return "no result"
    sim = " (simulated)" if r.get("artifact") == "simulated" else ""
    return (
        f"acc {r['accuracy']:.4f}  file {r['size_bytes'] / 1000:.1f} KB  "
        f"gzip {r['size_gzip_bytes'] / 1000:.1f} KB  latency {r['latency_ms']:.3f} ms "
        f"(p90 {r['latency_p90_ms']:.3f}){sim}"
    )


def pareto_table(df: pd.DataFrame) -> str:
    """The front as a fixed-width table, most accurate first."""
    front = df[df["pareto"]] if "pareto" in df else df
    cols = {
        "trial_number": "trial",
        "lr": "lr",
        "batch_size": "batch",
        "sparsity": "sparsity",
        "bits": "bits",
        "accuracy": "accuracy",
        "size_kb": "file KB",
        "gzip_kb": "gzip KB",
        "latency_ms": "latency ms",
        "latency_p90_ms": "p90 ms",
        "artifact": "artifact",
    }
    view = front.assign(size_kb=front["size_bytes"] / 1000, gzip_kb=front["size_gzip_bytes"] / 1000)
    view = view.sort_values(["accuracy", "latency_ms"], ascending=[False, True])
    view = view[[c for c in cols if c in view]].rename(columns=cols)
    return str(
        view.to_string(
            index=False,
            formatters={
                "lr": "{:.2e}".format,
                "sparsity": "{:.2f}".format,
                "accuracy": "{:.4f}".format,
                "file KB": "{:.1f}".format,
                "gzip KB": "{:.1f}".format,
                "latency ms": "{:.3f}".format,
                "p90 ms": "{:.3f}".format,
            },
        )
    )
