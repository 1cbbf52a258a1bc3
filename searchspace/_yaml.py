"""Parse a config's YAML text defensively: a hostile file fails fast, in small memory.

Rules (docs/security.md): a config is at most ``MAX_CONFIG_BYTES``; anchors and aliases
(``&name``, ``*name``) are refused altogether (an alias "bomb" expands exponentially, and a
config never needs them); nesting is at most ``MAX_DEPTH`` levels and a list or mapping holds
at most ``MAX_ITEMS`` entries; a key may appear once per
mapping (YAML would silently keep the last). Only ``yaml.SafeLoader``'s plain types are ever
constructed. Everything here is linear in the size of the text.
"""

from __future__ import annotations

from typing import Any

import yaml

from searchspace._errors import ConfigError

MAX_CONFIG_BYTES = 1_000_000
MAX_DEPTH = 32
MAX_ITEMS = 10_000

# libyaml's parser when PyYAML was built with it (faster on big files), else the pure-Python one.
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

Lines = dict[tuple[str, ...], int]


def check_size(size: int, *, source: str) -> None:
    """Refuse a config of more than ``MAX_CONFIG_BYTES`` before it is read or parsed."""
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            field="<file>",
            value=f"{size:,} bytes",
            rule=f"a config file may hold at most {MAX_CONFIG_BYTES:,} bytes",
            fix="a config is a few KB of YAML: check that this is the right file, and keep data "
            "(lists of samples, weights) in the task, not the config",
            source=source,
        )


def read_yaml(text: str, *, source: str) -> tuple[Any, Lines]:
    """The YAML document in ``text`` as plain Python data, and each field path's line."""
    check_size(len(text.encode("utf-8", errors="replace")), source=source)
    try:
        _check_events(text, source)
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            lines = _line_index(node, source)
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(
            field="<yaml>",
            value=getattr(exc, "problem", None) or str(exc),
            rule="the file must be valid YAML",
            fix="correct the YAML syntax at the reported line (indentation, colons, quotes)",
            source=source,
            line=mark.line + 1 if mark is not None else None,
        ) from None
    return data, lines


def _check_events(text: str, source: str) -> None:
    """One pass over the parser's events: no anchor or alias, no nesting past ``MAX_DEPTH``,
    no list or mapping of more than ``MAX_ITEMS`` entries."""
    # Per open collection: nodes seen so far, and the cap (a mapping's entry is two nodes).
    sizes: list[list[int]] = []
    for event in yaml.parse(text, Loader=_Loader):
        anchor = getattr(event, "anchor", None)
        line = event.start_mark.line + 1 if event.start_mark is not None else None
        if anchor:
            raise ConfigError(
                field="<yaml>",
                value=f"{'*' if isinstance(event, yaml.AliasEvent) else '&'}{anchor}",
                rule="YAML anchors and aliases (&name, *name) are not allowed in a config "
                "(they can expand a small file into gigabytes)",
                fix="write the value out in full where it is used",
                source=source,
                line=line,
            )
        if isinstance(event, yaml.NodeEvent) and sizes:
            sizes[-1][0] += 1
            if sizes[-1][0] > sizes[-1][1]:
                raise _limit(
                    f"more than {MAX_ITEMS:,} items",
                    f"lists and mappings hold at most {MAX_ITEMS:,} items",
                    "a config lists a few values per knob; keep data in the task",
                    source,
                    line,
                )
        if isinstance(event, yaml.CollectionStartEvent):
            per_item = 2 if isinstance(event, yaml.MappingStartEvent) else 1
            sizes.append([0, per_item * MAX_ITEMS])
            if len(sizes) > MAX_DEPTH:
                raise _limit(
                    f"more than {MAX_DEPTH} levels",
                    f"a config nests mappings and lists at most {MAX_DEPTH} levels deep",
                    "remove the extra brackets or indentation; see examples/digits.yaml",
                    source,
                    line,
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            sizes.pop()


def _limit(value: str, rule: str, fix: str, source: str, line: int | None) -> ConfigError:
    return ConfigError(field="<yaml>", value=value, rule=rule, fix=fix, source=source, line=line)


def _line_index(node: yaml.Node | None, source: str) -> Lines:
    """Map each field path to its 1-based line; refuse a key repeated in one mapping."""
    out: Lines = {}

    def walk(n: yaml.Node, path: tuple[str, ...]) -> None:
        out[path] = n.start_mark.line + 1
        if isinstance(n, yaml.MappingNode):
            seen: dict[tuple[str, str], int] = {}
            for k, v in n.value:
                line = k.start_mark.line + 1
                if not isinstance(k, yaml.ScalarNode):
                    raise ConfigError(
                        field=".".join(path) or "<root>",
                        value=f"a {k.id} as a key",
                        rule="every key of a config is a plain name",
                        fix="write the key as a name, e.g. `trials: 24`",
                        source=source,
                        line=line,
                    )
                if (k.tag, k.value) in seen:
                    _duplicate(path, k.value, seen[(k.tag, k.value)], line, source)
                seen[(k.tag, k.value)] = line
                key = (*path, str(k.value))
                walk(v, key)
                out[key] = line
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                walk(v, (*path, str(i)))

    if node is not None:
        walk(node, ())
    return out


def _duplicate(path: tuple[str, ...], key: str, first: int, again: int, source: str) -> None:
    raise ConfigError(
        field=".".join((*path, key)),
        value=key,
        rule=f"the key appears twice in one mapping (lines {first} and {again}); YAML would "
        "silently keep the last",
        fix="keep one of the two",
        source=source,
        line=again,
    )
