"""Every number the user types is checked strictly, over the whole schema: a boolean or a quoted
number is not a number, a float is finite. The fields are found by walking SearchSpec's models,
so a field added later is covered without editing this test."""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pytest
from pydantic import BaseModel

from searchspace import ConfigError, SearchSpec, parse_spec

Path_ = tuple[str, ...]


def _numeric_fields(model: type[BaseModel], prefix: Path_ = ()) -> list[tuple[Path_, type]]:
    out: list[tuple[Path_, type]] = []
    for name, field in model.model_fields.items():
        out += _walk(field.annotation, (*prefix, name))
    return out


def _walk(ann: Any, path: Path_) -> list[tuple[Path_, type]]:
    origin = get_origin(ann)
    if origin is Annotated:
        return _walk(get_args(ann)[0], path)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return _numeric_fields(ann, path)
    if ann is int or ann is float:
        return [(path, ann)]
    if origin in (Union, types.UnionType):
        args = get_args(ann)  # int | float takes any number: check it as a float
        return [p for a in args if not (a is int and float in args) for p in _walk(a, path)]
    if origin is list:
        return _walk(get_args(ann)[0], (*path, "0"))
    if origin is dict:
        return _walk(get_args(ann)[1], (*path, "x"))
    assert ann in (bool, str, type(None)) or origin is Literal, f"unhandled type {ann} at {path}"
    return []


FIELDS = sorted(set(_numeric_fields(SearchSpec)), key=lambda f: (f[0], f[1].__name__))
BAD: dict[type, list[Any]] = {
    int: [True, False, "3", 3.5, float("inf")],
    float: [True, "0.5", float("inf"), float("-inf"), float("nan")],
}


def _config_with(path: Path_, value: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {"experiment": "x", "task": "digits"}
    node: Any = cfg
    for part, nxt in zip(path, (*path[1:], None), strict=True):
        if nxt is None:
            node[part if not isinstance(node, list) else 0] = value
            break
        child: Any = [None] if nxt == "0" else {}
        if isinstance(node, list):
            node[0] = child
        else:
            node[part] = child
        node = child
    return cfg


def test_the_walk_finds_the_numeric_fields() -> None:
    paths = {".".join(p) for p, _ in FIELDS}
    for expected in (
        "trials",
        "training.epochs",
        "space.batch_size",
        "space.lr.low",
        "space.lr.choices.0",
        "latency.target_cv",
        "latency.resources.x",
        "resources.gpu",
        "sampler.seed",
    ):
        assert expected in paths
    assert len(FIELDS) >= 40


@pytest.mark.parametrize(
    ("path", "kind"), FIELDS, ids=[f"{'.'.join(p)}:{t.__name__}" for p, t in FIELDS]
)
def test_every_numeric_field_refuses_booleans_text_and_non_finite_values(
    path: Path_, kind: type
) -> None:
    import yaml

    for value in BAD[kind]:
        if path[-1] == "0" and isinstance(value, str):
            continue  # a choice may be a name (pruning: {choices: [structured]}): checked below
        text = yaml.safe_dump(_config_with(path, value))
        with pytest.raises(ConfigError) as info:
            parse_spec(text, source="c.yaml")
        field = ".".join(path)
        # A knob's one value is also a knob (space.lr: .inf); the error names the field itself.
        assert info.value.field == field, (value, str(info.value))
        assert "Fix:" in str(info.value)


@pytest.mark.parametrize("knob", ["lr", "batch_size", "sparsity", "bits", "distill_weight"])
def test_a_quoted_number_in_choices_is_a_name_and_refused(knob: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_spec(f"experiment: x\ntask: digits\nspace: {{{knob}: {{choices: ['1']}}}}\n")
    assert info.value.field.startswith(f"space.{knob}")
    assert "not names" in str(info.value)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("trials: true", "true and false are not numbers"),
        ('trials: "3"', "remove the quotes"),
        ("trials: 3.0", "without a decimal point"),
        ("space: {lr: .inf}", "finite"),
    ],
)
def test_the_message_says_why(text: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_spec(f"experiment: x\ntask: digits\n{text}\n")
    assert says in str(info.value)


def test_ints_still_fill_float_fields() -> None:
    spec = parse_spec(
        "experiment: x\ntask: digits\nresources: {cpu: 1, gpu: 0}\n"
        "space: {sparsity: {low: 0, high: 0.5}, lr: 1}\n"
    )
    assert spec.resources.cpu == 1.0 and spec.space.lr == 1.0
    assert typing.cast(Any, spec.space.sparsity).low == 0.0
