"""Hostile or oversized YAML fails fast, in small memory, with a short message (item 6 of
issue 15). The small hostile files (alias bomb, repeated keys, deep nesting) live in corpus/;
the ones too big to commit are made here."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from searchspace import ConfigError, load_spec, parse_spec
from searchspace._yaml import MAX_CONFIG_BYTES, MAX_ITEMS


def _main_in_subprocess(config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    code = (
        "import resource, sys\n"
        # 1 GiB of address space beyond what the interpreter has: an alias bomb would need more.
        "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
        "from orchestrator.cli import main\n"
        "sys.exit(main(['validate', sys.argv[1]]))\n"
    )
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run(
        [sys.executable, "-c", code, str(config)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_file_over_the_cap_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    # Five million list items: refused by its size, without reading it into YAML.
    path = tmp_path / "huge.yaml"
    with path.open("w") as f:
        f.write("experiment: x\ntask: digits\nspace:\n  bits:\n    choices:\n")
        f.write("      - 8\n" * 5_000_000)
    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    assert time.perf_counter() - start < 2.0
    err = info.value
    assert err.field == "<file>" and f"{MAX_CONFIG_BYTES:,} bytes" in err.rule
    assert len(str(err)) < 600


def test_text_over_the_cap_is_refused_by_parse_spec() -> None:
    with pytest.raises(ConfigError) as info:
        parse_spec("experiment: x\n#" + "a" * MAX_CONFIG_BYTES)
    assert info.value.field == "<file>"


def test_a_long_list_is_refused_by_the_item_cap_at_once() -> None:
    # ~125k list items fit in the size cap; the parser's first pass stops at MAX_ITEMS.
    text = "experiment: x\ntask: digits\nspace:\n  bits: {choices: [" + "8, " * 125_000 + "8]}\n"
    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        parse_spec(text, source="big.yaml")
    assert time.perf_counter() - start < 5.0  # ~0.2 s here
    assert info.value.field == "<yaml>" and f"at most {MAX_ITEMS:,} items" in str(info.value)
    assert len(str(info.value)) < 600


@pytest.mark.parametrize("item", ["8", "true", ".nan"])
def test_a_list_at_the_item_cap_is_checked_in_linear_time(item: str) -> None:
    # MAX_ITEMS bad choices: each fails every branch of the choice's union (3 errors each).
    text = (
        "experiment: x\ntask: digits\nspace:\n  bits: {choices: ["
        + f"{item}, " * (MAX_ITEMS - 1)
        + f"{item}]}}\n"
    )
    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        parse_spec(text, source="big.yaml")
    assert time.perf_counter() - start < 10.0  # ~0.5-2 s here; quadratic would be minutes
    assert info.value.field.startswith("space.bits.choices")
    assert len(str(info.value)) < 1500


def test_a_long_value_is_cut_in_the_message() -> None:
    value = "v" * 900_000
    with pytest.raises(ConfigError) as info:
        parse_spec(f"experiment: {value}\ntask: digits\n", source="long.yaml")
    msg = str(info.value)
    assert info.value.field == "experiment"
    assert len(msg) < 800 and "900,000 characters" in msg and "'vvvv" in msg


def test_a_long_unknown_key_is_cut_in_the_message() -> None:
    with pytest.raises(ConfigError) as info:
        parse_spec("experiment: x\ntask: digits\n" + "k" * 1000 + ": 1\n")
    assert len(str(info.value)) < 1500 and "1,000 characters" in str(info.value)


def test_a_repeated_key_names_both_lines() -> None:
    text = "experiment: x\ntask: digits\nlatency:\n  repeats: 50\n  warmup: 3\n  repeats: 9\n"
    with pytest.raises(ConfigError) as info:
        parse_spec(text, source="dup.yaml")
    err = info.value
    assert err.field == "latency.repeats" and err.line == 6
    assert "lines 4 and 6" in str(err)


def test_a_repeated_key_on_one_line_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        parse_spec("experiment: x\ntask: digits\nresources: {cpu: 1, cpu: 2}\n")
    assert info.value.field == "resources.cpu" and "lines 3 and 3" in str(info.value)


def test_an_alias_bomb_fails_fast_in_small_memory_through_main(tmp_path: Path) -> None:
    levels = ["a: &a [" + ", ".join(['"lol"'] * 9) + "]"]
    for prev, cur in zip("abcdefghijklmnopqrstuvwxy", "bcdefghijklmnopqrstuvwxyz", strict=True):
        levels.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    path = tmp_path / "bomb.yaml"
    path.write_text("experiment: x\ntask: digits\n" + "\n".join(levels) + "\n")
    start = time.perf_counter()
    proc = _main_in_subprocess(path, tmp_path)
    assert time.perf_counter() - start < 60  # the interpreter's start; the refusal is at once
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "anchors and aliases" in proc.stderr and "line 3" in proc.stderr
