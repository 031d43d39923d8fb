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

#: Limits on any YAML evohub reads (job specs come from pull requests): a document costs at most
#: about a second and a few MB however it is written (docs/design.md#loading).
MAX_BYTES = 512 * 1024
MAX_DEPTH = 64
MAX_NODES = 100_000  # after expanding aliases: an alias bomb is refused before it is built
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_NAMES = {0: "NUL", 7: "BEL", 8: "BS", 0x1B: "ESC", 0x7F: "DEL"}


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


def _refuse_text(text: str, filename: str) -> None:
    """Too large a document, or a control character in it: one line."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise SpecError([f"{filename}:1: (top level): larger than {MAX_BYTES // 1024} KiB; not a spec evohub reads"])
    m = _CONTROL.search(text)
    if m:
        line = text.count("\n", 0, m.start()) + 1
        col = m.start() - (text.rfind("\n", 0, m.start()) + 1) + 1
        code = ord(m.group(0))
        name = _NAMES.get(code, f"U+{code:04X}")
        raise SpecError([f"{filename}:{line}: control character {name} (U+{code:04X}) at column {col}; "
                         "YAML specs are plain text"])  # fmt: skip


def _refuse_graph(node: yaml.Node, filename: str) -> None:
    """Nesting deeper than MAX_DEPTH, or more than MAX_NODES nodes once aliases are expanded (an
    alias bomb: a few lines that expand to billions of nodes), counted without expanding."""
    sizes: dict[int, int] = {}

    def size(n: yaml.Node, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise SpecError([f"{filename}:{n.start_mark.line + 1}: (top level): nested deeper than {MAX_DEPTH} levels"])
        if id(n) in sizes:  # an alias: the same node again
            return sizes[id(n)]
        if isinstance(n, yaml.MappingNode):
            total = 1 + sum(size(k, depth + 1) + size(v, depth + 1) for k, v in n.value)
        elif isinstance(n, yaml.SequenceNode):
            total = 1 + sum(size(v, depth + 1) for v in n.value)
        else:
            total = 1
        sizes[id(n)] = total = min(total, MAX_NODES + 1)
        if total > MAX_NODES:
            raise SpecError([f"{filename}:{n.start_mark.line + 1}: (top level): expands to more than {MAX_NODES} "
                             "values (YAML aliases); write it out or make it smaller"])  # fmt: skip
        return total

    size(node, 0)


def parse_yaml(text: str, filename: str) -> YamlDoc:
    """Parse one YAML document within the limits above; syntax errors, duplicate keys, control
    characters, oversize documents and alias bombs raise :class:`SpecError` (one line each)."""
    _refuse_text(text, filename)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _refuse_graph(node, filename)
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
    """Read and parse a YAML file; an unreadable or oversize file raises :class:`SpecError`."""
    try:
        if Path(path).stat().st_size > 4 * MAX_BYTES:  # not read at all
            raise SpecError([f"{path}:1: (top level): larger than {MAX_BYTES // 1024} KiB; not a spec evohub reads"])
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
