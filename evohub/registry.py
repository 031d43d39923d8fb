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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Option:
    """A numeric setting of a registered algorithm, given in the job spec (an estimator's
    ``fitness.estimator_options``, an optimiser's ``optimizer.options``)."""

    name: str
    default: float
    doc: str
    integer: bool = True
    low: float = 0.0  # exclusive for floats, inclusive for integers (>= 1 means "at least one")
    high: float | None = None  # inclusive
    low_inclusive: bool | None = None  # None: as said above; True: a float may equal ``low``

    def check(self, value) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{self.name} must be a number"
        if self.integer and not float(value).is_integer():
            return f"{self.name} must be a whole number"
        closed = self.integer if self.low_inclusive is None else self.low_inclusive
        if (value < self.low) if closed else (value <= self.low):
            return f"{self.name} must be {'at least' if closed else 'above'} {self.low:g}"
        if self.high is not None and value > self.high:
            return f"{self.name} must be at most {self.high:g}"
        return None


class HasOptions:
    """What an entry with numeric ``options`` (an estimator, an optimiser) answers about them: its
    defaults as ``evohub list`` shows them, the settings a spec's values give, and one message per
    bad value. ``owner`` names the entry in those messages."""

    options: tuple[Option, ...]
    name: str
    owner = "{name}"

    @property
    def defaults(self) -> str:
        """Its options with their defaults (``audit_every=5, ...``)."""
        return ", ".join(f"{o.name}={o.default:g}" for o in self.options)

    def settings(self, given: dict | None) -> dict:
        """The options with their defaults filled in from ``given`` (already checked)."""
        out = {o.name: o.default for o in self.options} | dict(given or {})
        return {o.name: int(out[o.name]) if o.integer else float(out[o.name]) for o in self.options}

    def problems(self, given: dict | None) -> list[str]:
        """One message per bad entry of ``given`` (an unknown name gets the known ones)."""
        known = {o.name: o for o in self.options}
        out = []
        for k, v in (given or {}).items():
            if k not in known:
                names = ", ".join(sorted(known)) or "none"
                out.append(f"{self.owner.format(name=self.name)} has no option {k!r} (its options: {names})")
            elif msg := known[k].check(v):
                out.append(msg)
        return out


def markdown_grid(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown table's lines: the header, its rule, a line per row (every Markdown table of
    evohub: the registries', the plan's, its memory and cost)."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def markdown_table(entries: list, columns: dict[str, str]) -> str:
    """| name | what it is | <columns> |, one row per entry (``columns``: header -> attribute)."""
    rows = ([f"`{e.name}`", e.doc, *(str(getattr(e, attr, "") or "") for attr in columns.values())] for e in entries)
    return "\n".join(markdown_grid(["name", "what it is", *columns], rows))
