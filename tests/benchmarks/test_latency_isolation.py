"""The isolation benchmarks' summaries (the benchmarks themselves run by hand:
benchmarks/BENCHMARKS.md): ratios, verdicts and the quiet re-check of a packing."""

from __future__ import annotations

import pytest

from benchmarks._quiet_check import QuietCheck
from benchmarks.latency_isolation import Figures, Row, table


def _row(mode: str, quiet: float, busy: float, free: float, trained: bool = True) -> Row:
    return Row(
        mode,
        Figures(quiet, quiet * 1.2, 0.1),
        Figures(busy, busy * 1.2, 0.2, wait_ms=5.0 if mode == "pause" else 0.0),
        readings=4,
        free_steps_s=free,
        busy_steps_s=free / 2,
        trained_throughout=trained,
    )


def test_the_summary_gives_each_mode_its_ratio_verdict_and_throughput() -> None:
    rounds = [
        [
            _row("pause", 1.0, 1.01, 8.0),
            _row("cores", 1.0, 1.02, 6.0),
            _row("none", 1.0, 1.3, 10.0),
        ],
        [_row("pause", 1.0, 0.99, 8.0), _row("cores", 1.0, 1.5, 6.0, trained=False)],
    ]
    text = table(rounds)
    pause = next(ln for ln in text.splitlines() if ln.strip().startswith("pause:"))
    cores = next(ln for ln in text.splitlines() if ln.strip().startswith("cores:"))
    none = next(ln for ln in text.splitlines() if ln.strip().startswith("none:"))
    assert "median ratio 1.000" in pause and "within 5%" in pause and "0.80x none's" in pause
    # the round whose trials stopped training is shown ('!') but not counted
    assert "median ratio 1.020" in cores and "NOT" not in cores and "1.500!" in text
    assert "NOT within 5%" in none and "1.00x none's" in none


def test_the_quiet_check_judges_the_median_against_three_percent() -> None:
    held = QuietCheck.of_ratios([1.01, 0.98, 1.02, 1.10])
    assert held.median == pytest.approx(1.015) and held.worst == pytest.approx(0.10)
    assert held.within == 0.75 and held.line().endswith("MET")
    assert QuietCheck.of_ratios([1.05, 1.06]).line().endswith("MISSED")
    assert QuietCheck.of_ratios([]).line() == "no trial checked"
