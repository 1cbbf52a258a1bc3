"""Latency measurement: the timing plan and its statistics (real ONNX Runtime), the meters, the
config's `latency:` section, the cluster check, and pinning the meter to a node by a custom Ray
resource (a real two-node ``ray.cluster_utils.Cluster``)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from mlflow.tracking import MlflowClient
from onnx import TensorProto, helper, numpy_helper

from orchestrator._latency import MeasureGate, MeterRef
from orchestrator._resources import check_resources
from searchspace import ConfigError, parse_spec
from tests.orchestrator.conftest import cli, small_config
from trials import LatencyPlan, LatencySession, LatencyStats, TrialSettings, latency_plan

TINY_TASK_DIR = Path(__file__).resolve().parents[1] / "trials"
ABS = Path("/tmp/slimtune-latency-test")


@pytest.fixture(scope="module")
def mlp_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MLP as ONNX (a few tens of microseconds per batch-1 run)."""
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(4):
        w = numpy_helper.from_array(rng.standard_normal((128, 128)).astype(np.float32), f"w{i}")
        inits.append(w)
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [f"r{i}"]))
        prev = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 128])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, 128])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = tmp_path_factory.mktemp("onnx") / "mlp.onnx"
    onnx.save(model, str(path))
    return path


EXAMPLE = np.ones((1, 128), dtype=np.float32)


def test_stats_are_the_median_p90_spread_and_block_agreement() -> None:
    times = np.array([1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 2.0, 2.0, 1.0, 3.0])  # blocks of 2
    stats = LatencyStats.from_times(times, block=2, target_cv=0.1)
    assert stats.median_ms == 1.5 and stats.min_ms == 1.0 and stats.runs == 10
    assert stats.p90_ms == pytest.approx(np.percentile(times, 90))
    assert stats.cv == pytest.approx(np.std(times, ddof=1) / np.mean(times))
    medians = np.array([1.0, 2.0, 1.0, 2.0, 2.0])
    assert stats.median_cv == pytest.approx(np.std(medians, ddof=1) / np.mean(medians))
    assert not stats.converged  # block medians 1 and 2 ms disagree by far more than 10 %
    metrics = stats.metrics()
    assert metrics["latency_ms"] == 1.5 and metrics["latency_runs"] == 10.0


def test_timing_stops_at_repeats_once_the_blocks_agree(mlp_onnx: Path) -> None:
    session = LatencySession(mlp_onnx, threads=1)
    stats = session.time(EXAMPLE, LatencyPlan(warmup=5, repeats=50, target_cv=1.0))
    assert stats.runs == 50 and stats.converged
    assert 0 < stats.min_ms <= stats.median_ms <= stats.p90_ms


def test_timing_adds_blocks_until_the_cap_when_the_target_is_not_met(mlp_onnx: Path) -> None:
    session = LatencySession(mlp_onnx.read_bytes(), threads=1)  # from bytes, as the actor does
    plan = LatencyPlan(warmup=2, repeats=20, target_cv=1e-12, max_repeats=60)
    stats = session.time(EXAMPLE, plan)
    assert stats.runs == 60 and not stats.converged
    assert stats.median_cv > 1e-12


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"repeats": 4}, "latency.repeats"),
        ({"repeats": 50, "max_repeats": 49}, "latency.max_repeats"),
        ({"target_cv": 0.0}, "latency.target_cv"),
        ({"threads": 0}, "latency.threads"),
    ],
)
def test_a_bad_plan_names_its_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        LatencyPlan(**kwargs)
    assert info.value.field == field and "Fix:" in str(info.value)


def test_default_cap_is_five_times_the_repeats() -> None:
    assert LatencyPlan(repeats=40).max_repeats == 200


@pytest.mark.parametrize(
    ("field", "value"), [("latency_max_repeats", 10), ("latency_target_cv", 1.5)]
)
def test_trial_settings_check_the_timing_fields(field: str, value: float) -> None:
    with pytest.raises(ConfigError) as info:
        TrialSettings(epochs=1, seed=0, cache_dir=ABS, work_dir=ABS, **{field: value})
    assert info.value.field == field and "Fix:" in str(info.value)
    plan = latency_plan(
        TrialSettings(
            epochs=1, seed=0, cache_dir=ABS, work_dir=ABS, latency_repeats=30, latency_target_cv=0.1
        )
    )
    assert (plan.repeats, plan.max_repeats, plan.target_cv) == (30, 150, 0.1)


def test_an_inline_meter_measures_with_the_machine_held_and_gives_it_back(
    mlp_onnx: Path, tmp_path: Path
) -> None:
    meter = MeterRef(where="inline", pause_trials=True).connect(gate_dir=tmp_path)
    other_trial = MeasureGate(tmp_path)
    with meter.working():
        reading = meter.measure(mlp_onnx, EXAMPLE, LatencyPlan(warmup=2, repeats=20))
        # The meter's process holds the gate again: a measurement elsewhere must wait.
        with other_trial.exclusive(timeout_s=0.1) as claim:
            assert not claim.quiet
    assert reading.tags["latency_where"] == "inline"
    assert reading.tags["latency_gate"] == "exclusive"
    assert reading.tags["latency_node"]
    assert reading.extra["latency_gate_wait_ms"] >= 0
    assert reading.stats.runs >= 20


def test_without_pausing_trials_the_gate_is_off(mlp_onnx: Path, tmp_path: Path) -> None:
    meter = MeterRef(where="inline", pause_trials=False).connect(gate_dir=tmp_path)
    with meter.working():
        reading = meter.measure(mlp_onnx, EXAMPLE, LatencyPlan(warmup=2, repeats=20))
    assert reading.tags["latency_gate"] == "off" and reading.extra == {}


# --- config and cluster checks -------------------------------------------------------------


def test_latency_section_defaults_measure_in_one_actor_that_isolates_itself() -> None:
    latency = parse_spec("experiment: x\ntask: digits\n").latency
    assert (latency.where, latency.cpus, dict(latency.resources)) == ("actor", 0.0, {})
    # auto: pause on a small machine, cores of its own on a big one (tests/.../test_isolation)
    assert latency.isolation == "auto" and latency.pause_trials is None
    assert latency.target_cv == 0.05 and latency.max_repeats is None


@pytest.mark.parametrize(
    ("section", "field", "words"),
    [
        ("{where: inline, resources: {deploy_cpu: 1}}", "latency.resources", "where: actor"),
        ("{where: inline, cpus: 1}", "latency.cpus", "where: actor"),
        ("{resources: {CPU: 1}}", "latency.resources", "latency.cpus"),
        ("{resources: {deploy_cpu: 0}}", "latency.resources.deploy_cpu", "greater than 0"),
        ("{repeats: 50, max_repeats: 20}", "latency.max_repeats", ">= repeats"),
        ("{target_cv: 0}", "latency.target_cv", "greater than 0"),
        ("{where: remote}", "latency.where", "actor"),
    ],
)
def test_bad_latency_sections_name_field_and_rule(section: str, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_spec(f"experiment: x\ntask: digits\nlatency: {section}\n")
    assert info.value.field == field
    assert words in str(info.value)


def _nodes(*resources: dict[str, float]) -> list[dict[str, Any]]:
    return [{"Alive": True, "Resources": r} for r in resources]


def test_a_custom_resource_no_node_has_is_refused_with_the_ones_there_are() -> None:
    spec = parse_spec("experiment: x\ntask: digits\nlatency: {resources: {deploy_cpu: 1}}\n")
    nodes = _nodes({"CPU": 2, "node:10.0.0.1": 1}, {"CPU": 4, "arm_cpu": 1})
    with pytest.raises(ConfigError) as info:
        check_resources(spec, nodes)
    message = str(info.value)
    assert info.value.field == "latency.resources"
    assert "deploy_cpu" in message and "arm_cpu" in message and "ray start" in message
    assert "node:10.0.0.1" not in message
    check_resources(spec, [*nodes, *_nodes({"CPU": 1, "deploy_cpu": 1})])


def test_the_meter_must_fit_on_one_node_with_its_resource() -> None:
    spec = parse_spec(
        "experiment: x\ntask: digits\nlatency: {cpus: 2, resources: {deploy_cpu: 1}}\n"
    )
    with pytest.raises(ConfigError, match="fit on one node"):
        check_resources(spec, _nodes({"CPU": 8}, {"CPU": 1, "deploy_cpu": 1}))
    check_resources(spec, _nodes({"CPU": 1}, {"CPU": 2, "deploy_cpu": 1}))
    inline = parse_spec("experiment: x\ntask: digits\nlatency: {where: inline}\n")
    check_resources(inline, _nodes({"CPU": 1}))


# --- pinning on a real two-node cluster ----------------------------------------------------


def _config(experiment: str, latency: str) -> str:
    return small_config(experiment, trials=2, task="trials_tiny_task:TinyDigits", latency=latency)


def _search(cwd: Path, address: str) -> subprocess.CompletedProcess[str]:
    return cli(
        "search",
        "c.yaml",
        "--address",
        address,
        cwd=cwd,
        # the tiny task, and this checkout's slimtune (as the cluster's nodes import it)
        env={"PYTHONPATH": os.pathsep.join([str(TINY_TASK_DIR), str(TINY_TASK_DIR.parents[1])])},
    )


@pytest.mark.e2e
def test_latency_is_measured_on_the_node_with_the_custom_resource(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray.cluster_utils import Cluster

    # The tiny task must be importable in the cluster's workers, which inherit this env. The
    # search's driver connects to the head, where Ray would place an unpinned meter.
    monkeypatch.setenv(
        "PYTHONPATH",
        os.pathsep.join([str(TINY_TASK_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]),
    )
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    deploy = cluster.add_node(num_cpus=1, resources={"deploy_cpu": 1})
    cluster.wait_for_nodes()
    try:
        missing = tmp_path / "missing"
        missing.mkdir()
        (missing / "c.yaml").write_text(_config("nope", "{resources: {arm_cpu: 1}}"))
        refused = _search(missing, cluster.address)
        assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-4000:]
        assert "latency.resources" in refused.stderr and "deploy_cpu" in refused.stderr
        assert not (missing / "mlflow.db").exists()  # nothing was written to MLflow

        (tmp_path / "c.yaml").write_text(
            _config("pinned", "{warmup: 3, repeats: 20, resources: {deploy_cpu: 1}}")
        )
        done = _search(tmp_path, cluster.address)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    finally:
        cluster.shutdown()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("pinned")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    trials = [r for r in runs if r.data.tags.get("slimtune.role") == "trial"]
    (search,) = [r for r in runs if r.data.tags.get("slimtune.role") == "search"]
    assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials)
    for run in trials:
        tags = run.data.tags
        assert tags["latency_node"] == deploy.node_id, tags
        assert tags["latency_where"] == "actor"
        # isolation auto: pause on a small machine (the gate held), else cores (no gate)
        gate = "exclusive" if tags["latency_isolation"] == "pause" else "off"
        assert tags["latency_gate"] == gate
        assert run.data.metrics["latency_runs"] >= 20
        if run.data.params["bits"] == "8":  # int8_format: auto was timed by the pinned meter
            assert tags["int8_format_node"] == deploy.node_id, tags
    assert search.data.tags["baseline_latency_node"] == deploy.node_id
    assert f"on node {deploy.node_id[:12]}" in next(
        ln for ln in done.stdout.splitlines() if ln.startswith("int8 format (auto): ")
    )
