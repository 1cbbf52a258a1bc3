"""Per-layer plans (issue 17): the front of a mixed-plan search against a uniform one.

    python benchmarks/plan_front.py [--configs examples/mnist1d.yaml examples/transformer.yaml]
        [--n 30] [--seed 0] [--out FILE] [--cache DIR] [--epochs E] [--budget LOW HIGH]
        [--budget-metric size latency] [--latency-budget LOW HIGH] [--smoke]

For each config, two or three studies of the config's sampler with the same seed and the same
number of trials, trials one after another (``trials.run_trial``; no Ray, no MLflow), one torch
thread:

- ``uniform``: the config's space with ``plan: uniform``, and int4 added to its ``bits``
  choices when the config lacks it: a mixed plan may put any layer at int4, so the uniform
  study may too (otherwise "mixed is smaller" could only mean "int4 is smaller");
- ``mixed``: ``plan: mixed`` with ``budget`` searched log-uniformly in ``--budget LOW HIGH``
  (default [0.005, 0.4] of the dense file: uniform int4 with 80 % structured pruning reaches
  below 0.01) (``bits`` unused; with ``pruning: structured`` the allocator also picks each
  layer's kept width, ``sparsity`` unused); with ``--budget-metric latency`` the budget is a
  fraction of the dense artifact's latency (searched in ``--latency-budget``, default
  [0.05, 0.6]), predicted from the per-layer latency table the first mixed trial measures
  (``trials._plan_latency``); ``--budget-metric size latency`` runs one mixed study of each
  against the same uniform one.

Reported per config and kind: the hypervolume (accuracy, size_bytes, latency_ms; reference from
the dense baseline), and, among trials whose accuracy is within 0.5 point of the best uniform
trial's, the smallest file and the lowest latency; the ratio uniform / mixed of each; and for
the mixed trials the median and worst |predicted - measured| / measured size (and latency,
with a latency budget); then the per-layer data the allocator worked from (each layer's
sensitivity and bytes per format, each group's sensitivity and bytes saved per kept width, each
layer's measured latency per format), which explains a missed target.

Latency is timed inline: run it on a quiet machine. ``--smoke``: digits, 2 trials of 1 epoch per
kind, a short latency plan: checks that the script runs, not a result.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from orchestrator._samplers import build_sampler
from reports import hypervolume, reference_point
from searchspace import Choice, FloatRange, SearchSpec, TrialParams, load_spec, to_distributions

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIGS = [ROOT / "examples" / "mnist1d.yaml", ROOT / "examples" / "transformer.yaml"]
OBJECTIVES = [("accuracy", "maximize"), ("size_bytes", "minimize"), ("latency_ms", "minimize")]
WITHIN = 0.005  # accuracy within 0.5 point of the best uniform trial


def kind_spec(
    spec: SearchSpec,
    kind: str,
    *,
    smoke: bool,
    epochs: int | None = None,
    budget: tuple[float, float] = (0.005, 0.4),
    metric: str = "size",
) -> SearchSpec:
    space: dict[str, Any] = {"plan": Choice(choices=[kind])}
    bits = spec.space.bits
    if kind == "uniform" and isinstance(bits, Choice) and 4 not in bits.choices:
        space["bits"] = Choice(choices=sorted([*bits.choices, 4]))
    if kind == "mixed":
        space["budget"] = FloatRange(low=budget[0], high=budget[1], log=True)
        space["budget_metric"] = Choice(choices=[metric])
    update: dict[str, Any] = {"space": spec.space.model_copy(update=space)}
    if smoke or epochs is not None:
        update["training"] = spec.training.model_copy(update={"epochs": epochs or 1})
    if smoke:
        update["latency"] = spec.latency.model_copy(update={"warmup": 2, "repeats": 10})
    return spec.model_copy(update=update)


def run_study(spec: SearchSpec, n: int, cache: Path, work: Path) -> pd.DataFrame:
    from trials import TrialSettings, load_task, run_trial

    task = load_task(spec.task)
    study = optuna.create_study(directions=spec.directions, sampler=build_sampler(spec.sampler))
    distributions = to_distributions(spec.space)
    rows = []
    for _ in range(n):
        trial = study.ask(distributions)
        params = TrialParams.from_dict(trial.params | _fixed(spec))
        settings = TrialSettings.for_search(
            spec,
            seed=spec.seed + trial.number,
            baseline_seed=spec.seed,
            cache_dir=cache,
            work_dir=work / f"{trial.number}",
        )
        start = time.perf_counter()
        result = run_trial(task, params, settings)
        seconds = time.perf_counter() - start
        print(
            f"{params.plan} trial {trial.number}: acc {result.metrics['accuracy']:.4f} "
            f"size {result.metrics['size_bytes']:.0f} {result.tags.get('plan_formats', '')} "
            f"keeps {result.tags.get('plan_keeps', '')}",
            file=sys.stderr,
            flush=True,
        )
        study.tell(trial, [result.metrics[m] for m in spec.metric_names])
        rows.append(
            {
                **params.to_dict(),
                **{m: result.metrics[m] for m, _ in OBJECTIVES},
                "state": "FINISHED",
                "seconds": seconds,
                "predicted": float(result.tags.get("plan_predicted_bytes", "nan")),
                "predicted_ms": float(result.tags.get("plan_predicted_ms", "nan")),
                "formats": result.tags.get("plan_formats", ""),
                "keeps": result.tags.get("plan_keeps", ""),
            }
        )
    return pd.DataFrame(rows)


def _fixed(spec: SearchSpec) -> dict[str, Any]:
    """The knobs the space fixes (a plain value or one choice): Optuna does not draw them."""
    out: dict[str, Any] = {}
    for name, knob in spec.space.knobs().items():
        if isinstance(knob, Choice) and len(knob.choices) == 1:
            out[name] = knob.choices[0]
        elif not isinstance(knob, Choice | FloatRange):
            out[name] = knob
    return out


def summarize(config: str, frames: dict[str, pd.DataFrame], baseline: dict[str, float]) -> str:
    """The table of every study, then for each mixed one its ratios to uniform, its prediction
    errors and its trials; then the uniform trials."""
    reference = reference_point(baseline, OBJECTIVES)
    best = frames["uniform"]["accuracy"].max()
    header = "| plan | trials | HV | smallest file (B) | lowest latency (ms) | trial s |"
    lines = [f"### {config}", "", header]
    lines.append("|---|---|---|---|---|---|")
    reach: dict[str, tuple[float, float]] = {}
    for kind, df in frames.items():
        ok = df[df["accuracy"] >= best - WITHIN]
        size = float(ok["size_bytes"].min()) if len(ok) else float("nan")
        latency = float(ok["latency_ms"].min()) if len(ok) else float("nan")
        reach[kind] = (size, latency)
        hv = hypervolume(df, OBJECTIVES, reference)
        lines.append(
            f"| {kind} | {len(df)} | {hv:.4f} | {size:.0f} | {latency:.4f} | "
            f"{df['seconds'].sum():.0f} |"
        )
    us, ul = reach["uniform"]
    for kind, mixed in frames.items():
        if kind == "uniform":
            continue
        ms, ml = reach[kind]
        lines += ["", f"{kind}:"]
        lines.append(
            f"uniform / mixed: size {us / ms:.2f}x, latency {ul / ml:.2f}x (target >= 1.3x)"
        )
        lines += _errors(mixed)
        columns = ["pruning", "budget", "formats", "keeps", "accuracy", "size_bytes", "predicted"]
        if mixed["predicted_ms"].notna().any():
            columns += ["latency_ms", "predicted_ms"]
        lines.append(mixed[columns].to_string())
    lines += ["", "uniform trials:"]
    uniform = ["pruning", "sparsity", "bits", "accuracy", "size_bytes", "latency_ms"]
    lines.append(frames["uniform"][uniform].to_string())
    return "\n".join(lines)


def _errors(mixed: pd.DataFrame) -> list[str]:
    """The median and worst |predicted - measured| / measured size and latency."""
    lines = []
    for what, predicted, measured in (
        ("size", "predicted", "size_bytes"),
        ("latency", "predicted_ms", "latency_ms"),
    ):
        errors = ((mixed[predicted] - mixed[measured]).abs() / mixed[measured]).dropna()
        if len(errors):
            lines.append(
                f"{what} prediction error: median {statistics.median(errors):.1%}, worst "
                f"{errors.max():.1%} (target <= 10 %)"
            )
    return lines


def per_layer(cache: Path, task: str, model: Any) -> str:
    """The sensitivity tables the mixed study used (``cache/sensitivity``): per layer, the loss
    at int8 / int4 and the fp32 -> int8 / int4 bytes; per group, the loss and the fp32 bytes it
    saves at each kept width (pruned alone; ``model``: the dense network, for its shapes)."""
    import json

    from trials._attention import rewrite_multihead_attention
    from trials._compress import prunable_layers
    from trials._plan_widths import LayerShape
    from trials._trial_steps import layer_names

    rewrite_multihead_attention(model)
    layers = prunable_layers(model)
    dense = {
        n: LayerShape.of(n, x) for n, x in zip(layer_names(model, layers), layers, strict=True)
    }
    lines = []
    for path in sorted((cache / "sensitivity").glob(f"{task}-*.json")):
        data = json.loads(path.read_text())
        if "-latency-" in path.name:
            lines += ["", f"latency table {path.name} (dense {data['dense_ms']:.4f} ms, empty "]
            lines[-1] += f"run {data['overhead_ms']:.4f} ms): layer alone, ms"
            for name, times in data["layers"].items():
                timing = ", ".join(f"{f} {ms:.4f}" for f, ms in times.items())
                lines.append(f"  {name}: {timing}")
            continue
        lines += ["", f"sensitivity table {path.name} (dense file {data['dense_file_bytes']} B):"]
        lines.append(
            "layer: loss fp16 / int8 / int4 (relative output error, that layer alone); bytes"
        )
        for name, losses in data["losses"].items():
            size = "/".join(str(dense[name].nbytes(f)) for f in ("fp32", "fp16", "int8", "int4"))
            loss = " / ".join(f"{losses.get(f, 0):.2e}" for f in ("fp16", "int8", "int4"))
            lines.append(f"  {name}: {loss}; fp32/fp16/int8/int4 {size} B")
        for group in data.get("widths", []):
            cells = []
            for option in group["options"][1:]:
                saved = sum(
                    dense[n].nbytes("fp32") - dense[n].nbytes("fp32", o, i)
                    for n, (o, i) in option["shapes"].items()
                )
                cells.append(f"keep {option['keep']:g}: loss {option['loss']:.2e}, {saved} B")
            lines.append(f"  group {group['name']} ({group['kind']}): " + "; ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", type=Path, default=DEFAULT_CONFIGS)
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--epochs", type=int, help="override the configs' training epochs")
    parser.add_argument(
        "--budget", type=float, nargs=2, default=(0.005, 0.4), metavar=("LOW", "HIGH")
    )
    parser.add_argument(
        "--budget-metric",
        choices=["size", "latency"],
        nargs="+",
        default=["size"],
        help="one mixed study per metric its budget is a fraction of",
    )
    parser.add_argument(
        "--latency-budget",
        type=float,
        nargs=2,
        default=(0.05, 0.6),
        metavar=("LOW", "HIGH"),
        help="the budget range of the latency-budget study",
    )
    parser.add_argument(
        "--cache", type=Path, help="cache directory to reuse (dense baselines, sensitivities)"
    )
    args = parser.parse_args(argv)
    import torch

    from trials import TrialSettings, load_task, run_baseline

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    configs = [ROOT / "examples" / "digits.yaml"] if args.smoke else args.configs
    n = 2 if args.smoke else args.n
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for config in configs:
            spec = load_spec(config)
            spec = spec.model_copy(
                update={
                    "seed": args.seed,
                    "sampler": spec.sampler.model_copy(update={"seed": args.seed}),
                }
            )
            cache = args.cache or root / "cache"
            dense = run_baseline(
                load_task(spec.task),
                TrialSettings.for_search(
                    kind_spec(spec, "uniform", smoke=args.smoke, epochs=args.epochs),
                    seed=spec.seed,
                    cache_dir=cache,
                    work_dir=root / "baseline",
                ),
            )
            studies = {"uniform": kind_spec(spec, "uniform", smoke=args.smoke, epochs=args.epochs)}
            for metric in args.budget_metric:
                budget = args.latency_budget if metric == "latency" else args.budget
                studies[f"mixed:{metric}"] = kind_spec(
                    spec,
                    "mixed",
                    smoke=args.smoke,
                    epochs=args.epochs,
                    budget=tuple(budget),
                    metric=metric,
                )
            frames = {
                name: run_study(study, n, cache, root / name.replace(":", "-"))
                for name, study in studies.items()
            }
            task = load_task(spec.task)
            tables = per_layer(cache, task.name, task.build_model())
            out.append(summarize(config.name, frames, dense.metrics) + tables)
            print(out[-1], flush=True)
    text = "\n\n".join(out)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
