"""`slimtune rebuild`: a tiny real search (real Ray, real MLflow SQLite) logs a record with each
trial; rebuilding a finished trial from it reproduces the logged ONNX file bit for bit, its
accuracy exactly and its size; a damaged, newer or missing record fails cleanly (exit 2)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.cli import main
from searchspace import INT8_FORMATS, load_spec
from tests.orchestrator.conftest import cli
from trials import RECORD_SCHEMA_VERSION, TrialRecord, cpu_kind

pytestmark = pytest.mark.e2e

TINY = Path(__file__).resolve().parents[1] / "trials"  # holds trials_tiny_task.py
RECORD = "trial/record.json"
# Random sampler seed 0 draws one unstructured (gradual pruning, int8 calibration) and one
# structured trial: both code paths are rebuilt.
CONFIG = """
experiment: rebuild
task: trials_tiny_task:TinyDigits
seed: 7
trials: 2
concurrency: 2
space:
  lr: {low: 1.0e-3, high: 3.0e-3, log: true}
  batch_size: {choices: [64]}
  sparsity: {low: 0.3, high: 0.6}
  bits: {choices: [8]}
  pruning: {choices: [unstructured, structured]}
sampler: {name: random, seed: 0}
training: {epochs: 1}
quantization: {int8_format: u8s8-per-channel}  # named: used as named, its kernels checked
latency: {warmup: 2, repeats: 10, where: inline}  # latency is informational in a rebuild
"""


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, list[Any]]:
    work = tmp_path_factory.mktemp("rebuild")
    (work / "c.yaml").write_text(CONFIG)
    proc = cli(
        "search",
        "c.yaml",
        cwd=work,
        env={"PYTHONPATH": os.pathsep.join([str(TINY), os.environ.get("PYTHONPATH", "")])},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (work / "search.out").write_text(proc.stdout)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("rebuild")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=100)
    trials = sorted(
        (r for r in runs if r.data.tags.get("slimtune.role") == "trial"),
        key=lambda r: int(r.data.tags["slimtune.trial_number"]),
    )
    assert [t.info.status for t in trials] == ["FINISHED", "FINISHED"]
    return work, uri, trials


@pytest.fixture
def tiny_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(TINY))  # the in-process rebuild imports the task


def _record(uri: str, run_id: str, dst: Path) -> str:
    return Path(MlflowClient(uri).download_artifacts(run_id, RECORD, str(dst))).read_text()


def test_each_trial_logs_a_small_complete_record(
    search: tuple[Path, str, list[Any]], tmp_path: Path
) -> None:
    work, uri, trials = search
    spec = load_spec(work / "c.yaml")
    baselines = set()
    for run in trials:
        text = _record(uri, run.info.run_id, tmp_path / run.info.run_id)
        assert len(text) < 8000
        record = TrialRecord.from_json(text, source="test")
        number = int(run.data.tags["slimtune.trial_number"])
        assert record.schema_version == RECORD_SCHEMA_VERSION
        # The validated config, task, training and latency included; latency.isolation as
        # resolved for this machine (auto -> the mode that measured the trial).
        measured = record.spec.latency.isolation
        assert measured in ("pause", "cores", "none")
        latency = spec.latency.model_copy(update={"isolation": measured})
        assert record.spec == spec.model_copy(update={"latency": latency})
        assert record.number == number
        assert record.settings["seed"] == spec.seed + number == int(run.data.params["seed"])
        assert record.settings["baseline_seed"] == spec.seed  # every trial: the one baseline
        assert record.settings["epochs"] == 1 and record.torch_threads == 1
        assert {k: str(v) for k, v in record.params.to_dict().items()} == {
            k: run.data.params[k] for k in record.params.to_dict()
        }
        assert record.version_drift() == []
        assert record.cpu == cpu_kind()  # the kind of CPU it ran on: kernels depend on it
        assert record.size_bytes == run.data.metrics["size_bytes"]
        lineage = record.lineage
        assert lineage is not None and lineage.pruning.scheme == run.data.params["pruning"]
        baselines.add(lineage.baseline_sha256)
        if lineage.pruning.scheme == "structured":
            widths = ",".join(map(str, lineage.pruning.widths))
            assert widths == run.data.tags["pruning_widths"]
        else:
            history = ",".join(f"{s}:{p:.3f}" for s, p in lineage.pruning.history)
            assert history == run.data.tags["pruning_history"]
    schemes = {t.data.params["pruning"] for t in trials}
    assert schemes == {"unstructured", "structured"}, "the sampler seed no longer draws both"
    assert len(baselines) == 1  # every trial compressed the search's one dense baseline


def test_a_named_int8_format_is_used_and_its_kernels_checked_on_the_search_run(
    search: tuple[Path, str, list[Any]],
) -> None:
    """The config names u8s8-per-channel: every 8-bit trial uses it; the search run states
    whether the meter's CPU computes its math (its kernels saturate on x86 without VNNI), and
    the driver warned exactly when they do not."""
    work, uri, trials = search
    client = MlflowClient(uri)
    parent = client.get_run(trials[0].data.tags["mlflow.parentRunId"]).data.tags
    assert parent["int8_format"] == "u8s8-per-channel" and parent["int8_format_source"] == "config"
    deviations = json.loads(parent["int8_format_kernel_deviation"])
    assert set(deviations) == set(INT8_FORMATS)
    departs = "u8s8-per-channel" in parent.get("int8_format_refused", "").split(",")
    printed = (work / "search.out").read_text()
    assert ("warning: int8 format u8s8-per-channel (named" in printed) == departs, printed
    for run in trials:
        assert run.data.tags["int8_format"] == "u8s8-per-channel"
        assert run.data.tags["int8_format_source"] == "config"


def test_rebuild_reproduces_each_trial_bit_for_bit(
    search: tuple[Path, str, list[Any]],
    tmp_path: Path,
    tiny_importable: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, uri, trials = search
    client = MlflowClient(uri)
    for run in trials:
        out = tmp_path / run.info.run_id
        code = main(["rebuild", run.info.run_id, "--out", str(out), "--tracking-uri", uri])
        printed = capsys.readouterr()
        assert code == 0, printed.out + printed.err
        assert "reproduced bit for bit" in printed.out
        logged = client.download_artifacts(run.info.run_id, "model/model.onnx", str(tmp_path))
        assert (out / "model.onnx").read_bytes() == Path(logged).read_bytes()
        checks = {c["name"]: c for c in json.loads((out / "rebuild.json").read_text())["checks"]}
        assert checks["accuracy"]["verdict"] == "exact"
        assert checks["size_bytes"]["verdict"] == "exact"
        assert checks["weights sha256"]["ok"] and checks["baseline sha256"]["ok"]
        assert checks["latency_ms"]["verdict"].startswith("informational")


def test_rebuild_without_the_search_cache_trains_the_same_baseline(
    search: tuple[Path, str, list[Any]],
    tmp_path: Path,
    tiny_importable: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, uri, trials = search
    run_id = trials[-1].info.run_id
    code, text = _rebuild(
        uri, run_id, tmp_path / "o", capsys, "--cache-dir", str(tmp_path / "empty-cache")
    )
    assert code == 0, text
    assert list((tmp_path / "empty-cache").glob("*.pt"))  # trained here, not loaded


def _fake_trial(uri: str, source: Any, record_text: str | None) -> str:
    """A FINISHED trial run holding ``source``'s metrics and the given record text."""
    client = MlflowClient(uri)
    run = client.create_run(
        source.info.experiment_id,
        tags={
            "slimtune.role": "trial",
            "mlflow.parentRunId": source.data.tags["mlflow.parentRunId"],
        },
    )
    run_id = str(run.info.run_id)
    for key, value in source.data.metrics.items():
        client.log_metric(run_id, key, value)
    if record_text is not None:
        client.log_text(run_id, record_text, RECORD)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _rebuild(
    uri: str, run_id: str, out: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, str]:
    code = main(["rebuild", run_id, "--out", str(out), "--tracking-uri", uri, *extra])
    printed = capsys.readouterr()
    return code, printed.out + printed.err


def test_a_newer_record_is_refused_naming_the_field_and_fix(
    search: tuple[Path, str, list[Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, uri, trials = search
    data = json.loads(_record(uri, trials[0].info.run_id, tmp_path))
    data["schema_version"] = RECORD_SCHEMA_VERSION + 1
    data["slimtune_version"] = "9.0.0"
    run_id = _fake_trial(uri, trials[0], json.dumps(data))
    code, text = _rebuild(uri, run_id, tmp_path / "o", capsys)
    assert code == 2, text
    assert "field 'schema_version'" in text and "upgrade slimtune to 9.0.0" in text
    assert "Traceback" not in text and not (tmp_path / "o" / "model.onnx").exists()


def test_a_tampered_record_is_refused(
    search: tuple[Path, str, list[Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, uri, trials = search
    data = json.loads(_record(uri, trials[0].info.run_id, tmp_path))
    data["trial"]["settings"]["epochs"] = "three"
    run_id = _fake_trial(uri, trials[0], json.dumps(data))
    code, text = _rebuild(uri, run_id, tmp_path / "o", capsys)
    assert code == 2, text
    assert "field 'trial.settings.epochs'" in text and "Fix:" in text


def test_other_library_versions_warn_with_the_pin(
    search: tuple[Path, str, list[Any]],
    tmp_path: Path,
    tiny_importable: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, uri, trials = search
    data = json.loads(_record(uri, trials[0].info.run_id, tmp_path))
    data["versions"]["torch"] = "2.0.0"
    run_id = _fake_trial(uri, trials[0], json.dumps(data))
    code, text = _rebuild(uri, run_id, tmp_path / "o", capsys)
    assert "warning" in text and "torch 2.0.0" in text and "pip install 'torch==2.0.0'" in text
    assert code == 0, text  # the versions here are the real ones: it still reproduces


def test_another_kind_of_cpu_warns_and_is_named_as_a_cause(
    search: tuple[Path, str, list[Any]],
    tmp_path: Path,
    tiny_importable: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, uri, trials = search
    data = json.loads(_record(uri, trials[0].info.run_id, tmp_path))
    data["machine"] = {"key": "x86_64 OtherVendor avx2", "model": "Other CPU 9000"}
    data["outcome"]["onnx_sha256"] = "0" * 64  # as if that CPU's kernels made other bytes
    run_id = _fake_trial(uri, trials[0], json.dumps(data))
    code, text = _rebuild(uri, run_id, tmp_path / "o", capsys)
    assert "ran on Other CPU 9000 (x86_64 OtherVendor avx2)" in text
    assert f"this machine is {cpu_kind()}" in text and "may differ bit for bit" in text
    # The onnx fingerprint is not a required check: accuracy and size still decide.
    assert code == 0 and "some fingerprints differ" in text, text
    # A record written before the CPU was recorded says nothing of it.
    del data["machine"]
    run_id = _fake_trial(uri, trials[0], json.dumps(data))
    code, text = _rebuild(uri, run_id, tmp_path / "p", capsys)
    assert "ran on" not in text and code == 0, text


def test_runs_without_a_record_are_refused(
    search: tuple[Path, str, list[Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, uri, trials = search
    code, text = _rebuild(uri, _fake_trial(uri, trials[0], None), tmp_path / "a", capsys)
    assert code == 2 and "has no trial/record.json" in text and "Fix:" in text
    parent = trials[0].data.tags["mlflow.parentRunId"]
    code, text = _rebuild(uri, parent, tmp_path / "b", capsys)
    assert code == 2 and "is not a slimtune trial" in text
    code, text = _rebuild(uri, "0" * 32, tmp_path / "c", capsys)
    assert code == 2 and "is not in the MLflow store" in text and "--tracking-uri" in text


def test_rebuild_never_writes_where_the_record_says(
    search: tuple[Path, str, list[Any]],
    tmp_path: Path,
    tiny_importable: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An edited record points its baseline cache at a folder of the attacker's choosing.
    _, uri, trials = search
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "keep.txt").write_text("untouched")
    data = json.loads(_record(uri, trials[0].info.run_id, tmp_path))
    data["baseline"]["cache_dir"] = str(planted)
    run_id = _fake_trial(uri, trials[0], json.dumps(data))
    monkeypatch.chdir(tmp_path)  # no ./.slimtune/cache here: the default is OUT/cache
    code, text = _rebuild(uri, run_id, tmp_path / "o", capsys)
    assert code == 0, text
    assert sorted(p.name for p in planted.iterdir()) == ["keep.txt"]
    assert list((tmp_path / "o" / "cache").glob("*.pt"))
    assert f"baseline cache {tmp_path / 'o' / 'cache'}" in text
