"""``latency.isolation``: the config's rules, the ``auto`` rule, pinning threads to cores (real
``sched_setaffinity``), and a real Ray meter that holds a core while a trial worker keeps off
it."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from orchestrator._isolation import (
    IsolationChoice,
    NodeCores,
    choose_isolation,
    cores_text,
    keep_off_meter_cores,
    meter_cores,
)
from orchestrator._latency import MeterRef, Pinning, running_meter
from searchspace import ConfigError, Latency, parse_spec
from tests.orchestrator.conftest import python_json
from trials import LatencyPlan, TrialRecord

CORES = sorted(os.sched_getaffinity(0))
two_cores = pytest.mark.skipif(len(CORES) < 2, reason="pinning needs two usable cores")


def _latency(section: str) -> Latency:
    return parse_spec(f"experiment: x\ntask: digits\nlatency: {section}\n").latency


@pytest.mark.parametrize(
    ("section", "isolation"),
    [
        ("{}", "auto"),
        ("{pause_trials: true}", "pause"),
        ("{pause_trials: false}", "none"),
        ("{pause_trials: false, isolation: none}", "none"),
        ("{isolation: cores, cpus: 1}", "cores"),
        ("{isolation: cores}", "cores"),  # cores = threads, not reserved in Ray
        ("{isolation: none, where: inline}", "none"),
    ],
)
def test_isolation_settings_that_are_accepted(section: str, isolation: str) -> None:
    assert _latency(section).isolation == isolation


@pytest.mark.parametrize(
    ("section", "words"),
    [
        ("{isolation: sometimes}", "'auto', 'pause', 'cores' or 'none'"),
        ("{pause_trials: false, isolation: pause}", "remove pause_trials"),
        ("{pause_trials: true, isolation: cores}", "means isolation: pause"),
        ("{isolation: cores, where: inline}", "set where: actor, or isolation: pause"),
        ("{isolation: cores, cpus: 1.5}", "cpus is 1.5; set cpus to a whole number"),
        ("{isolation: cores, cpus: 1, threads: 2}", "raise cpus to 2"),
    ],
)
def test_bad_isolation_settings_name_the_field_and_the_fix(section: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        _latency(section)
    assert info.value.field.startswith("latency"), info.value.field
    assert words in str(info.value)


@pytest.mark.parametrize(
    ("section", "node_cores", "trial_cpus", "mode"),
    [
        ("{}", 2, 1, "pause"),  # the 2-core laptop: 1 meter + 1 trial + 1 spare > 2
        ("{}", 3, 1, "cores"),
        ("{}", 16, 2, "cores"),  # the GPU node of issue 14
        ("{}", 4, 3, "pause"),
        ("{cpus: 2}", 4, 1, "cores"),
        ("{cpus: 2}", 3, 1, "pause"),
        ("{threads: 4}", 6, 1, "cores"),
        ("{threads: 4}", 5, 1, "pause"),
        ("{cpus: 0.5}", 64, 1, "pause"),  # no whole core to pin
        ("{where: inline}", 64, 1, "pause"),  # the meter is the trial's own process
        ("{isolation: none}", 64, 1, "none"),
        ("{isolation: cores}", 2, 1, "cores"),  # named in the config: taken as it is
        ("{isolation: pause}", 64, 1, "pause"),
    ],
)
def test_the_auto_rule(section: str, node_cores: int, trial_cpus: float, mode: str) -> None:
    choice = choose_isolation(_latency(section), node_cores=node_cores, trial_cpus=trial_cpus)
    assert choice.mode == mode
    assert choice.rule.endswith(mode) or "(the config)" in choice.rule


def test_the_rule_says_the_figures_it_compared() -> None:
    choice = choose_isolation(_latency("{}"), node_cores=2, trial_cpus=1)
    rule = "auto: 2 cores < 1 meter + 1 trial + 1 spare -> pause"
    assert choice == IsolationChoice("pause", rule)
    with pytest.raises(ValueError, match="'pause', 'cores' or 'none'"):
        IsolationChoice("auto", "")  # type: ignore[arg-type]


def test_the_meter_takes_the_last_cores_and_leaves_at_least_one() -> None:
    assert meter_cores(1, [0, 1, 2, 3]) == (3,)
    assert meter_cores(2, [0, 2, 4, 6]) == (4, 6)
    with pytest.raises(ValueError, match=r"lower latency\.cpus / latency\.threads"):
        meter_cores(2, [0, 1])
    with pytest.raises(ValueError, match="got 0"):
        meter_cores(0, [0, 1])
    assert cores_text({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8" and cores_text({3}) == "3"
    with pytest.raises(ValueError, match="at least one core"):
        Pinning("node", ())


_PIN_ALL_THREADS = """
import json, os, threading
from orchestrator._isolation import pin_trial
stop = threading.Event()
before = threading.Thread(target=stop.wait)  # a thread that exists before the pinning
before.start()
free = pin_trial(({reserved},))
later = []
t = threading.Thread(target=lambda: later.append(sorted(os.sched_getaffinity(0))))  # one after
t.start(); t.join()
tids = [int(x) for x in os.listdir("/proc/self/task")]
union = sorted({{c for tid in tids for c in os.sched_getaffinity(tid)}})
print(json.dumps([list(free), union, later[0], list(pin_trial(({reserved},)))]))
stop.set(); before.join()
"""


@two_cores
def test_a_trial_pins_every_thread_of_its_process_off_the_meter_cores() -> None:
    free, union, later, again = python_json(_PIN_ALL_THREADS.format(reserved=CORES[-1]))
    others = CORES[:-1]
    assert free == others and union == others and later == others
    assert again == others  # pinning again (a reused worker) changes nothing


def _mlp(path: Path) -> Path:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return path


def _affinity_after_pin(ref: MeterRef) -> tuple[tuple[int, ...], list[int]]:
    free = ref.pin_trial()
    return free, sorted(os.sched_getaffinity(0))


@two_cores
def test_a_real_meter_holds_its_core_and_trials_on_its_node_keep_off_it(tmp_path: Path) -> None:
    import ray

    onnx_path = _mlp(tmp_path / "mm.onnx")
    ray_dir = tempfile.mkdtemp(prefix="slimtune-ray-")  # short: Ray's socket paths are limited
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=ray_dir)
    try:
        node = ray.get_runtime_context().get_node_id()
        latency = _latency("{isolation: cores, cpus: 1, warmup: 2, repeats: 10}")
        with running_meter(latency, trial_cpus=1) as ref:
            assert ref.isolation == "cores" and not ref.pause_trials
            assert ref.pinning == Pinning(node, (CORES[-1],))  # what the kernel says it has
            trial = ray.remote(num_cpus=0)(_affinity_after_pin)
            free, affinity = ray.get(trial.remote(ref))
            assert free == tuple(CORES[:-1]) and affinity == CORES[:-1]
            reading = ref.connect().measure(onnx_path, np.ones((1, 64), np.float32), PLAN)
            assert reading.tags["latency_isolation"] == "cores"
            assert reading.tags["latency_gate"] == "off"  # nobody paused
            # A worker on another node pins nothing.
            elsewhere = MeterRef(
                where="actor", pause_trials=False, pinning=Pinning("another-node", (CORES[-1],))
            )
            assert ray.get(trial.remote(elsewhere))[0] == ()
        with running_meter(_latency("{warmup: 2, repeats: 10}"), trial_cpus=1) as auto:
            expected = "pause" if len(CORES) < 3 else "cores"
            assert auto.isolation == expected and auto.rule.startswith("auto: ")
            assert (auto.pinning is None) == (expected == "pause")
    finally:
        ray.shutdown()
        shutil.rmtree(ray_dir, ignore_errors=True)


PLAN = LatencyPlan(warmup=2, repeats=10)


# --- the driver that starts Ray keeps off the meter's cores, and so does all Ray starts ------

_DRIVER_KEEPS_OFF = """
import json, os, threading
from orchestrator._isolation import _mask, _threads, keep_off_meter_cores
from searchspace import parse_spec
latency = parse_spec("experiment: x\\ntask: digits\\nlatency: {section}\\n").latency
stop = threading.Event()
def pinned():
    os.sched_setaffinity(0, {{{first}}})
    stop.wait()
own = threading.Thread(target=pinned, daemon=True)
own.start()  # a thread with a mask of its own, before the block
plain = threading.Thread(target=stop.wait, daemon=True)
plain.start()
gone = set()  # threads joined: the kernel may list one a moment after its join returned
def masks():  # the product's reader: a thread that ended meanwhile gives None
    return sorted(sorted(m) for t in _threads() if t not in gone and (m := _mask(t)) is not None)
try:
    with keep_off_meter_cores(latency, trial_cpus=1) as node:
        inside = masks()
        later = []
        t = threading.Thread(target=lambda: later.append(sorted(os.sched_getaffinity(0))))
        t.start(); t.join(); gone.add(t.native_id)
    after = masks()
finally:  # an error above must end the script, not leave it waiting on its threads
    stop.set()
own.join(); plain.join()
print(json.dumps([node.choice.mode, list(node.cores), inside, later[0], after]))
"""


def _driver_keeps_off(section: str) -> list:
    return python_json(_DRIVER_KEEPS_OFF.format(section=section, first=CORES[0]))


@two_cores
def test_the_driver_keeps_every_thread_off_the_meter_cores_for_the_block_only() -> None:
    mode, cores, inside, later, after = _driver_keeps_off("{isolation: cores}")
    others = CORES[:-1]
    assert mode == "cores" and cores == [CORES[-1]]
    assert inside == [others] * len(inside)  # the thread with its own mask too
    assert later == others  # a thread started in the block (as Ray's processes are)
    # Each thread gets its mask back: the one with its own, and the others the full set.
    assert sorted(after) == sorted([[CORES[0]]] + [CORES] * (len(after) - 1))


@pytest.mark.parametrize("section", ["{isolation: pause}", "{isolation: none}", "{}"])
def test_the_driver_pins_nothing_unless_the_meter_holds_cores(section: str) -> None:
    mode, cores, inside, _, after = _driver_keeps_off(section)
    assert cores == [] and inside == after
    if section == "{}":
        assert mode == ("cores" if len(CORES) >= 3 else "pause")
        if mode == "cores":
            return
    assert CORES in inside  # the plain threads kept every core


def test_node_cores_are_held_under_cores_only() -> None:
    with pytest.raises(ValueError, match="only isolation 'cores' holds cores"):
        NodeCores(IsolationChoice("pause", "x"), (1,))


def _children(root: int) -> list[int]:
    """Every process below ``root`` (from /proc)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        kids = [p for p, pp in parent.items() if pp == pid]
        found += kids
        todo += kids
    return found


def _thread_masks(pid: int) -> dict[int, set[int]]:
    masks = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            masks[int(tid)] = os.sched_getaffinity(int(tid))
        except OSError:
            continue
    return masks


@two_cores
def test_on_the_machine_that_starts_ray_only_the_meter_timing_thread_is_on_its_core(
    tmp_path: Path,
) -> None:
    import ray

    onnx_path = _mlp(tmp_path / "mm.onnx")
    latency = _latency("{isolation: cores, warmup: 2, repeats: 10}")
    core = CORES[-1]
    ray_dir = tempfile.mkdtemp(prefix="slimtune-ray-")
    earlier = set(_children(os.getpid()))  # not Ray's: e.g. a helper an earlier test started
    with keep_off_meter_cores(latency, trial_cpus=1) as node:
        assert node.cores == (core,)
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=ray_dir)
        try:
            assert ray.cluster_resources()["CPU"] == 2  # Ray counts the node's cores as before
            with running_meter(latency, trial_cpus=1, node=node) as ref:
                assert ref.pinning is not None and ref.pinning.cores == (core,)
                reading = ref.connect().measure(onnx_path, np.ones((1, 64), np.float32), PLAN)
                assert reading.tags["latency_isolation"] == "cores"
                on_core = {}
                ray_processes = set(_children(os.getpid())) - earlier
                for pid in ray_processes:  # Ray's daemons, workers, the meter
                    with contextlib.suppress(OSError):
                        masks = _thread_masks(pid)
                        on_core[pid] = [tid for tid, mask in masks.items() if core in mask]
                holders = {pid: tids for pid, tids in on_core.items() if tids}
                # One process, the meter, has one thread on the core: the one that times.
                assert len(holders) == 1, holders
                ((pid, tids),) = holders.items()
                names = {t: Path(f"/proc/{pid}/task/{t}/comm").read_text().strip() for t in tids}
                assert tids == [pid] and _thread_masks(pid)[pid] == {core}, names
                assert len(on_core) >= 3  # gcs, raylet, workers: all seen, all off the core
        finally:
            ray.shutdown()
            shutil.rmtree(ray_dir, ignore_errors=True)
    assert sorted(os.sched_getaffinity(0)) == CORES  # the driver's mask is given back


# --- one real search under isolation: cores (2 tiny trials, 1 epoch) ------------------------


@two_cores
@pytest.mark.e2e
def test_a_search_under_cores_records_the_mode_and_its_trials_kept_off_the_meter(
    tmp_path: Path,
) -> None:
    from mlflow.tracking import MlflowClient

    from tests.orchestrator.conftest import cli, small_config

    latency = "{warmup: 3, repeats: 20, isolation: cores, cpus: 1}"
    config = small_config("cores", trials=2, task="trials_tiny_task:TinyDigits", latency=latency)
    (tmp_path / "c.yaml").write_text(config)
    here = Path(__file__).resolve()
    path = f"{here.parents[1] / 'trials'}{os.pathsep}{here.parents[2]}"  # the tiny task, slimtune
    done = cli("search", "c.yaml", cwd=tmp_path, env={"PYTHONPATH": path})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "isolation cores (isolation: cores (the config))" in done.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("cores")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    (search,) = [r for r in runs if r.data.tags.get("slimtune.role") == "search"]
    trials = [r for r in runs if r.data.tags.get("slimtune.role") == "trial"]
    assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials)
    assert search.data.tags["latency_isolation"] == "cores"
    assert search.data.tags["baseline_latency_isolation"] == "cores"
    for run in trials:
        tags = run.data.tags
        assert tags["latency_isolation"] == "cores" and tags["latency_gate"] == "off", tags
        assert tags["worker_cores"] == cores_text(tuple(CORES[:-1]))  # off the meter's core
        path = client.download_artifacts(run.info.run_id, "trial/record.json", str(tmp_path))
        # It reads back (as `slimtune rebuild` reads it), with the mode that measured the trial.
        record = TrialRecord.from_json(Path(path).read_text(), source=path)
        assert record.spec.latency.isolation == "cores"
