"""Registries: one per kind of thing a job can name (docs/design.md#registries).

A merge method, fitness task, evaluation suite, fitness estimator, optimiser or model kind is
added by writing one module in its kind's folder that registers an entry::

    # evohub/merging/methods/my_method.py
    from evohub.merging.methods.base import METHODS, MergeMethod

    METHODS.register(MergeMethod(name="my_method", doc="one line for --help and the README", ...))

Each registry knows the package that holds its built-in entries and imports every module in it
the first time it is asked for a name, so a new module is found without editing a list. Entries
are light (no torch at import): the schema's allowed values, ``--help`` and the README tables
are read from them, and ``evohub --help`` must stay fast. Modules outside the package (a plugin,
a test) register by importing the registry and calling :meth:`Registry.register`.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

from evohub.errors import UnknownName


class Entry(Protocol):
    """What every registered entry has: its name in job specs, and a one-line description."""

    name: str
    doc: str


T = TypeVar("T", bound=Entry)


class Registry(Generic[T]):
    """Entries of one kind by name; ``package`` holds the built-in entries (imported on first use).

    >>> r = Registry("colour")
    >>> _ = r.register(type("E", (), {"name": "red", "doc": "warm"})())
    >>> r.names(), "red" in r
    (('red',), True)
    """

    def __init__(self, kind: str, package: str | None = None):
        self.kind = kind
        self.package = package
        self._entries: dict[str, T] = {}
        self._loaded = package is None

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        pkg = importlib.import_module(self.package)  # type: ignore[arg-type]
        for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
            if not mod.name.startswith("_"):
                importlib.import_module(f"{self.package}.{mod.name}")

    def register(self, entry: T) -> T:
        """Add ``entry`` (returned, so this works as a decorator on classes and functions)."""
        name = entry.name
        if not name or not isinstance(name, str):
            raise ValueError(f"a {self.kind} needs a name")
        old = self._entries.get(name)
        if old is not None and old is not entry:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove an entry (a plug-in unloading, a test cleaning up)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        """The entry called ``name``; an unknown name raises :class:`UnknownName` listing the known."""
        self._load()
        entry = self._entries.get(name)
        if entry is None:
            raise UnknownName(self.unknown(name))
        return entry

    def unknown(self, name: str, extra: tuple[str, ...] = ()) -> str:
        """The one-line message for a name that is not registered (with a "did you mean")."""
        known = [*self.names(), *extra]
        near = difflib.get_close_matches(str(name), known, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else f" (known: {', '.join(known)})"
        return f"unknown {self.kind} {name!r}{hint}"

    def names(self) -> tuple[str, ...]:
        """The registered names, sorted (so listings do not depend on import order)."""
        self._load()
        return tuple(sorted(self._entries))

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[T]:
        self._load()
        return iter([self._entries[n] for n in sorted(self._entries)])

    def choices(self) -> str:
        """``a | b | c``: the names, for ``--help`` and error messages."""
        return " | ".join(self.names())


def markdown_table(entries: list, columns: dict[str, str]) -> str:
    """| name | what it is | <columns> |, one row per entry (``columns``: header -> attribute)."""
    head = ["name", "what it is", *columns]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for e in entries:
        cells = [f"`{e.name}`", e.doc, *(str(getattr(e, attr, "") or "") for attr in columns.values())]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
