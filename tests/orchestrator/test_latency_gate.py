"""The measurement gate between the processes of one machine (real ``flock`` locks, real
processes): a measurement holds the machine alone, trials pause at their next step, a
measurement is never starved, and a dead trial releases its hold."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from orchestrator._latency import MeasureGate

FORK = multiprocessing.get_context("fork")
STEP_S = 0.005


def _busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def _trial(gate_dir: Path, seconds: float, steps_file: Path, offset_s: float = 0.0) -> None:
    """A trial: works in steps of STEP_S, offering the gate between steps; writes each step's
    (start, end) on the system-wide monotonic clock."""
    time.sleep(offset_s)
    gate = MeasureGate(gate_dir)
    spans = []
    end = time.monotonic() + seconds
    with gate.working():
        while time.monotonic() < end:
            start = time.monotonic()
            _busy(STEP_S)
            spans.append((start, time.monotonic()))
            gate.pause_point()
    steps_file.write_text("\n".join(f"{a} {b}" for a, b in spans))


def _spans(path: Path) -> list[tuple[float, float]]:
    return [(float(a), float(b)) for a, b in (ln.split() for ln in path.read_text().splitlines())]


def test_a_measurement_holds_the_machine_alone_and_trials_resume_after(tmp_path: Path) -> None:
    steps = tmp_path / "steps.txt"
    trial = FORK.Process(target=_trial, args=(tmp_path, 1.5, steps))
    trial.start()
    time.sleep(0.4)  # the trial is working
    gate = MeasureGate(tmp_path)
    with gate.exclusive(timeout_s=5) as claim:
        held_from = time.monotonic()
        time.sleep(0.3)
        held_to = time.monotonic()
    trial.join(30)
    assert trial.exitcode == 0
    assert claim.quiet and claim.wait_s < 0.2  # one step of 5 ms, with slack for a busy machine
    spans = _spans(steps)
    overlapping = [s for s in spans if s[0] < held_to and s[1] > held_from]
    assert overlapping == []
    assert any(b <= held_from for _, b in spans) and any(a >= held_to for a, _ in spans)


def test_trials_arriving_one_after_another_never_starve_a_measurement(tmp_path: Path) -> None:
    # Two trials whose steps overlap, so that at every instant one of them holds the gate:
    # only the turnstile (new holds wait while a measurement waits) lets the measurement in.
    trials = [
        FORK.Process(target=_trial, args=(tmp_path, 2.0, tmp_path / f"s{i}.txt", i * STEP_S / 2))
        for i in range(2)
    ]
    for t in trials:
        t.start()
    time.sleep(0.4)
    with MeasureGate(tmp_path).exclusive(timeout_s=3) as claim:
        pass
    for t in trials:
        t.join(30)
        assert t.exitcode == 0
    assert claim.quiet and claim.wait_s < 0.5


def test_a_trial_that_never_pauses_times_the_measurement_out(tmp_path: Path) -> None:
    holder = MeasureGate(tmp_path)
    with holder.working(), MeasureGate(tmp_path).exclusive(timeout_s=0.3) as claim:
        pass
    assert not claim.quiet
    assert 0.3 <= claim.wait_s < 2.0


def test_a_waiting_trial_steps_aside_and_the_measurement_goes_through(tmp_path: Path) -> None:
    trial = MeasureGate(tmp_path)
    meter = MeasureGate(tmp_path)
    with trial.working():
        with trial.stepped_aside():
            assert not trial.held
            with meter.exclusive(timeout_s=0.5) as claim:
                assert claim.quiet
        assert trial.held
        # Held again: a measurement now has to wait for a pause point.
        with meter.exclusive(timeout_s=0.2) as claim:
            assert not claim.quiet
    with meter.exclusive(timeout_s=0.2) as claim:
        assert claim.quiet


def test_a_trial_entering_while_a_measurement_runs_waits_for_it(tmp_path: Path) -> None:
    meter = MeasureGate(tmp_path)
    entered: list[float] = []

    def late_trial() -> None:
        with MeasureGate(tmp_path).working():
            entered.append(time.monotonic())

    with meter.exclusive(timeout_s=1) as claim:
        assert claim.quiet
        thread = threading.Thread(target=late_trial)
        thread.start()
        time.sleep(0.3)
        released = time.monotonic()
        assert entered == []
    thread.join(10)
    assert entered and entered[0] >= released


def test_a_killed_trial_releases_its_hold(tmp_path: Path) -> None:
    ready = FORK.Event()

    def hold_forever() -> None:
        gate = MeasureGate(tmp_path)
        with gate.working():
            ready.set()
            time.sleep(60)

    trial = FORK.Process(target=hold_forever)
    trial.start()
    assert ready.wait(30)
    with MeasureGate(tmp_path).exclusive(timeout_s=0.2) as claim:
        assert not claim.quiet
    assert trial.pid is not None
    os.kill(trial.pid, signal.SIGKILL)
    trial.join(30)
    with MeasureGate(tmp_path).exclusive(timeout_s=5) as claim:
        assert claim.quiet


def test_a_process_holding_the_gate_cannot_also_measure(tmp_path: Path) -> None:
    gate = MeasureGate(tmp_path)
    with (
        gate.working(),
        pytest.raises(RuntimeError, match="cannot take it exclusive"),
        gate.exclusive(timeout_s=0.1),
    ):
        pass
    gate.close()
    assert not gate.held
