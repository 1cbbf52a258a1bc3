"""Console output of a search: a line per finished trial, a live progress line on a terminal,
the Pareto table and the cost summary at the end.

On a terminal (``out.isatty()``) a rich live line stays at the bottom: trials done, failed and
stopped, elapsed time, an ETA from the pace so far, the front's size and hypervolume; the trial
lines scroll above it. Elsewhere (CI, ``ray job submit`` logs, a pipe) every line is plain text
and a plain progress line follows each trial's.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

import pandas as pd
from ray.tune import Callback

from orchestrator._scheduler import RUNG_KEY, is_rung
from orchestrator._searcher import TRIAL_NUMBER_KEY
from reports import knob_value, latency_flag


class FrontState(Protocol):
    """What the progress line reads of the live front (``orchestrator._live.LiveFront``)."""

    front_size: int | None
    hypervolume: float | None
    front_trials: int | None  # the finished trials it ranks (None: not known)


@dataclass
class Progress:
    """Counts and pace of a search; ``line()`` is the progress line.

    ``eta_s``: the trials left times the wall seconds per ended trial so far (the pace
    includes the trials running side by side), ``None`` before the first trial ends.
    """

    total: int
    started: float
    done: int = 0
    failed: int = 0
    stopped: int = 0
    unconverged: int = 0

    @property
    def ended(self) -> int:
        return self.done + self.failed + self.stopped

    def eta_s(self, now: float) -> float | None:
        if self.ended == 0:
            return None
        left = max(self.total - self.ended, 0)
        return (now - self.started) / self.ended * left

    def line(self, now: float, front: FrontState | None = None) -> str:
        eta = self.eta_s(now)
        parts = [
            f"{self.ended}/{self.total} trials: {self.done} done, {self.failed} failed, "
            f"{self.stopped} stopped",
            f"elapsed {_duration(now - self.started)}",
            f"ETA {_duration(eta) if eta is not None else '?'}",
        ]
        if front is not None and front.front_size is not None and front.front_trials != 0:
            hv = front.hypervolume
            hv_text = f", hypervolume {hv:.4f}" if hv is not None else ""
            ranked = front.front_trials
            # The front is updated off the search's loop: it may not rank the latest trials yet.
            behind = ranked is not None and ranked < self.done
            lag = f" (ranks {ranked} of the {self.done} done)" if behind else ""
            parts.append(f"front {front.front_size}{hv_text}{lag}")
        if self.unconverged:
            parts.append(f"{self.unconverged} with unconverged latency")
        return " | ".join(parts)


def _columns(out: TextIO) -> int | None:
    """The width of the terminal ``out`` writes to (rich would ask the process's own streams)."""
    try:
        return os.get_terminal_size(out.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return None


def _duration(seconds: float) -> str:
    s = max(round(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class _Status:
    """The live line's renderable: recomputed at each refresh, so elapsed time and ETA move."""

    def __init__(self, lines: TrialLines) -> None:
        self._lines = lines

    def __rich__(self) -> Any:
        from rich.text import Text

        return Text(self._lines.status(), style="bold")


class TrialLines(Callback):
    """Print a line for each trial as it finishes or fails (its varying knobs, its figures, a
    flag when its latency did not converge), and the progress of the search: a live line on a
    terminal, a plain line after each trial elsewhere. ``front`` (the live front) gives the
    front's size and hypervolume; ``knobs`` the knobs shown (those that vary in the space)."""

    def __init__(
        self,
        total: int,
        *,
        out: TextIO | None = None,
        knobs: Sequence[str] = ("lr", "batch_size", "sparsity", "bits"),
        front: FrontState | None = None,
        live: bool | None = None,
    ) -> None:
        self._total = total
        self._out = out
        self._knobs = list(knobs)
        self._front = front
        self._live_wanted = live
        self._progress: Progress | None = None
        self._live: Any = None

    @property
    def out(self) -> TextIO:
        return self._out or sys.stdout

    @property
    def progress(self) -> Progress:
        if self._progress is None:
            self._progress = Progress(self._total, time.monotonic())
        return self._progress

    def status(self) -> str:
        return self.progress.line(time.monotonic(), self._front)

    def setup(
        self,
        stop: Any = None,
        num_samples: int | None = None,
        total_num_samples: int | None = None,
        **info: Any,
    ) -> None:
        self.progress  # the clock starts with the experiment  # noqa: B018
        wanted = self._live_wanted
        if wanted is None:
            wanted = bool(getattr(self.out, "isatty", lambda: False)())
        if wanted and self._live is None:
            from rich.console import Console
            from rich.live import Live

            console = Console(file=self.out, force_terminal=True, width=_columns(self.out))
            self._live = Live(
                _Status(self), console=console, refresh_per_second=2, redirect_stdout=False
            )
            self._live.start()

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        r = trial.last_result or {}
        p = self.progress
        if r.get("trial_failed"):
            p.failed += 1
            self._print(
                f"{self._knob_text(trial.config)} | FAILED: {str(r.get('trial_error'))[:200]}"
            )
            return
        if is_rung(r):  # its last report was a rung: the early-stopping scheduler stopped it
            p.stopped += 1
            acc = r.get("rung_accuracy")
            at = f" (accuracy {acc:.4f})" if isinstance(acc, float) else ""
            self._print(
                f"{self._knob_text(trial.config)} | stopped early at epoch {r[RUNG_KEY]}{at}"
            )
            return
        p.done += 1
        flag = latency_flag(r)
        if flag:
            p.unconverged += 1
        text = f"{self._knob_text(trial.config)} | {format_metrics(r)}"
        self._print(text + (f" | latency {flag}" if flag else ""))

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.progress.failed += 1
        err = trial.get_error()
        first = str(err).strip().splitlines()[-1] if err else "unknown error"
        self._print(f"{self._knob_text(trial.config)} | FAILED: {first[:200]}")

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _knob_text(self, config: dict[str, Any]) -> str:
        number = int(config.get(TRIAL_NUMBER_KEY, -1))
        knobs = " ".join(f"{k}={knob_value(k, config.get(k))}" for k in self._knobs)
        return f"trial {number:03d} {knobs}".rstrip()

    def _print(self, text: str) -> None:
        line = f"[{self.progress.ended:>3}/{self._total}] {text}"
        if self._live is not None:
            self._live.console.print(line, markup=False, highlight=False, soft_wrap=True)
            return
        print(line, file=self.out, flush=True)
        print(f"      progress: {self.status()}", file=self.out, flush=True)

    def __getstate__(self) -> dict[str, Any]:
        # The live display (a thread, a console) stays in its process, and so does the output
        # stream (the Tuner pickles its callbacks); the counts and the clock start again in the
        # process that restores it (--resume).
        return {**self.__dict__, "_live": None, "_out": None, "_progress": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A search resumed from an older slimtune's saved state lacks the newer attributes.
        defaults: dict[str, Any] = {
            "_knobs": ["lr", "batch_size", "sparsity", "bits"],
            "_front": None,
            "_live_wanted": None,
            "_progress": None,
            "_live": None,
            "_out": None,
        }
        self.__dict__.update({**defaults, **state})


def format_metrics(r: dict[str, Any]) -> str:
    if "accuracy" not in r:
        return "no result"
    sim = " (simulated)" if r.get("artifact") == "simulated" else ""
    fmt = f" {r['format']}" if r.get("format") else ""
    return (
        f"acc {r['accuracy']:.4f}  file {r['size_bytes'] / 1000:.1f} KB  "
        f"gzip {r['size_gzip_bytes'] / 1000:.1f} KB  latency {r['latency_ms']:.3f} ms "
        f"(p90 {r['latency_p90_ms']:.3f}){sim}{fmt}"
    )


def pareto_table(
    df: pd.DataFrame, knobs: Sequence[str] = ("lr", "batch_size", "sparsity", "bits")
) -> str:
    """The front as a fixed-width table, most accurate first: one row per group of trials tied
    within the tolerances (its representative; ``tied`` names the others), the knobs that vary,
    and a flag on latencies that did not converge."""
    front = df[df["pareto"]] if "pareto" in df else df
    if "pareto_representative" in front:
        front = front[front["pareto_representative"].astype(bool)]
    cols = {
        "trial_number": "trial",
        **{k: k for k in knobs},
        "accuracy": "accuracy",
        "size_kb": "file KB",
        "gzip_kb": "gzip KB",
        "latency_ms": "latency ms",
        "latency_p90_ms": "p90 ms",
        "latency_flag": "latency",
        "artifact": "artifact",
        "pareto_tied": "tied",
    }
    view = front.assign(
        size_kb=front["size_bytes"] / 1000,
        gzip_kb=front["size_gzip_bytes"] / 1000,
        latency_flag=[latency_flag(row) or "ok" for _, row in front.iterrows()],
    )
    view = view.sort_values(["accuracy", "latency_ms"], ascending=[False, True])
    view = view[[c for c in cols if c in view]].rename(columns=cols)
    formatters = {k: (lambda v, k=k: knob_value(k, v)) for k in knobs}
    return str(
        view.to_string(
            index=False,
            formatters={
                **formatters,
                "accuracy": "{:.4f}".format,
                "file KB": "{:.1f}".format,
                "gzip KB": "{:.1f}".format,
                "latency ms": "{:.3f}".format,
                "p90 ms": "{:.3f}".format,
                "tied": lambda v: v or "-",
            },
        )
    )


def cost_summary(trials: pd.DataFrame, *, cpu: float, gpu: float, wall_s: float) -> str:
    """What the search cost: CPU and GPU seconds reserved by its trials (``trial_seconds`` x the
    CPUs and GPUs each reserves) and the time per trial, of work and of wall clock."""
    seconds = pd.to_numeric(
        trials.get("trial_seconds", pd.Series(dtype=float)), errors="coerce"
    ).dropna()
    ended = len(trials)
    per_trial = float(seconds.mean()) if len(seconds) else math.nan
    per_wall = wall_s / ended if ended else math.nan
    return (
        f"Search cost: {float(seconds.sum()) * cpu:.1f} CPU seconds, "
        f"{float(seconds.sum()) * gpu:.1f} GPU seconds ({len(seconds)} trials x {cpu:g} CPU, "
        f"{gpu:g} GPU each); {per_trial:.1f} s of work per trial, {per_wall:.1f} s of wall "
        f"time per trial ({wall_s:.0f} s for {ended})."
    )


def table_knobs(knobs: Sequence[str], trials: pd.DataFrame) -> list[str]:
    """``knobs`` (those the space varies), and ``format`` (it names the int8 format) when the
    finished trials differ in it."""
    out = list(knobs)
    if "format" in trials.columns:
        done = trials[trials["status"] == "FINISHED"] if "status" in trials.columns else trials
        if done["format"].dropna().astype(str).nunique() > 1:
            out.append("format")
    return out
