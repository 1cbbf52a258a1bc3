"""Resolve ``quantization.int8_format: auto`` once per search, where latency is measured.

The int8 formats of ONNX Runtime differ in speed from one CPU to the next, so ``auto`` times
them; the timing belongs to the machine that measures every artifact of the search (its
latency meter, ``orchestrator._latency``), under that meter's gate, and before any trial trains
beside it. The driver does it right after the dense baseline: it quantizes the dense model in
every candidate format, has the meter time them against each other, and hands the choice to
every trial in ``TrialSettings.int8_auto``. The timing is cached in the search's cache
directory, keyed by task, the dense model's layer shapes and the meter's CPU; a cached timing
is used without timing again.

A format *named* in the config is used as named, but the same figures (the same cache) say
whether this CPU's int8 kernels compute that format's own math (``check_named_int8_format``):
where they do not (full-range formats on x86 without VNNI saturate), the driver warns and the
search run is tagged, since its 8-bit trials' accuracy is then that of these kernels, which a
CPU with VNNI would not reproduce.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, TextIO

from orchestrator._latency import MeterRef, SearchMeter
from searchspace import SearchSpec, SlimtuneError
from trials import (
    Int8Cache,
    Int8Choice,
    Int8Figures,
    Int8Resolution,
    Int8Subject,
    Int8Timing,
    Task,
    TrialSettings,
    int8_resolution,
    int8_subject,
    named_choice,
    refused_int8_formats,
    resolved_choice,
)

# Part of the cache key: a timing by a search's meter, under its gate, is never confused with
# one a trial took in its own process (a library call of trials.run_trial).
TIMED_BY = "search-meter"


class Int8ResolutionError(SlimtuneError):
    """The search's latency meter could not resolve ``int8_format: auto``."""


def needs_int8_resolution(spec: SearchSpec) -> bool:
    """Whether the search has ``int8_format: auto`` and trials that can draw 8 bits."""
    return spec.quantization.int8_format == "auto" and 8 in spec.space.bit_widths()


def needs_kernel_check(spec: SearchSpec) -> bool:
    """Whether the search names an int8 format and has trials that can draw 8 bits."""
    return spec.quantization.int8_format != "auto" and 8 in spec.space.bit_widths()


def resolve_int8_format(
    spec: SearchSpec,
    task: Task,
    meter: MeterRef,
    *,
    cache_dir: Path,
    device: str = "cpu",
    timing: Int8Timing | None = None,
    out: TextIO | None = None,
) -> Int8Resolution | None:
    """The int8 format of the search's 8-bit trials when the config says ``auto`` (None when it
    names one, or no trial draws 8 bits): timed by the search's meter, or read from the cache.

    ``device`` is where the dense baseline trains if it is not cached yet; ``timing`` how the
    candidates are timed (None: ``Int8Timing()``)."""
    if not needs_int8_resolution(spec):
        return None
    figures, source, node = _figures(spec, task, meter, cache_dir, device, timing)
    resolution = int8_resolution(figures, source, node=node)
    if out is not None:
        print(_describe(resolution), file=out, flush=True)
    return resolution


def check_named_int8_format(
    spec: SearchSpec,
    task: Task,
    meter: MeterRef,
    *,
    cache_dir: Path,
    device: str = "cpu",
    timing: Int8Timing | None = None,
    out: TextIO | None = None,
) -> Int8Choice | None:
    """For a config that names its int8 format (and trials that draw 8 bits): that format with
    the meter's figures of every candidate (the ones ``auto`` uses, from the same cache), so
    that the search run states whether this CPU's kernels compute the named format's own math.
    Where they do not, a warning goes to ``out``. None when the config says ``auto`` or no
    trial draws 8 bits."""
    if not needs_kernel_check(spec):
        return None
    figures, _, node = _figures(spec, task, meter, cache_dir, device, timing)
    choice = named_choice(spec.quantization.int8_format, figures, node=node)
    if out is not None and choice.fmt.name in refused_int8_formats(figures.deviations):
        print(_departs(choice), file=out, flush=True)
    return choice


def _figures(
    spec: SearchSpec,
    task: Task,
    meter: MeterRef,
    cache_dir: Path,
    device: str,
    timing: Int8Timing | None,
) -> tuple[Int8Figures, Literal["measured", "cached"], str]:
    settings = TrialSettings.for_search(
        spec, seed=spec.seed, cache_dir=cache_dir, work_dir=cache_dir, device=device
    )
    subject = int8_subject(task, settings)
    search_meter = meter.connect()
    with search_meter.working():
        return _measure(subject, search_meter, cache_dir, timing or Int8Timing())


def _measure(
    subject: Int8Subject, meter: SearchMeter, cache_dir: Path, timing: Int8Timing
) -> tuple[Int8Figures, Literal["measured", "cached"], str]:
    """The candidates' figures on the meter's CPU: from the cache, else timed and cached."""
    cpu = meter.cpu()
    cache = Int8Cache(cache_dir, {**subject.key(cpu.identity), "timed_by": TIMED_BY})
    with cache.locked():
        cached = cache.read()
        if cached is not None:
            return cached, "cached", cpu.node
        timed = meter.time_candidates(subject.candidates(cache.folder), subject.feed(), timing)
        if timed.cpu.identity != cpu.identity:
            raise Int8ResolutionError(
                f"the latency meter moved to another CPU while it timed the int8 formats "
                f"({cpu.identity} on node {cpu.node}, then {timed.cpu.identity} on node "
                f"{timed.cpu.node}): its node was lost. Fix: run the search again; pin the meter "
                "to one kind of node with latency.resources, or name quantization.int8_format."
            )
        return cache.write(timed.figures, timing), "measured", timed.cpu.node


def resolution_tags(resolution: Int8Resolution) -> dict[str, str]:
    """The search's choice as run tags: the same ``int8_format*`` tags its 8-bit trials get."""
    return resolved_choice(resolution).tags()


def _departs(choice: Int8Choice) -> str:
    name = choice.fmt.name
    refused = refused_int8_formats(choice.deviations)
    faithful = ", ".join(sorted(set(choice.deviations) - set(refused)))
    others = f"where {faithful} compute their own" if faithful else "as every format's do here"
    fix = f"name one of {faithful}" if faithful else "run the search on a CPU with VNNI"
    return (
        f"slimtune: warning: int8 format {name} (named in quantization.int8_format): this "
        f"CPU's int8 kernels depart from its quantized math by {choice.deviations[name]:.1%} "
        f"of the output (they saturate without VNNI), {others}. The search uses it as named: "
        "its 8-bit trials are measured as these kernels run them, accuracy included, which a "
        f"CPU with VNNI would not reproduce. Fix: quantization.int8_format: auto, or {fix}."
    )


def _describe(resolution: Int8Resolution) -> str:
    how = "timed by the search meter" if resolution.source == "measured" else "cached timing"
    latencies = json.dumps({k: round(v, 4) for k, v in resolution.latencies_ms.items()})
    text = (
        f"int8 format (auto): {resolution.format} ({how} on node {resolution.node[:12]}; "
        f"median ms {latencies})"
    )
    refused = refused_int8_formats(resolution.deviations)
    if refused:
        text += (
            f"; not chosen, as this CPU's int8 kernels depart from their quantized math "
            f"(saturating without VNNI): {', '.join(refused)}"
        )
    return text
