"""Bad input to the commands fails with exit 2, a short message and no traceback, before anything
is written (issue 15 items 8, 9, 12, 14): an unusable ``storage``, a missing or damaged store, an
unwritable ``--out``, a port in use or out of range, credentials in any URI, a UI host."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator._ui_cmd import allowed_hosts, server_command
from orchestrator.cli import main
from searchspace import credentials_in, mask_secrets, redact_uri

SECRET = "hunter2pw"
CONFIG = "experiment: checks\ntask: digits\ntrials: 2\n"


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


@pytest.fixture(scope="module")
def store_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real MLflow SQLite store with a few runs (no search: the checks come first); made once
    (MLflow's schema migrations take seconds)."""
    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.create_experiment("x", artifact_location=(db.parent / "mlruns").as_uri())
    for _ in range(20):
        client.create_run(exp)
    return db.read_bytes()


@pytest.fixture
def store(tmp_path: Path, store_bytes: bytes) -> Path:
    db = tmp_path / "mlflow.db"
    db.write_bytes(store_bytes)
    return db


def _damaged(store: Path, how: str) -> Path:
    bad = store.parent / f"{how}.db"
    data = store.read_bytes()
    if how == "truncated":
        bad.write_bytes(data[: len(data) // 3])
    elif how == "garbage":
        bad.write_bytes(bytes(range(256)) * 40)
    elif how == "empty":
        bad.write_bytes(b"")
    else:  # a valid SQLite database that is not an MLflow store
        with sqlite3.connect(bad) as con:
            con.execute("CREATE TABLE t (x)")
    return bad


def _command(name: str, uri: str, tmp_path: Path) -> list[str]:
    return {
        "select": ["select", "x", "--tracking-uri", uri],
        "report": ["report", "x", "--out", str(tmp_path / "r"), "--tracking-uri", uri],
        "rebuild": ["rebuild", "0" * 32, "--out", str(tmp_path / "o"), "--tracking-uri", uri],
        "ui": ["ui", "--tracking-uri", uri, "--port", str(_free_port())],
    }[name]


COMMANDS = ["select", "report", "rebuild", "ui"]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("how", ["truncated", "garbage", "empty", "not-mlflow"])
def test_a_damaged_store_is_a_clear_error(
    command: str, how: str, store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _damaged(store, how)
    before = bad.read_bytes()
    code, err = _run(_command(command, f"sqlite:///{bad}", tmp_path), capsys)
    assert code == 2, err
    assert "not a readable MLflow store" in err and str(bad) in err and "Fix:" in err
    assert bad.read_bytes() == before  # the check only reads


@pytest.mark.parametrize("command", COMMANDS)
def test_a_missing_store_is_reported_missing_and_not_created(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere" / "mlflow.db"
    code, err = _run(_command(command, f"sqlite:///{missing}", tmp_path), capsys)
    assert code == 2 and "no MLflow store at" in err
    assert not missing.exists() and not missing.parent.exists()


def test_the_default_store_is_not_created_either(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for argv in (["select", "x"], ["report", "x", "--out", "r"]):
        code, err = _run(argv, capsys)
        assert code == 2 and "no MLflow store" in err
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("command", ["select", "report", "rebuild"])
def test_out_in_an_unwritable_place_is_a_clear_error(
    command: str, store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for out in (a_file / "sub", Path("/proc/slimtune-test/out")):
        argv = [*_command(command, f"sqlite:///{store}", tmp_path), "--out", str(out)]
        code, err = _run(argv, capsys)
        assert code == 2 and "'--out'" in err and str(out) in err, err


@pytest.mark.parametrize("port", ["0", "70000", "-1"])
def test_ui_refuses_a_port_out_of_range(
    port: str, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _run(["ui", "--tracking-uri", f"sqlite:///{store}", "--port", port], capsys)
    assert code == 2 and "'--port'" in err and "[1, 65535]" in err


def test_ui_refuses_a_port_in_use(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, err = _run(
            ["ui", "--tracking-uri", f"sqlite:///{store}", "--port", str(port)], capsys
        )
    assert code == 2 and "in use" in err and str(port) in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- credentials: refused in every URI, masked in every message ----------------------------

URIS_WITH_SECRETS = [
    f"http://alice:{SECRET}@mlflow.corp:5000",
    f"https://{SECRET}@mlflow.corp",
    f"https://mlflow.corp/?token={SECRET}",
    f"https://mlflow.corp/api?run=1&access_token={SECRET}",
    f"postgresql://mlflow:{SECRET}@db.corp/mlflow",
    f"s3://bucket/x?X-Amz-Signature={SECRET}&X-Amz-Credential={SECRET}",
]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("uri", URIS_WITH_SECRETS)
def test_every_command_refuses_credentials_in_its_tracking_uri_and_masks_them(
    command: str, uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _run(_command(command, uri, tmp_path), capsys)
    assert code == 2 and "'--tracking-uri'" in err and "must not hold credentials" in err
    assert SECRET not in err and "MLFLOW_TRACKING_PASSWORD" in err
    assert not (tmp_path / "r").exists() and not (tmp_path / "o").exists()


@pytest.mark.parametrize("field", ["tracking: {uri: '%s'}", "storage: '%s'"])
@pytest.mark.parametrize("uri", URIS_WITH_SECRETS)
def test_search_refuses_credentials_in_the_config_and_masks_them(
    field: str, uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "c.yaml").write_text(CONFIG + field % uri + "\n")
    code, err = _run(["search", str(tmp_path / "c.yaml"), "--workdir", str(tmp_path)], capsys)
    assert code == 2 and "must not hold credentials" in err and SECRET not in err
    assert not (tmp_path / "mlflow.db").exists()


def test_search_refuses_credentials_in_the_ray_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "c.yaml").write_text(CONFIG)
    argv = ["search", str(tmp_path / "c.yaml"), "--workdir", str(tmp_path)]
    code, err = _run([*argv, "--address", f"ray://admin:{SECRET}@head:10001"], capsys)
    assert code == 2 and "'--address'" in err and SECRET not in err
    assert not (tmp_path / "mlflow.db").exists()


def test_the_masks_agree() -> None:
    for uri in URIS_WITH_SECRETS:
        assert credentials_in(uri) is not None
        assert SECRET not in redact_uri(uri) and SECRET not in mask_secrets(f"at {uri!r}.")
    for clean in ("http://127.0.0.1:5000", "sqlite:////tmp/a@b/mlflow.db", "s3://b/x?region=eu"):
        assert credentials_in(clean) is None and redact_uri(clean) == clean


# ---- storage: checked before anything is written --------------------------------------------


@pytest.mark.parametrize("where", ["proc", "file", "under-a-file"])
def test_an_unusable_storage_fails_before_mlflow_is_written(
    where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    storage = {
        "proc": "/proc/slimtune-test/state",
        "file": str(a_file),
        "under-a-file": str(a_file / "state"),
    }[where]
    (tmp_path / "c.yaml").write_text(CONFIG + f"storage: {storage}\n")
    work = tmp_path / "work"
    code, err = _run(["search", str(tmp_path / "c.yaml"), "--workdir", str(work)], capsys)
    assert code == 2 and "'storage'" in err and storage in err, err
    assert not work.exists() or not any(work.iterdir())  # no mlflow.db, no .slimtune


def test_a_usable_storage_passes_the_check_and_is_left_as_it_was(tmp_path: Path) -> None:
    from orchestrator._store import check_storage

    check_storage(str(tmp_path / "new" / "state"), tmp_path)
    check_storage(None, tmp_path / "work")
    assert sorted(tmp_path.iterdir()) == []  # the probe removes what it made


# ---- ui --host: the named host only, and said loudly ----------------------------------------


def test_ui_on_loopback_adds_no_allowed_hosts() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        cmd, notice = server_command("mlflow", "sqlite:////x/mlflow.db", host, 5000)
        assert "--allowed-hosts" not in cmd and notice is None


@pytest.mark.parametrize("host", ["ml-box.corp", "10.1.2.3", "0.0.0.0", "fd00::5"])
def test_ui_on_another_host_allows_that_host_only_and_says_so(host: str) -> None:
    cmd, notice = server_command("mlflow", "sqlite:////x/mlflow.db", host, 5123)
    allowed = cmd[cmd.index("--allowed-hosts") + 1].split(",")
    assert "*" not in allowed and all(a.endswith(":5123") for a in allowed)
    if host != "0.0.0.0":
        shown = f"[{host}]" if ":" in host else host
        assert allowed == [f"{shown}:5123"]
    else:
        assert f"{socket.gethostname()}:5123" in allowed
    assert notice is not None and "REACHABLE FROM OTHER MACHINES" in notice


def test_allowed_hosts_on_port_80_include_the_bare_name() -> None:
    assert allowed_hosts("ml-box.corp", 80) == ["ml-box.corp:80", "ml-box.corp"]
