"""Turning pydantic's validation errors into evohub's lines: ``file:line: field.path: message``.

The schema modules raise :class:`Invalid` from their whole-document checks with exact field paths;
:func:`validate_doc` validates a parsed YAML document against a schema class and reports every
problem, from pydantic or from those checks, as one line at the line of its field.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import BaseModel, ValidationError

from evohub.errors import EvohubError, SpecError
from evohub.spec.yamlio import Loc, YamlDoc, format_loc


class Invalid(EvohubError):  # not a ValueError, so pydantic lets it through
    """Raised by the whole-document checks with exact field paths (a SpecError when loading)."""

    def __init__(self, problems: list[tuple[Loc, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{format_loc(loc)}: {msg}" for loc, msg in problems))


def short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def _model_at(cls: Any, loc: Loc) -> type[BaseModel] | None:
    """The pydantic model class that the data at ``loc`` is validated as (for key suggestions)."""

    def models_in(tp: Any) -> list[Any]:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            return [tp]
        origin = typing.get_origin(tp)
        if origin in (Union, types.UnionType, Annotated, tuple, list) or origin is typing.Literal:
            return [m for a in typing.get_args(tp) for m in models_in(a)] if origin is not typing.Literal else []
        return []

    current: list[Any] = [cls]
    for part in loc:
        nxt: list[Any] = []
        for tp in current:
            if isinstance(part, str) and isinstance(tp, type) and issubclass(tp, BaseModel):
                f = tp.model_fields.get(part)
                if f is not None:
                    nxt.append(f.annotation)
            elif isinstance(part, int):
                nxt += [a for a in typing.get_args(tp)] if typing.get_origin(tp) in (tuple, list) else [tp]
        current = [m for tp in nxt for m in (models_in(tp) or [tp])]
    found = [c for c in current if isinstance(c, type) and issubclass(c, BaseModel)]
    return found[0] if found else None


def _clean_loc(loc: Loc, data: Any, missing: bool) -> Loc:
    """Drop union-branch tags from a pydantic error location by walking the actual data.

    The last part of a ``missing`` error's location is absent from the data and is kept.
    """
    out: list[Any] = []
    cur = data
    for k, part in enumerate(loc):
        last = k == len(loc) - 1
        if (isinstance(cur, dict) and part in cur) or (
            isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur)
        ):
            cur = cur[part]
        elif last and missing and isinstance(cur, dict):
            pass  # the missing key itself
        else:
            continue  # a tag such as 'model' in a tagged union
        out.append(part)
    return tuple(out)


def _message(err: dict, cls: type[BaseModel], loc: Loc) -> str:
    kind, msg = err["type"], err["msg"]
    msg = re.sub(r"^(Value|Assertion) error, ", "", msg)
    if kind == "extra_forbidden":
        model = _model_at(cls, loc[:-1])
        allowed = [k for k in (model.model_fields if model else {}) if not k.startswith("_")]
        near = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"did you mean {near[0]!r}?" if near else f"allowed: {', '.join(allowed)}"
        return f"unknown key; {hint}"
    if kind == "missing":
        return "required key is missing"
    if kind == "model_type" or kind == "dict_type":
        return f"expected a mapping, got {short(err.get('input'))}"
    if kind in ("literal_error", "enum"):
        return msg.replace("Input should be", "must be") + f", got {short(err.get('input'))}"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return msg.replace("Input should be", "expected") + f", got {short(err.get('input'))}"
    return msg.replace("Input should be", "must be")


def validate_doc(cls: type[BaseModel], doc: YamlDoc, base_dir: str | Path | None = None) -> Any:
    """``cls`` validated from a parsed document; every problem is a line of one SpecError.

    ``base_dir`` makes relative local paths absolute against it (the document's directory).
    """
    if not isinstance(doc.data, dict):
        raise SpecError(f"{doc.filename}:1: (top level): expected a mapping of keys")
    try:
        return cls.model_validate(doc.data, context={"base_dir": Path(base_dir)} if base_dir is not None else None)
    except ValidationError as e:
        seen: set[tuple[int, Loc]] = set()
        lines: list[str] = []
        errors = e.errors()
        nested = {tuple(err["loc"][:n]) for err in errors for n in range(len(err["loc"]))}
        for err in errors:
            if err["type"] == "too_short" and tuple(err["loc"]) in nested:
                continue  # "at least 2 items" only because the items themselves failed
            loc = _clean_loc(tuple(err["loc"]), doc.data, missing=err["type"] == "missing")
            line = doc.line_of(loc)
            if (line, loc) in seen:
                continue
            seen.add((line, loc))
            lines.append(f"{doc.filename}:{line}: {format_loc(loc)}: {_message(err, cls, loc)}")
        raise SpecError(lines) from e
    except Invalid as e:
        raise SpecError(
            [f"{doc.filename}:{doc.line_of(loc)}: {format_loc(loc)}: {msg}" for loc, msg in e.problems]
        ) from e
