"""Which sampler finds the better front for the trials spent: hypervolume after N trials.

    python benchmarks/sampler_efficiency.py [--config examples/digits.yaml] [--seeds 0 1 2]
        [--budget 32] [--random-budget 128] [--samplers default random nsga2:8 tpe:4 ...]
        [--workers 14] [--deadline-s 540] [--out FILE] [--raw FILE.json]

Runs real trials (``trials.run_trial``: fine-tune, prune, quantize, export, measure in ONNX
Runtime) of the config's task, space and objectives, proposed by Optuna studies built exactly as
a search builds them (``orchestrator._samplers.build_sampler`` and the space's distributions),
each study told every outcome as a search's searcher does (failures as FAIL). No Ray Tune and
no MLflow: they do not change which trials a sampler proposes, and leaving them out lets many
studies share one pool of worker processes.

- Every study keeps at most ``concurrency`` trials in flight (the config's, 2 for digits.yaml),
  as a search with that concurrency would; random search is not limited (its proposals do not
  depend on results). Studies differ only by the sampler and its seed (``--seeds``); the task
  seed, the trials' training seeds (search seed + trial number) and the dense baseline are the
  same for all, so all share one hypervolume reference point (``reports.reference_point``: 2x
  the baseline's cost objectives, accuracy 0).
- ``--samplers`` names what is compared: ``default`` (the config's sampler), ``random``
  (``--random-budget`` trials), ``tpe:S`` (TPE with S startup trials), ``nsga2:P`` (NSGA-II,
  population P), ``gp:S`` (GP, S startup trials); the others get ``--budget`` trials each.
- The hypervolume after k trials covers the first k proposed (trial numbers 0..k-1); the
  report gives each study's value at a few k and the median over seeds, and how many random
  trials it takes to reach the default's median hypervolume at ``--budget``.
- Trials are scheduled on ``--workers`` processes (one torch thread each), the default and
  random studies first; past ``--deadline-s`` no new trial starts and unfinished studies are
  reported as such. Latency is measured inline in each trial's process while the other workers
  run: a noisier objective than a search's dedicated meter gives, equally for every sampler.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState

from orchestrator._samplers import build_sampler
from reports import reference_point
from searchspace import SamplerSpec, SearchSpec, TrialParams, load_spec, to_distributions

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python benchmarks/sampler_efficiency.py` from anywhere
    sys.path.insert(0, str(ROOT))
from benchmarks._sampler_report import render  # noqa: E402

DEFAULT_CONFIG = ROOT / "examples" / "digits.yaml"


@dataclass(frozen=True)
class Variant:
    """One sampler setting under test: its label, the sampler spec and its trial budget."""

    label: str
    spec: SamplerSpec
    budget: int
    limited: bool  # at most `concurrency` trials in flight (every model-based sampler)


def parse_variant(text: str, default: SamplerSpec, *, budget: int, random_budget: int) -> Variant:
    """``default``, ``random``, ``tpe:S``, ``nsga2:P`` or ``gp:S`` (see the module doc)."""
    name, _, arg = text.partition(":")
    if text == "default":
        return Variant(f"default ({_describe(default)})", default, budget, default.name != "random")
    if text == "random":
        return Variant("random", SamplerSpec(name="random"), random_budget, False)
    if name == "tpe" and arg.isdigit():
        spec = SamplerSpec(name="tpe", startup_trials=int(arg))
    elif name == "gp" and arg.isdigit():
        spec = SamplerSpec(name="gp", startup_trials=int(arg))
    elif name == "nsga2" and arg.isdigit():
        spec = SamplerSpec(name="nsga2", population_size=int(arg))
    else:
        raise SystemExit(
            f"--samplers: {text!r} is not one of default, random, tpe:S, nsga2:P, gp:S "
            "(S startup trials, P population), e.g. nsga2:16"
        )
    return Variant(_describe(spec), spec, budget, True)


def _describe(s: SamplerSpec) -> str:
    if s.name == "nsga2":
        return f"nsga2 population {s.population_size}"
    if s.name in ("tpe", "gp"):
        return f"{s.name} startup {s.startup_trials}"
    return s.name


@dataclass
class Study:
    """One sampler, one seed: its Optuna study and the trials it proposed."""

    variant: Variant
    seed: int
    study: optuna.Study
    asked: int = 0
    running: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)

    def can_ask(self, concurrency: int) -> bool:
        if self.asked >= self.variant.budget:
            return False
        return not self.variant.limited or self.running < concurrency

    @property
    def done(self) -> bool:
        return len(self.rows) >= self.variant.budget


@dataclass(frozen=True)
class Job:
    """What a worker needs to run one trial (plain data, pickled to the worker)."""

    config: str
    params: dict[str, Any]
    number: int
    cache_dir: str
    work_root: str


def run_job(job: Job) -> dict[str, Any]:
    """Run one trial in a worker process; return its objective values or its error."""
    from trials import TrialSettings, run_trial

    spec = _spec(job.config)
    work_dir = Path(tempfile.mkdtemp(prefix=f"t{job.number:04d}-", dir=job.work_root))
    settings = TrialSettings.for_search(
        spec,
        seed=spec.seed + job.number,
        baseline_seed=spec.seed,
        cache_dir=Path(job.cache_dir),
        work_dir=work_dir,
    )
    t0 = time.perf_counter()
    out: dict[str, Any]
    try:
        result = run_trial(_task(spec.task), TrialParams.from_dict(job.params), settings)
        out = {m: float(result.metrics[m]) for m in spec.metric_names}
        out["ok"] = all(math.isfinite(v) for v in out.values())
    except Exception as exc:  # a trial's own failure is a result (told as FAIL)
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    out["seconds"] = time.perf_counter() - t0
    return out


@functools.cache
def _spec(path: str) -> SearchSpec:
    return load_spec(path)


@functools.cache
def _task(ref: str) -> Any:
    from trials import load_task

    return load_task(ref)


def _init_worker() -> None:
    import logging
    import warnings

    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)


def measure_baseline(spec: SearchSpec, cache_dir: Path, work: Path) -> dict[str, float]:
    from trials import TrialSettings, ensure_baseline, load_task, run_baseline

    task = load_task(spec.task)
    ensure_baseline(task, seed=spec.seed, cache_dir=cache_dir)
    settings = TrialSettings.for_search(spec, seed=spec.seed, cache_dir=cache_dir, work_dir=work)
    return dict(run_baseline(task, settings).metrics)


def run_studies(
    studies: list[Study],
    distributions: dict[str, BaseDistribution],
    *,
    config: str,
    metrics: list[str],
    concurrency: int,
    workers: int,
    cache_dir: Path,
    work_root: Path,
    deadline: float,
) -> None:
    """Keep ``workers`` trials running, asking the studies in list order (the first ones first);
    tell each outcome to its study as it arrives. Past ``deadline`` nothing new is asked."""
    running: dict[Future[dict[str, Any]], tuple[Study, optuna.Trial, int]] = {}
    ctx = get_context("spawn")
    cache, root = str(cache_dir), str(work_root)
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
        while True:
            if time.time() < deadline:
                for st in studies:
                    while len(running) < workers and st.can_ask(concurrency):
                        trial = st.study.ask(distributions)
                        job = Job(config, trial.params, trial.number, cache, root)
                        running[pool.submit(run_job, job)] = (st, trial, trial.number)
                        st.asked += 1
                        st.running += 1
            if not running:
                return
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                st, trial, number = running.pop(fut)
                st.running -= 1
                out = fut.result()
                if out.get("ok"):
                    st.study.tell(trial, [out[m] for m in metrics])
                else:
                    st.study.tell(trial, state=TrialState.FAIL)
                st.rows.append({"number": number, **trial.params, **out})


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budget", type=int, default=32)
    p.add_argument("--random-budget", type=int, default=128)
    p.add_argument(
        "--samplers",
        nargs="+",
        default=["default", "random", "nsga2:8", "nsga2:16", "tpe:4", "tpe:16", "gp:8"],
    )
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    p.add_argument("--deadline-s", type=float, default=math.inf)
    p.add_argument("--workdir", type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument("--raw", type=Path, help="write every trial's knobs and results (JSON)")
    a = p.parse_args(argv)
    command = "python benchmarks/sampler_efficiency.py " + " ".join(
        shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:])
    )
    t0 = time.time()
    config = str(a.config.resolve())
    spec = load_spec(config)
    objectives = [(o.metric, o.direction) for o in spec.objectives]
    variants = [
        parse_variant(s, spec.sampler, budget=a.budget, random_budget=a.random_budget)
        for s in a.samplers
    ]
    work = (a.workdir or Path(tempfile.mkdtemp(prefix="sampler-eff-"))).resolve()
    cache_dir, work_root = work / "cache", work / "trials"
    work_root.mkdir(parents=True, exist_ok=True)
    baseline = measure_baseline(spec, cache_dir, work / "baseline")
    ref = reference_point(baseline, objectives)
    print(f"baseline measured; reference {ref}", flush=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    studies = [
        Study(
            v,
            seed,
            optuna.create_study(
                directions=spec.directions,
                sampler=build_sampler(v.spec.model_copy(update={"seed": seed})),
            ),
        )
        for v in variants
        for seed in a.seeds
    ]
    deadline = t0 + a.deadline_s
    run_studies(
        studies,
        to_distributions(spec.space),
        config=config,
        metrics=spec.metric_names,
        concurrency=spec.concurrency,
        workers=a.workers,
        cache_dir=cache_dir,
        work_root=work_root,
        deadline=deadline,
    )
    report = render(
        studies,
        variants,
        a.seeds,
        spec=spec,
        ref=ref,
        baseline=baseline,
        budget=a.budget,
        command=command,
        workers=a.workers,
        wall_s=time.time() - t0,
        deadline_hit=any(not st.done for st in studies),
    )
    print(report)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(report)
    if a.raw:
        raw = {
            "command": command,
            "reference": ref,
            "baseline": baseline,
            "studies": [
                {"sampler": st.variant.label, "seed": st.seed, "trials": st.rows} for st in studies
            ],
        }
        a.raw.write_text(json.dumps(raw, indent=None, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
