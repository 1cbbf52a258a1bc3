from __future__ import annotations

from typing import Any

import pytest

from orchestrator._resources import check_resources
from orchestrator._tracking import redact_uri, resolve_tracking_uri
from searchspace import ConfigError, parse_spec


def _nodes(*resources: dict[str, float], dead: dict[str, float] | None = None) -> list[Any]:
    nodes = [{"Alive": True, "Resources": r} for r in resources]
    if dead:
        nodes.append({"Alive": False, "Resources": dead})
    return nodes


def _spec(cpu: float = 1, gpu: float = 0) -> Any:
    return parse_spec(f"experiment: x\ntask: digits\nresources: {{cpu: {cpu}, gpu: {gpu}}}\n")


def test_fitting_requests_pass() -> None:
    check_resources(_spec(1, 0), _nodes({"CPU": 2}))
    check_resources(_spec(2, 0.25), _nodes({"CPU": 2}, {"CPU": 16, "GPU": 1}))


def test_gpu_request_on_a_cluster_without_gpus_names_the_field() -> None:
    with pytest.raises(ConfigError) as info:
        check_resources(_spec(1, 0.5), _nodes({"CPU": 2}, dead={"CPU": 8, "GPU": 4}))
    assert info.value.field == "resources.gpu"
    assert "no GPU" in str(info.value) and "gpu: 0" in str(info.value)


def test_requests_larger_than_any_node_are_refused() -> None:
    with pytest.raises(ConfigError, match="largest has 1 GPUs"):
        check_resources(_spec(1, 2), _nodes({"CPU": 8, "GPU": 1}, {"CPU": 8, "GPU": 1}))
    with pytest.raises(ConfigError, match="largest has 2 CPUs") as info:
        check_resources(_spec(4, 0), _nodes({"CPU": 2}))
    assert info.value.field == "resources.cpu"


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("http://alice:s3cret@mlflow.corp:5000/api", "http://***@mlflow.corp:5000/api"),
        ("https://token@mlflow.corp", "https://***@mlflow.corp"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("sqlite:////tmp/x/mlflow.db", "sqlite:////tmp/x/mlflow.db"),
    ],
)
def test_redaction_hides_user_and_password(uri: str, shown: str) -> None:
    assert redact_uri(uri) == shown


def test_credentials_in_the_config_are_refused_with_the_env_vars_as_fix() -> None:
    with pytest.raises(ConfigError) as info:
        parse_spec('experiment: x\ntask: digits\ntracking: {uri: "http://bob:pw@h:5000"}\n')
    assert info.value.field == "tracking.uri"
    assert "MLFLOW_TRACKING_USERNAME" in str(info.value)


def test_default_tracking_uri_is_absolute(tmp_path: Any) -> None:
    assert resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    assert resolve_tracking_uri("sqlite:///rel.db", tmp_path) == f"sqlite:///{tmp_path}/rel.db"
    assert resolve_tracking_uri("http://h:1", tmp_path) == "http://h:1"
