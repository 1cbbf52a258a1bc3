"""The console of a search: a live progress line on a terminal (a real pty), plain lines
elsewhere, the Pareto table with every varying knob and the tie groups, the cost summary."""

from __future__ import annotations

import fcntl
import io
import os
import pickle
import re
import select
import struct
import termios
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pandas as pd

from orchestrator._live import LiveFrontCallback
from orchestrator._progress import Progress, TrialLines, cost_summary, pareto_table
from orchestrator._searcher import TRIAL_NUMBER_KEY

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
KNOBS = ["lr", "sparsity", "pruning", "quant_scheme", "distill_weight"]


@dataclass
class Front:
    front_size: int | None = 3
    hypervolume: float | None = 0.6123
    front_trials: int | None = 2


def _trial(n: int, **result: Any) -> Any:
    config = {
        TRIAL_NUMBER_KEY: n,
        "lr": 1e-3,
        "batch_size": 32,
        "sparsity": 0.4,
        "bits": 8,
        "pruning": "structured",
        "quant_scheme": "ptq",
        "distill_weight": 0.5,
    }
    metrics = {
        "accuracy": 0.95,
        "size_bytes": 20_000.0,
        "size_gzip_bytes": 15_000.0,
        "latency_ms": 0.1,
        "latency_p90_ms": 0.12,
        "artifact": "real",
        "format": "int8-u8s8-per-channel",
        "latency_converged": "true",
    }
    return SimpleNamespace(config=config, last_result={**metrics, **result})


def _feed(lines: TrialLines) -> None:
    lines.on_trial_complete(0, [], _trial(0))
    lines.on_trial_complete(0, [], _trial(1, latency_converged="false", latency_median_cv=0.31))
    lines.on_trial_complete(0, [], _trial(2, trial_failed=1, trial_error="ValueError: boom"))


def test_progress_eta_is_the_pace_so_far_times_the_trials_left() -> None:
    p = Progress(total=10, started=100.0)
    assert p.eta_s(130.0) is None  # nothing ended yet
    p.done, p.failed = 2, 1
    assert p.eta_s(130.0) == 70.0  # 10 s per ended trial x 7 left
    line = p.line(130.0, Front())
    assert line == (
        "3/10 trials: 2 done, 1 failed, 0 stopped | elapsed 30s | ETA 1m10s | "
        "front 3, hypervolume 0.6123"
    )


def test_the_progress_line_says_when_the_front_lags_behind_the_trials() -> None:
    # The live front is updated off the loop. Before, the line after the first trial read
    # "front 0" (the front of no trial) and later lines a front that missed the latest ones.
    p = Progress(total=10, started=100.0, done=1)
    assert "front" not in p.line(110.0, Front(front_size=0, hypervolume=None, front_trials=0))
    p.done = 5
    line = p.line(150.0, Front(front_trials=3))
    assert line.endswith("front 3, hypervolume 0.6123 (ranks 3 of the 5 done)")
    assert p.line(150.0, Front(front_trials=5)).endswith("front 3, hypervolume 0.6123")
    # A front restored from an older saved state does not know what it ranks: shown as it is.
    assert p.line(150.0, Front(front_trials=None)).endswith("front 3, hypervolume 0.6123")


def test_plain_lines_off_a_terminal_show_every_varying_knob_and_the_progress() -> None:
    out = io.StringIO()
    lines = TrialLines(4, out=out, knobs=KNOBS, front=Front())
    lines.setup()
    _feed(lines)
    text = out.getvalue()
    assert "\x1b[" not in text  # no terminal control codes
    assert (
        "[  1/4] trial 000 lr=1.00e-03 sparsity=0.4 pruning=structured quant_scheme=ptq "
        "distill_weight=0.5 | acc 0.9500" in text
    )
    assert "int8-u8s8-per-channel" in text  # the int8 format
    assert "latency not converged (block-median CV 0.31)" in text
    assert "FAILED: ValueError: boom" in text
    progress = [line for line in text.splitlines() if "progress:" in line]
    assert len(progress) == 3
    assert progress[-1].split("progress: ")[1].startswith("3/4 trials: 2 done, 1 failed, 0 stopped")
    assert "front 3, hypervolume 0.6123" in progress[-1]
    assert "1 with unconverged latency" in progress[-1]


def test_a_terminal_gets_a_live_progress_line_with_eta() -> None:
    master, slave = os.openpty()
    # A terminal 200 columns wide (rich reads its size), so that the lines do not wrap.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    tty = os.fdopen(slave, "w")
    try:
        lines = TrialLines(4, out=tty, knobs=KNOBS, front=Front())
        lines.setup()
        assert lines._live is not None  # a terminal: rich's live display
        _feed(lines)
        time.sleep(0.7)  # a refresh or two of the live line
        lines.on_experiment_end([])
        tty.flush()
        chunks = []
        while select.select([master], [], [], 0.2)[0]:
            chunk = os.read(master, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        tty.close()
        os.close(master)
    raw = b"".join(chunks).decode("utf-8", "replace")
    assert "\x1b[" in raw  # drawn with terminal control codes
    text = ANSI.sub("", raw).replace("\r", "\n")
    assert "trial 000 lr=1.00e-03 sparsity=0.4 pruning=structured" in text
    assert re.search(r"3/4 trials: 2 done, 1 failed, 0 stopped \| elapsed \d+s \| ETA \d+s", text)
    assert "front 3, hypervolume 0.6123" in text
    assert "progress:" not in text  # the plain lines are for non-terminals


def test_trial_lines_and_the_live_front_pickle_together() -> None:
    # The Tuner pickles its callbacks: the progress line must still read the live front.
    live = LiveFrontCallback("sqlite:///x.db", "parent", out=io.StringIO())
    lines = TrialLines(2, knobs=KNOBS, front=live.live)
    lines2, live2 = pickle.loads(pickle.dumps([lines, live]))
    assert lines2._front is live2.live
    assert lines2._knobs == KNOBS


def _front_df() -> pd.DataFrame:
    rows = []
    for n, (acc, gz, rep, tied, conv) in enumerate(
        [
            (0.95, 10_000, True, "1", "true"),
            (0.95, 10_000, False, "0", "true"),
            (0.90, 5_000, True, "", "false"),
        ]
    ):
        rows.append(
            {
                "trial_number": n,
                "status": "FINISHED",
                "pareto": True,
                "pareto_representative": rep,
                "pareto_tied": tied,
                "lr": 1e-3,
                "pruning": "structured" if n else "unstructured",
                "accuracy": acc,
                "size_bytes": gz * 2.0,
                "size_gzip_bytes": float(gz),
                "latency_ms": 0.1,
                "latency_p90_ms": 0.12,
                "latency_converged": conv,
                "latency_median_cv": 0.2,
                "artifact": "real",
                "trial_seconds": 10.0 + n,
            }
        )
    return pd.DataFrame(rows)


def test_pareto_table_shows_one_row_per_group_the_knobs_and_the_latency_flag() -> None:
    table = pareto_table(_front_df(), ["lr", "pruning"])
    head, *rows = table.splitlines()
    assert head.split()[:3] == ["trial", "lr", "pruning"] and head.split()[-1] == "tied"
    assert len(rows) == 2  # trial 1 is tied with 0: named, not repeated
    assert rows[0].split()[:3] == ["0", "1.00e-03", "unstructured"] and rows[0].endswith("1")
    assert "not converged (block-median CV 0.2)" in rows[1]


def test_cost_summary_counts_cpu_and_gpu_seconds_and_time_per_trial() -> None:
    text = cost_summary(_front_df(), cpu=2.0, gpu=0.5, wall_s=60.0)
    # trial_seconds 10 + 11 + 12 = 33; x 2 CPUs, x 0.5 GPU
    assert text.startswith("Search cost: 66.0 CPU seconds, 16.5 GPU seconds")
    assert "11.0 s of work per trial, 20.0 s of wall time per trial (60 s for 3)" in text
