"""Every malformed config, hand-written or generated, gets a clean ConfigError: never a crash."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from searchspace import ConfigError, SearchSpec, parse_spec

CORPUS = sorted((Path(__file__).parent / "corpus").glob("*.yaml"))


def _expected_field(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: FIELD'"
    return first.removeprefix("# expect: ").strip()


def test_corpus_is_not_empty() -> None:
    assert len(CORPUS) >= 30


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_corpus_file_names_its_field(path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_spec(path.read_text(), source=str(path))
    err = info.value
    assert err.field == _expected_field(path)
    msg = str(err)
    assert "\n" not in msg.strip(), "one paragraph"
    assert str(path) in msg and "Fix:" in msg
    assert "s3cret" not in msg and "wJalrXUtnFEMI" not in msg, "credentials are masked"


def test_cli_rejects_every_corpus_file_with_exit_2_and_no_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    # One interpreter for the whole corpus keeps this fast; each file goes through main().
    code = (
        "import sys\nfrom orchestrator.cli import main\n"
        "codes = [main(['search', p]) for p in sys.argv[1:]]\n"
        "print(','.join(map(str, codes)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *map(str, CORPUS)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().split(",") == ["2"] * len(CORPUS)
    assert "Traceback" not in proc.stderr
    assert "s3cret" not in proc.stderr and "wJalrXUtnFEMI" not in proc.stderr  # masked
    assert proc.stderr.count("slimtune: config error:") == len(CORPUS)
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / ".slimtune").exists()


# ---- property-based: mutate a valid config anywhere, in any way --------------------------------

VALID: dict[str, Any] = yaml.safe_load(
    (Path(__file__).resolve().parents[2] / "examples" / "digits.yaml").read_text()
)

junk = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**12), max_value=10**12)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


ALL_PATHS = [p for p in _paths(VALID) if p]


def _mutate(cfg: dict[str, Any], path: tuple[Any, ...], how: str, value: Any) -> dict[str, Any]:
    import copy

    cfg = copy.deepcopy(cfg)
    parent: Any = cfg
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if how == "replace":
        parent[last] = value
    elif how == "delete" and isinstance(parent, dict):
        del parent[last]
    elif how == "add_key" and isinstance(parent, dict):
        parent[f"{last}_x"] = value
    else:
        parent[last] = value
    return cfg


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    path=st.sampled_from(ALL_PATHS),
    how=st.sampled_from(["replace", "delete", "add_key"]),
    value=junk,
)
def test_any_mutation_gives_a_spec_or_a_clean_config_error(
    path: tuple[Any, ...], how: str, value: Any
) -> None:
    text = yaml.safe_dump(_mutate(VALID, path, how, value), allow_unicode=True)
    try:
        spec = parse_spec(text, source="fuzz.yaml")
    except ConfigError as err:
        msg = str(err)
        assert err.field and "Fix:" in msg and msg.startswith("fuzz.yaml")
    else:
        assert isinstance(spec, SearchSpec)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_never_crashes_the_loader(text: str) -> None:
    with contextlib.suppress(ConfigError):
        parse_spec(text, source="fuzz.yaml")
