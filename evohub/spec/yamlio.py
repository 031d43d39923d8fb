"""YAML in and out, with the line of every key kept for error messages.

>>> doc = parse_yaml("a:\\n  b: [1, 2]\\n", "x.yaml")
>>> doc.data, doc.line_of(("a", "b", 1))
({'a': {'b': [1, 2]}}, 2)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from evohub.errors import SpecError

Loc = tuple[Any, ...]


@dataclass
class YamlDoc:
    """Parsed YAML plus the 1-based line where each key path starts."""

    data: Any
    filename: str
    lines: dict[Loc, int] = field(default_factory=dict)

    def line_of(self, loc: Loc) -> int:
        """Line of the longest prefix of ``loc`` that exists in the document (1 if none)."""
        for n in range(len(loc), -1, -1):
            if loc[:n] in self.lines:
                return self.lines[loc[:n]]
        return 1


def _walk(node: yaml.Node, loc: Loc, lines: dict[Loc, int], dups: list[tuple[Loc, int]]) -> None:
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is None:
                continue
            if key in seen:
                dups.append(((*loc, key), key_node.start_mark.line + 1))
            seen.add(key)
            lines.setdefault((*loc, key), key_node.start_mark.line + 1)
            _walk(value_node, (*loc, key), lines, dups)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*loc, i), lines, dups)


_SIMPLE_KEY = re.compile(r"^[A-Za-z_][\w-]*$")


def format_loc(loc: Loc) -> str:
    """``("models", 0, "weight")`` → ``models[0].weight``; the empty path is ``(top level)``."""
    out = ""
    for part in loc:
        if isinstance(part, str) and _SIMPLE_KEY.match(part):
            out += f".{part}" if out else part
        else:
            r = repr(part)
            out += f"[{part}]" if isinstance(part, int) else f"[{r if len(r) <= 40 else r[:37] + '...'}]"
    return out or "(top level)"


_KEY_LINE = re.compile(r"^(\s*)(?:-\s+)?([\w.-]+)\s*:(?:\s|$)")


def _key_before(text: str, line: int) -> str | None:
    """Dotted path of the last ``key:`` at or above a 0-based line (for syntax errors)."""
    path: list[tuple[int, str]] = []
    for raw in text.splitlines()[: line + 1]:
        m = _KEY_LINE.match(raw)
        if m:
            indent = m.start(2)
            while path and path[-1][0] >= indent:
                path.pop()
            path.append((indent, m.group(2)))
    return ".".join(k for _, k in path) or None


def parse_yaml(text: str, filename: str) -> YamlDoc:
    """Parse one YAML document; syntax errors and duplicate keys raise :class:`SpecError`."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        start = e.context_mark or e.problem_mark
        key = _key_before(text, start.line if start else 0)
        what = " ".join(str(s) for s in (e.context, e.problem) if s)
        raise SpecError([f"{filename}:{line}: {key or '(top level)'}: YAML syntax: {what}"]) from e
    except (yaml.YAMLError, RecursionError, ValueError, TypeError) as e:
        raise SpecError([f"{filename}:1: YAML: {str(e).splitlines()[0] if str(e) else type(e).__name__}"]) from e
    finally:
        loader.dispose()
    lines: dict[Loc, int] = {}
    dups: list[tuple[Loc, int]] = []
    if node is not None:
        _walk(node, (), lines, dups)
    if dups:
        raise SpecError([f"{filename}:{line}: {format_loc(loc)}: duplicate key" for loc, line in dups])
    return YamlDoc(data=data, filename=filename, lines=lines)


def read_yaml(path: str | Path) -> YamlDoc:
    """Read and parse a YAML file; an unreadable file raises :class:`SpecError`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError([f"{path}:1: cannot read: {e.strerror if isinstance(e, OSError) else e}"]) from e
    return parse_yaml(text, str(path))


def dump_yaml(data: Any) -> str:
    """Block-style YAML with keys in the given order; short lists of scalars stay on one line."""

    class _Dumper(yaml.SafeDumper):
        pass

    def _list(dumper: yaml.SafeDumper, value: list) -> yaml.Node:
        flow = all(not isinstance(v, dict | list) for v in value) or all(
            isinstance(v, list) and all(not isinstance(x, dict | list) for x in v) for v in value
        )
        return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flow and bool(value))

    _Dumper.add_representer(list, _list)
    _Dumper.add_representer(tuple, _list)
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
