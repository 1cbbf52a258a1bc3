"""Multi-objective early stopping (issue 13): the compute each strategy needs for the front.

    python benchmarks/early_stopping.py [--config examples/mnist1d.yaml] [--seeds 0 1 2]
        [--n 32] [--epochs 9] [--min-epochs 1] [--eta 3] [--workers 9] [--out FILE]
        [--raw FILE.json] [--smoke]

Three strategies, each run once per seed as one study of the config's sampler (the same seed
for all three), trials one after another (a search with concurrency 1):

- ``full``: every trial fine-tunes ``--epochs`` epochs; ``--n`` trials;
- ``mo-asha``: trials stop at the rungs ``min_epochs * eta**k`` by the search's own rule
  (``orchestrator._mo_asha.MoAshaState``, the state the Ray scheduler keeps), told to Optuna as
  PRUNED; it runs until it has spent the compute the full study spent (equal compute);
- ``mo-asha+skip``: the same with ``skip_dominated``.

Trials are real (``trials.run_trial``: prune, fine-tune, quantize, export, measure in ONNX
Runtime), with no Ray and no MLflow. Compute is the sum of trial-seconds: with ``--compute cpu``
(the default) the CPU seconds of the study's process during the trial (trials run one torch and
one ONNX Runtime thread, so on a quiet machine this equals the trial's wall seconds, and other
load on the machine does not inflate it), with ``--compute wall`` its wall seconds; a stopped
trial's seconds up to its stop. The early measurement the MO-ASHA trials make is in their
compute; the full study's trials also report their rungs (to measure how well the rung rankings
predict the final ones) but their early measurement (``early_seconds``, in CPU seconds at the
trial's own CPU/wall rate) is taken out of their compute, since a full-fidelity search does not
make it. ``--task`` replaces the config's task (e.g. ``mnist1d-small``, MNIST-1D with a CNN half
as wide, for a 2-core machine).

Reported per strategy (median over seeds): the compute to reach the hypervolume the full study
has after ``--n`` trials (over full-fidelity trials only, in the order they ended), its ratio to
the full study's compute, and the final hypervolume at equal compute; and for the full study,
Kendall's tau between each rung's accuracy and the final accuracy (is the rung ranking
predictive?). Studies run in parallel, one process each (``--workers``); latency is measured
inline while the others run, equally noisy for every strategy: run it on a quiet machine with
at least one core per study.

``--smoke``: one seed, digits, 2 trials of 2 epochs, a short latency plan: checks that the
script runs (a few minutes on a busy 2-core machine), not a result.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from orchestrator._mo_asha import MoAshaState
from orchestrator._samplers import build_sampler
from reports import reference_point
from searchspace import SearchSpec, TrialParams, load_spec, to_distributions

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python benchmarks/early_stopping.py` from anywhere
    sys.path.insert(0, str(ROOT))
from benchmarks._early_report import (  # noqa: E402
    STRATEGIES,
    compute_to_reach,
    hv_at_compute,
    hv_curve,
    kendall_by_rung,
    render,
    summarize,
)

__all__ = ["compute_to_reach", "hv_at_compute", "hv_curve", "kendall_by_rung"]

DEFAULT_CONFIG = ROOT / "examples" / "mnist1d.yaml"
MAX_TRIALS_FACTOR = 6  # an early-stopping study runs at most this many times --n trials


@dataclass(frozen=True)
class Job:
    config: str
    strategy: str
    seed: int
    n: int
    epochs: int
    min_epochs: int
    eta: int
    budget: float  # compute to spend (early-stopping studies); 0: --n trials (full)
    cache_dir: str
    work_root: str
    smoke: bool
    task: str = ""  # overrides the config's task when set
    compute: str = "cpu"  # cpu: a trial's CPU seconds; wall: its wall seconds


class _Stop(Exception):
    def __init__(self, epoch: int, seconds: float) -> None:
        super().__init__(epoch)
        self.epoch = epoch
        self.seconds = seconds


def job_spec(job: Job) -> SearchSpec:
    spec = load_spec(job.config)
    if job.task:
        spec = spec.model_copy(update={"task": job.task})
    sampler = spec.sampler.model_copy(update={"seed": job.seed})
    update: dict[str, Any] = {
        "sampler": sampler,
        "training": spec.training.model_copy(update={"epochs": job.epochs}),
        "early_stopping": spec.early_stopping.model_copy(
            update={
                "name": "mo-asha",
                "min_epochs": job.min_epochs,
                "reduction_factor": job.eta,
                "skip_dominated": job.strategy == "mo-asha+skip",
            }
        ),
    }
    if job.smoke:
        update["latency"] = spec.latency.model_copy(update={"warmup": 2, "repeats": 10})
    return spec.model_copy(update=update)


def run_study(job: Job) -> dict[str, Any]:
    """One strategy, one seed: trials one after another; returns a row per trial."""
    import torch

    from trials import RungReport, TrialSettings, load_task, run_trial

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = job_spec(job)
    task = load_task(spec.task)
    study = optuna.create_study(directions=spec.directions, sampler=build_sampler(spec.sampler))
    distributions = to_distributions(spec.space)
    state = MoAshaState.for_spec(spec)
    stopping = job.strategy != "full"
    rows: list[dict[str, Any]] = []
    spent = 0.0
    limit = job.n if not stopping else job.n * MAX_TRIALS_FACTOR
    while len(rows) < limit and (not stopping or spent < job.budget):
        trial = study.ask(distributions)
        tid = str(trial.number)
        rungs: dict[int, float] = {}

        def report(r: RungReport, tid: str = tid, rungs: dict[int, float] = rungs) -> None:
            rungs[r.epoch] = r.metrics["accuracy"]
            if not stopping:
                return
            decision = state.on_rung(tid, r.epoch, r.metrics, val_samples=r.val_samples)
            if decision is not None and decision.stop:
                raise _Stop(r.epoch, r.seconds)

        work = Path(tempfile.mkdtemp(prefix=f"{job.strategy}-{job.seed}-{tid}-", dir=job.work_root))
        settings = TrialSettings.for_search(
            spec,
            seed=spec.seed + trial.number,
            baseline_seed=spec.seed,
            cache_dir=Path(job.cache_dir),
            work_dir=work,
        )
        t0, c0 = time.perf_counter(), time.process_time()
        row: dict[str, Any] = {"number": trial.number, **trial.params}
        try:
            result = run_trial(task, TrialParams.from_dict(trial.params), settings, rungs=report)
        except _Stop as stop:
            study.tell(trial, state=TrialState.PRUNED)
            row.update(
                status="STOPPED",
                stopped_at=stop.epoch,
                wall_seconds=stop.seconds,
                cpu_seconds=time.process_time() - c0,  # it stopped just now
            )
        except Exception as exc:  # a trial's own failure is a result (told as FAIL)
            study.tell(trial, state=TrialState.FAIL)
            row.update(status="FAILED", error=f"{type(exc).__name__}: {exc}"[:200])
            row.update(wall_seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0)
        else:
            cpu = time.process_time() - c0
            m = result.metrics
            values = [float(m[name]) for name in spec.metric_names]
            study.tell(trial, values)
            state.on_final(tid, m)
            wall = m["trial_seconds"]
            if not stopping:  # a full-fidelity search makes no early measurement
                early = m["early_seconds"]
                cpu -= early * cpu / wall if wall > 0 else 0.0  # its CPU share, at the trial's rate
                wall -= early
            row.update(
                status="FINISHED",
                wall_seconds=wall,
                cpu_seconds=cpu,
                **dict(zip(spec.metric_names, values, strict=True)),
            )
        row["seconds"] = row["cpu_seconds"] if job.compute == "cpu" else row["wall_seconds"]
        row["rungs"] = {str(k): v for k, v in rungs.items()}
        spent += row["seconds"]
        row["spent"] = spent
        rows.append(row)
    return {"strategy": job.strategy, "seed": job.seed, "rows": rows}


def measure_baseline(spec: SearchSpec, cache_dir: Path, work: Path) -> dict[str, float]:
    from trials import TrialSettings, ensure_baseline, load_task, run_baseline

    task = load_task(spec.task)
    ensure_baseline(task, seed=spec.seed, cache_dir=cache_dir)
    settings = TrialSettings.for_search(spec, seed=spec.seed, cache_dir=cache_dir, work_dir=work)
    return dict(run_baseline(task, settings).metrics)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--min-epochs", type=int, default=1)
    parser.add_argument("--eta", type=int, default=3)
    parser.add_argument("--workers", type=int, default=9)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--raw", type=Path)
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=ROOT / ".slimtune" / "cache",
        help="the dense baselines' cache (trained once per task and seed)",
    )
    parser.add_argument(
        "--task", default="", help="a task to use instead of the config's (e.g. mnist1d-small)"
    )
    parser.add_argument(
        "--compute",
        choices=("cpu", "wall"),
        default="cpu",
        help="a trial's compute: the CPU seconds of its process (default; robust to other load "
        "on the machine, trials run one thread) or its wall seconds",
    )
    parser.add_argument(
        "--combine",
        type=Path,
        nargs="+",
        help="summarize the studies of earlier runs' --raw files (e.g. one per seed) instead of "
        "running studies",
    )
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.combine:
        return combine(args.combine, n=args.n, out=args.out)
    if args.smoke:
        args.config, args.seeds, args.n, args.epochs = str(ROOT / "examples/digits.yaml"), [0], 2, 2
    command = "python benchmarks/early_stopping.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="slimtune-es-") as tmp:
        cache, work = args.cache_dir.resolve(), Path(tmp) / "work"
        work.mkdir(parents=True)
        base_job = Job(
            args.config,
            "full",
            args.seeds[0],
            args.n,
            args.epochs,
            args.min_epochs,
            args.eta,
            0.0,
            str(cache),
            str(work),
            args.smoke,
            args.task,
            args.compute,
        )
        spec = job_spec(base_job)
        baseline = measure_baseline(spec, cache, work)
        objectives = [(o.metric, o.direction) for o in spec.objectives]
        ref = reference_point(baseline, objectives)
        ctx = get_context("spawn")
        studies: list[dict[str, Any]] = []
        with ProcessPoolExecutor(args.workers, mp_context=ctx) as pool:
            fulls = [pool.submit(run_study, _with(base_job, "full", s, 0.0)) for s in args.seeds]
            pending = []
            for fut in fulls:
                full = fut.result()
                studies.append(full)
                budget = full["rows"][-1]["spent"]
                for strategy in STRATEGIES[1:]:
                    pending.append(
                        pool.submit(run_study, _with(base_job, strategy, full["seed"], budget))
                    )
            studies.extend(f.result() for f in pending)
    seconds = time.perf_counter() - start
    summary = summarize(studies, objectives, ref)
    text = render(summary, command=command, n=args.n, seconds=seconds)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.raw:
        raw = {
            "studies": studies,
            "summary": summary,
            "objectives": objectives,
            "reference": ref,
            "seconds": seconds,
        }
        args.raw.write_text(json.dumps(raw, default=str))
    return 0


def combine(paths: Sequence[Path], *, n: int, out: Path | None) -> int:
    """One summary over the studies of several --raw files (runs of the same config, task and
    --n, e.g. one seed each). Each run's hypervolumes use its own reference point (its dense
    baseline, measured in that run); the objectives must agree."""
    raws = [json.loads(p.read_text()) for p in paths]
    kinds = {json.dumps(r.get("objectives")) for r in raws}
    if len(kinds) != 1 or any(r.get("reference") is None for r in raws):
        raise SystemExit(
            "--combine: the --raw files must come from runs of the same config and task (same "
            f"objectives, each with its reference point); got {sorted(kinds)}. Fix: combine "
            "runs made with the same --config/--task by this version of the script."
        )
    objectives = [tuple(o) for o in raws[0]["objectives"]]
    summary: dict[str, Any] = {"table": {k: {} for k in STRATEGIES}, "kendall": []}
    for raw in raws:
        part = summarize(raw["studies"], objectives, raw["reference"])
        for strategy, cells in part["table"].items():
            for key, values in cells.items():
                summary["table"][strategy].setdefault(key, []).extend(values)
        summary["kendall"].extend(part["kendall"])
    total = sum(r.get("seconds", 0.0) for r in raws)
    command = "python benchmarks/early_stopping.py --combine " + shlex.join(map(str, paths))
    text = render(summary, command=command, n=n, seconds=total)
    print(text)
    if out:
        out.write_text(text + "\n")
    return 0


def _with(job: Job, strategy: str, seed: int, budget: float) -> Job:
    return Job(**{**job.__dict__, "strategy": strategy, "seed": seed, "budget": budget})


if __name__ == "__main__":
    raise SystemExit(main())
