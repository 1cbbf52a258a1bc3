"""benchmarks/plan_front.py: the two studies it compares (the real run takes a quiet machine and
about an hour: benchmarks/BENCHMARKS.md, "Per-layer plans")."""

from __future__ import annotations

from pathlib import Path

from benchmarks.plan_front import kind_spec
from searchspace import Choice, FloatRange, load_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_the_uniform_study_may_use_int4_as_the_mixed_one_does() -> None:
    spec = load_spec(EXAMPLES / "mnist1d.yaml")  # bits 8/16/32 only
    assert isinstance(spec.space.bits, Choice) and 4 not in spec.space.bits.choices
    uniform = kind_spec(spec, "uniform", smoke=False)
    assert uniform.space.plan == Choice(choices=["uniform"])
    assert uniform.space.bits == Choice(choices=[4, 8, 16, 32])
    mixed = kind_spec(spec, "mixed", smoke=False, budget=(0.06, 0.4))
    assert mixed.space.plan == Choice(choices=["mixed"])
    assert mixed.space.budget == FloatRange(low=0.06, high=0.4, log=True)
    assert mixed.training == spec.training  # the config's epochs unless told otherwise
    assert kind_spec(spec, "mixed", smoke=False, epochs=1).training.epochs == 1
    assert mixed.space.budget_metric == Choice(choices=["size"])
    latency = kind_spec(spec, "mixed", smoke=False, metric="latency")
    assert latency.space.budget_metric == Choice(choices=["latency"])


def test_a_config_with_int4_keeps_its_bits() -> None:
    spec = load_spec(EXAMPLES / "transformer.yaml")
    assert kind_spec(spec, "uniform", smoke=False).space.bits == spec.space.bits
