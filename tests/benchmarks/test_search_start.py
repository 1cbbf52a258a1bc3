"""The start A/B benchmark's parts: its table (medians and each run), its refusal of a
``--before`` that holds no checkout, and the order of its rounds (the run itself:
BENCHMARKS.md, "The search's start")."""

from __future__ import annotations

from pathlib import Path

import pytest

import benchmarks.search_start as bench
from benchmarks.search_start import Run, table


def test_the_table_gives_each_side_its_median_and_every_run() -> None:
    rows = {
        "before": [Run(10.0, 20.0), Run(12.0, 26.0), Run(11.0, 22.0)],
        "after": [Run(9.0, 19.0)],
    }
    lines = table(rows)
    assert lines[2] == "| before | 11.0 (10.0, 12.0, 11.0) | 22.0 (20.0, 26.0, 22.0) |"
    assert lines[3] == "| after | 9.0 (9.0) | 19.0 (19.0) |"


def test_a_before_that_holds_no_checkout_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as ended:
        bench.main(["--before", str(tmp_path)])
    assert ended.value.code == 2
    assert f"--before {tmp_path}: no checkout of slimtune there" in capsys.readouterr().err


def test_the_rounds_swap_their_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    before = tmp_path / "before"
    (before / "orchestrator").mkdir(parents=True)
    (before / "orchestrator" / "cli.py").write_text("")
    calls: list[Path] = []

    def fake_run(code_root: Path, config: Path, cwd: Path) -> Run:
        calls.append(code_root)
        return Run(1.0, 2.0)

    monkeypatch.setattr(bench, "timed_run", fake_run)
    args = ["--before", str(before), "--repeats", "3", "--workdir", str(tmp_path / "w")]
    assert bench.main(args) == 0
    here = bench.ROOT
    # the untimed fill, then before-here, here-before, before-here
    assert calls == [here, before, here, here, before, before, here]
