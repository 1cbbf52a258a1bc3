"""What --resume checks before it runs anything: the config is the one the search started with
(against a real MLflow SQLite store, search runs made by the search's own code), and how the
trials of a restored search are counted (real Ray Tune ``Result`` objects). The whole resume
through the CLI is in test_faults.py."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from ray.tune import Result

from orchestrator._counts import FAILED_KEY, TrialCounts
from orchestrator._resume import (
    ResumeConfigChanged,
    StartConfigMissing,
    check_resume_config,
    config_changes,
    started_spec,
)
from orchestrator._tracking import CONFIG_ARTIFACT_TAG, open_experiment, start_search_run
from searchspace import SearchSpec, load_spec, parse_spec

CONFIG = """
experiment: {experiment}
task: digits
trials: 4
space:
  sparsity: {{low: 0.0, high: 0.8}}
  bits: {{choices: [8, 32]}}
sampler: {{name: random, seed: 3}}
training: {{epochs: 1}}
"""
OBJECTIVES = ["accuracy", "size_gzip_bytes", "latency_ms"]


def _result(metrics: dict[str, Any], error: Exception | None = None) -> Result:
    return Result(metrics=metrics, checkpoint=None, error=error, path="/tmp/trial")


def test_trial_counts_take_errors_and_failure_reports_as_failed() -> None:
    done = {"accuracy": 0.9, "size_gzip_bytes": 1e4, "latency_ms": 0.1}
    results = [
        _result(done),
        _result({**done, "replayed": 1}),
        # restored by --resume, failed again: Ray keeps the result it reported before
        _result(done, RuntimeError("recorded with other parameters")),
        _result({FAILED_KEY: 1, "trial_error": "NonFiniteMetric: nan"}),
        _result({**done, FAILED_KEY: 1}),
        _result({"accuracy": 0.9}),  # an objective missing
        _result({}),  # never reported
    ]
    assert TrialCounts.of(results, OBJECTIVES) == TrialCounts(finished=2, failed=5)
    assert TrialCounts.of([], OBJECTIVES) == TrialCounts(finished=0, failed=0)


def _spec(experiment: str = "x", extra: str = "") -> SearchSpec:
    return parse_spec(CONFIG.format(experiment=experiment) + extra)


def test_config_changes_name_each_field_and_skip_where_the_records_are() -> None:
    started = _spec()
    text = CONFIG.format(experiment="x").replace("trials: 4", "trials: 6")
    text = text.replace("sparsity: {low: 0.0, high: 0.8}", "sparsity: 0.5")
    where = "tracking: {uri: 'http://127.0.0.1:5000'}\nstorage: /nfs/state\n"
    edited = parse_spec(text + "seed: 1\n" + where)
    assert config_changes(started, edited) == {
        "seed": (0, 1),
        "trials": (4, 6),
        "space.sparsity": ({"low": 0.0, "high": 0.8, "log": False}, 0.5),
    }
    assert config_changes(started, parse_spec(CONFIG.format(experiment="x") + where)) == {}


def test_one_choice_and_the_same_value_fixed_are_the_same_knob() -> None:
    default = _spec()  # quant_scheme: {choices: [qat]}
    written = parse_spec(
        CONFIG.format(experiment="x").replace("space:\n", "space:\n  quant_scheme: qat\n")
    )
    assert config_changes(default, written) == {}
    ptq = parse_spec(
        CONFIG.format(experiment="x").replace("space:\n", "space:\n  quant_scheme: ptq\n")
    )
    assert config_changes(default, ptq) == {"space.quant_scheme": ("qat", "ptq")}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> MlflowClient:
    work = tmp_path_factory.mktemp("store")
    return MlflowClient(f"sqlite:///{work / 'mlflow.db'}")


def _killed_search(client: MlflowClient, tmp_path: Path, experiment: str, **counts: int) -> str:
    """A search run as ``slimtune search c.yaml [--trials N]`` records it, then killed."""
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.format(experiment=experiment))
    spec = load_spec(path).model_copy(update=counts)
    exp_id = open_experiment(client, experiment, artifact_root=tmp_path / "mlruns")
    run_id = start_search_run(client, exp_id, spec, config_path=path)
    client.set_terminated(run_id, "KILLED")
    return run_id


def test_resume_with_the_started_config_passes_and_an_edited_one_is_refused(
    client: MlflowClient, tmp_path: Path
) -> None:
    run_id = _killed_search(client, tmp_path, "edited")
    before = client.get_run(run_id)
    assert before.data.tags[CONFIG_ARTIFACT_TAG] == "c.yaml"
    out = io.StringIO()
    check_resume_config(client, _spec("edited", "storage: /elsewhere\n"), out=out)
    assert out.getvalue() == ""

    edited = parse_spec(CONFIG.format(experiment="edited").replace("high: 0.8", "high: 0.9"))
    with pytest.raises(ResumeConfigChanged) as err:
        check_resume_config(client, edited.model_copy(update={"concurrency": 3}), out=out)
    msg = str(err.value)
    assert f"search run {run_id}" in msg and "'c.yaml'" in msg
    assert "space.sparsity.high: started with 0.8, now 0.9" in msg
    assert "concurrency: started with 2, now 3" in msg
    assert "runs with the config it started with" in msg
    assert "Fix: put the original config back" in msg and "without --resume" in msg
    after = client.get_run(run_id)  # nothing recorded was altered
    assert after.info.status == "KILLED" and after.info.end_time == before.info.end_time
    assert (after.data.tags, after.data.params) == (before.data.tags, before.data.params)


def test_trials_from_the_command_line_are_part_of_the_started_config(
    client: MlflowClient, tmp_path: Path
) -> None:
    run_id = _killed_search(client, tmp_path, "overridden", trials=9)
    spec, name = started_spec(client, client.get_run(run_id))
    assert (spec.trials, name) == (9, "c.yaml")
    with pytest.raises(ResumeConfigChanged, match="trials: started with 9, now 4"):
        check_resume_config(client, _spec("overridden"), out=io.StringIO())
    as_started = _spec("overridden").model_copy(update={"trials": 9})  # --trials 9 again
    check_resume_config(client, as_started, out=io.StringIO())


def test_a_run_recorded_before_the_tag_is_found_by_its_one_config_file(
    client: MlflowClient, tmp_path: Path
) -> None:
    run_id = _killed_search(client, tmp_path, "untagged")
    client.delete_tag(run_id, CONFIG_ARTIFACT_TAG)
    spec, name = started_spec(client, client.get_run(run_id))
    assert name == "c.yaml" and spec == _spec("untagged")
    (tmp_path / "other.json").write_text("{}")
    client.log_artifact(run_id, str(tmp_path / "other.json"))
    with pytest.raises(StartConfigMissing, match=r"2 config files \['c.yaml', 'other.json'\]"):
        started_spec(client, client.get_run(run_id))


def test_a_search_whose_config_cannot_be_read_back_resumes_after_a_warning(
    client: MlflowClient, tmp_path: Path
) -> None:
    exp_id = open_experiment(client, "old", artifact_root=tmp_path / "mlruns")
    run_id = client.create_run(exp_id, tags={"slimtune.role": "search"}).info.run_id
    client.set_terminated(run_id, "KILLED")
    out = io.StringIO()
    check_resume_config(client, _spec("old"), out=out)
    assert "warning: cannot check that --resume runs with the config" in out.getvalue()
    assert "0 config files" in out.getvalue()
    assert client.get_run(run_id).info.status == "KILLED"
