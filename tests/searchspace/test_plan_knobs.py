"""The per-layer plan knobs: `space.plan` and `space.budget` are validated with the field, the
value and the fix; valid ones reach the Optuna distributions and TrialParams."""

from __future__ import annotations

import pytest

from searchspace import ConfigError, TrialParams, parse_spec, to_distributions

BASE = "experiment: x\ntask: digits\nspace:\n"


@pytest.mark.parametrize(
    ("line", "field", "value"),
    [
        ("  budget: 1.5\n", "space.budget", "1.5"),
        ("  budget: {low: 0.0, high: 0.5}\n", "space.budget", "0.0"),
        ("  plan: {choices: [uniform, perlayer]}\n", "space.plan", "perlayer"),
        ("  budget_metric: speed\n", "space.budget_metric", "speed"),
    ],
)
def test_bad_plan_knobs_name_the_field_value_and_fix(line: str, field: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_spec(BASE + line, source="c.yaml")
    text = str(err.value)
    assert field in text and value in text, text
    assert "Fix: write" in text
    assert any(f in text for f in ("budget as a fraction", "plan as uniform", "budget_metric as"))


def test_plan_knobs_are_searched_and_reach_the_trial() -> None:
    spec = parse_spec(
        BASE + "  plan: {choices: [uniform, mixed]}\n  budget: {low: 0.2, high: 0.6}\n",
        source="c.yaml",
    )
    distributions = to_distributions(spec.space)
    assert {"plan", "budget"} <= set(distributions)
    assert "plan" in spec.space.varying_knobs() and "budget" in spec.space.varying_knobs()
    params = TrialParams.from_dict(
        {"lr": 1e-3, "batch_size": 32, "sparsity": 0.0, "bits": 8, "plan": "mixed", "budget": 0.3}
    )
    assert params.plan == "mixed" and params.budget == 0.3
    old = TrialParams.from_dict({"lr": 1e-3, "batch_size": 32, "sparsity": 0.0, "bits": 8})
    assert old.plan == "uniform"  # records from before plans read as uniform trials
    assert old.budget_metric == "size"  # and records from before latency budgets as size


def test_the_budget_metric_is_a_searchable_name_knob() -> None:
    spec = parse_spec(
        BASE + "  plan: mixed\n  budget_metric: {choices: [size, latency]}\n", source="c.yaml"
    )
    assert "budget_metric" in to_distributions(spec.space)
    assert "budget_metric" in spec.space.varying_knobs()
    fixed = parse_spec(BASE + "  plan: mixed\n  budget_metric: latency\n", source="c.yaml")
    assert "budget_metric" not in fixed.space.varying_knobs()
    with pytest.raises(ValueError, match="budget_metric must be one of"):
        TrialParams(lr=1e-3, batch_size=8, sparsity=0.0, bits=8, budget_metric="speed")
