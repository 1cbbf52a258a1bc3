"""Read a YAML config into a SearchSpec; every failure is a ConfigError naming file, line, field."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from searchspace._errors import ConfigError
from searchspace._spec import FIELD_FIXES, SearchSpec
from searchspace._yaml import MAX_CONFIG_BYTES, check_size, read_yaml

# Names pydantic puts in an error's path for the branch of a knob's tagged union (see _space.Knob).
_UNION_TAGS = frozenset({"Range", "Choices", "Fixed"})
# ... and for the branches of a plain union such as a choice's ``int | float | str``.
_TYPE_BRANCHES = frozenset({"int", "float", "str", "bool", "none"})


def load_spec(path: str | Path) -> SearchSpec:
    """Load and validate a config file. Raises ConfigError (never a bare parser error)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            field="<file>",
            value=str(path),
            rule="the config file must exist and be a regular file",
            fix="pass the path of a YAML config, e.g. examples/digits.yaml",
        )
    try:
        check_size(p.stat().st_size, source=str(p))
        with p.open("rb") as f:  # at most one byte past the cap, whatever the file claims
            text = f.read(MAX_CONFIG_BYTES + 1).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            field="<file>",
            value=str(path),
            rule=f"the file must be readable UTF-8 text ({exc})",
            fix="check the file's permissions and encoding",
        ) from exc
    return parse_spec(text, source=str(p))


def parse_spec(text: str, *, source: str = "<string>") -> SearchSpec:
    """Validate YAML text. Safe YAML only (no Python objects are ever constructed), with the
    limits of ``searchspace._yaml`` (size, no aliases, no repeated keys)."""
    data, lines = read_yaml(text, source=source)
    if not isinstance(data, dict):
        raise ConfigError(
            field="<root>",
            value=type(data).__name__ if data is not None else "empty file",
            rule="the top level must be a mapping of fields",
            fix="start from examples/digits.yaml (at least `experiment: NAME`)",
            source=source,
        )
    try:
        return SearchSpec.model_validate(data)
    except ValidationError as exc:
        raise _to_config_error(exc, source, lines) from None


def _to_config_error(
    exc: ValidationError, source: str, lines: dict[tuple[str, ...], int]
) -> ConfigError:
    """Translate pydantic's first (most telling) error into our one-paragraph message."""
    errors = exc.errors(include_url=False)
    # A misspelt key also makes the real key "missing": report the misspelling, it is the cause.
    # A value that is there and wrong tells more than a field that is not there.
    err = next(
        (e for e in errors if e["type"] == "extra_forbidden"),
        next((e for e in errors if e["type"] != "missing"), errors[0]),
    )
    # A value that fails each branch of a union (a choice that is int | float | str) fails
    # every type check; a branch that took the type and refused the value says why.
    where = _user_path(_loc(err))
    same = [e for e in errors if _user_path(_loc(e)) == where]
    err = next((e for e in same if not str(e["type"]).endswith("_type")), err)
    error = _one_error(err, source, lines)
    error.more = len({_user_path(_loc(e)) for e in errors}) - 1
    return error


def _loc(err: Any) -> tuple[str, ...]:
    return tuple(str(p) for p in err["loc"])


def _one_error(err: Any, source: str, lines: dict[tuple[str, ...], int]) -> ConfigError:
    loc = _loc(err)
    # Unions report each branch (e.g. ('space', 'lr', 'FloatRange', 'low')); keep the user's path.
    loc = _user_path(loc)
    field = ".".join(loc) if loc else "<root>"
    kind = err["type"]
    value: Any = err.get("input")
    if kind == "extra_forbidden" and loc:
        known = _known_fields(loc[:-1])
        hint = difflib.get_close_matches(loc[-1], known, n=1)
        fix = f"did you mean '{hint[0]}'?" if hint else f"remove it; known fields: {sorted(known)}"
        return ConfigError(
            field=field,
            value=value,
            rule="unknown field",
            fix=fix,
            source=source,
            line=_line_of(lines, loc),
        )
    if kind == "missing" and loc:
        return ConfigError(
            field=field,
            value=None,
            rule="this field is required",
            fix=f"add `{loc[-1]}:` to the config",
            source=source,
            line=_line_of(lines, loc[:-1]),
        )
    msg = str(err["msg"]).removeprefix("Value error, ")
    if str(kind).endswith("_type") and isinstance(value, bool):
        msg += " (true and false are not numbers here)"
    elif kind in ("int_type", "float_type") and isinstance(value, str):
        msg += " (a quoted number is text: remove the quotes)"
    elif kind == "int_type" and isinstance(value, float):
        msg += " (a whole number, written without a decimal point)"
    return ConfigError(
        field=field,
        value=value,
        rule=msg,
        fix=_fix_for(loc),
        source=source,
        line=_line_of(lines, loc),
    )


def _user_path(loc: tuple[str, ...]) -> tuple[str, ...]:
    """The path as the user wrote it: drop the names pydantic adds for a knob's union branch
    (``space.lr.Range.low`` -> ``space.lr.low``) and for validator functions."""
    out: list[str] = []
    for part in loc:
        branch = len(out) == 2 and out[0] == "space" and part in _UNION_TAGS
        branch = branch or (bool(out) and out[-1].isdigit() and part in _TYPE_BRANCHES)
        if branch or "[" in part or "(" in part:
            continue
        out.append(part)
    return tuple(out)


def _fix_for(loc: tuple[str, ...]) -> str:
    if ".".join(loc[:2]) in FIELD_FIXES:
        return FIELD_FIXES[".".join(loc[:2])]
    examples = {
        "space": "write a range as {low: 0.0, high: 0.9, log: false}, a list as "
        "{choices: [8, 32]}, or a fixed number",
        "objectives": "list items like {metric: accuracy, direction: maximize}",
        "sampler": "use one of tpe, nsga2, gp, random",
        "trials": "give a whole number >= 1",
        "concurrency": "give a whole number >= 1",
    }
    return examples.get(loc[0] if loc else "", "see the config reference in README.md")


def _known_fields(loc: tuple[str, ...]) -> list[str]:
    model: type[BaseModel] = SearchSpec
    for part in loc:
        if part.isdigit():
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        ann = field.annotation
        candidates = [ann, *_flatten_args(ann)]
        nxt = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if nxt is None:
            return []
        model = nxt
    return list(model.model_fields)


def _flatten_args(ann: Any) -> list[Any]:
    out: list[Any] = []
    for a in getattr(ann, "__args__", ()) or ():
        out.append(a)
        out.extend(_flatten_args(a))
    return out


def _line_of(lines: dict[tuple[str, ...], int], loc: tuple[str, ...]) -> int | None:
    for i in range(len(loc), -1, -1):
        if loc[:i] in lines and i > 0:
            return lines[loc[:i]]
    return None
