"""Vocabulary shared by both documents: references to models and datasets, names, numbers.

Everything here is pure: no disk, no Hub. A relative local ``path`` is made absolute against the
document's directory when the loader gives one (``context={"base_dir": ...}``); whether it exists
is checked by :mod:`evohub.spec.load`, once per file.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    PlainValidator,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.functional_serializers import PlainSerializer

from evohub.errors import UnknownName
from evohub.hub.commit import check_repo_id
from evohub.registry import Registry

_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_SPLIT = re.compile(r"^[A-Za-z_][\w-]*(\[[-\d%:\s]*\])?$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def is_pinned(revision: str | None) -> bool:
    """True when ``revision`` is a full 40-hex commit sha."""
    return bool(revision and _HEX40.match(revision))


def registered(registry: Registry) -> AfterValidator:
    """A field validator: the value must name an entry of ``registry`` (its message lists them)."""

    def check(v: str) -> str:
        try:
            registry.get(v)
        except UnknownName as e:
            raise ValueError(str(e)) from None
        return v

    return AfterValidator(check)


def _num_or_list(value: Any) -> float | tuple[float, ...]:
    def one(v: Any) -> float:
        if isinstance(v, str):
            try:
                float(v)
            except ValueError:
                pass
            else:  # YAML 1.1 reads 1e-3 (no dot) as text
                raise ValueError(f"expected a number, got the text {v!r} (YAML reads an exponent without a dot as "
                                 f"text: write {v.lower().replace('e', '.0e', 1) if '.' not in v else v})")  # fmt: skip
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ValueError(f"expected a number, got {_short(v)}")
        if not math.isfinite(v):
            raise ValueError(f"expected a finite number, got {v}")
        return float(v)

    if isinstance(value, list | tuple):
        if not value:
            raise ValueError("expected a number or a non-empty list of numbers, got []")
        return tuple(one(v) for v in value)
    return one(value)


#: A number, or one number per layer group.
NumOrList = Annotated[
    Union[float, tuple[float, ...]],  # noqa: UP007 - typing.Union keeps get_args simple
    PlainValidator(_num_or_list),
    PlainSerializer(lambda v: list(v) if isinstance(v, tuple) else v),
]


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def as_list(v: float | tuple[float, ...]) -> tuple[float, ...]:
    return v if isinstance(v, tuple) else (v,)


def _revision(v: str) -> str:
    if not v or any(c.isspace() for c in v):
        raise ValueError(f"{v!r} is not a branch, tag or commit")
    return v


def _name(v: str) -> str:
    if not _NAME.match(v):
        raise ValueError(f"{v!r} is not a name (lowercase letters, digits, '.', '_', '-'; at most 64)")
    return v


def regex(v: str) -> str:
    try:
        re.compile(v)
    except re.error as e:
        raise ValueError(f"{v!r} is not a regular expression: {e}") from e
    return v


RepoId = Annotated[str, AfterValidator(check_repo_id)]
Revision = Annotated[str, AfterValidator(_revision)]
Name = Annotated[str, AfterValidator(_name)]
Regex = Annotated[str, AfterValidator(regex)]


def absolute(v: str, info: ValidationInfo) -> str:
    """A local path made absolute against the document's directory, when the loader gave one."""
    base = (info.context or {}).get("base_dir")
    if base is None:
        return v
    return os.path.normpath(os.path.join(base, os.path.expanduser(v)))


#: A local file or directory; relative paths are resolved against the document's directory.
LocalPath = Annotated[str, AfterValidator(absolute)]


def _file_name(v: str) -> str:
    if not v or v.startswith("/") or ".." in v.split("/") or "\\" in v:
        raise ValueError(f"{v!r}: give a file name inside the repo (no leading '/', no '..')")
    if not v.endswith(".safetensors"):
        raise ValueError(f"{v!r}: only safetensors files are read")
    return v


FileName = Annotated[str, AfterValidator(_file_name)]


class ModelRef(Frozen):
    """A model on the Hub (``repo`` + optional ``revision``) or in a local directory (``path``).

    ``weights: pickle`` opts in to a model that has only PyTorch pickle weights (``*.bin``): they
    are read with ``torch.load(weights_only=True)`` — tensors only, never arbitrary objects — and
    converted once to safetensors in evohub's cache, the conversion's sha256 recorded in the lock
    (docs/design.md#pickle-weights). Without it such a model is refused.
    """

    repo: RepoId | None = None
    revision: Revision | None = None
    path: LocalPath | None = None
    weights: Literal["pickle"] | None = None
    #: the one file of the repo (or directory) this reference reads (a LoRA's safetensors): only
    #: it is fetched (SDXL-Lightning's repo holds tens of GB besides)
    file: FileName | None = None

    @model_validator(mode="after")
    def _one_of(self) -> ModelRef:
        if (self.repo is None) == (self.path is None):
            raise ValueError("give exactly one of 'repo' (a Hub id) or 'path' (a local directory)")
        if self.path is not None and self.revision is not None:
            raise ValueError("'revision' applies to 'repo' sources only")
        return self

    @property
    def pinned(self) -> bool:
        return self.path is not None or is_pinned(self.revision)

    def display(self, relative_to: str | Path | None = None) -> str:
        if self.path is not None:
            return display_path(self.path, relative_to)
        return self.repo + (f"@{self.revision[:12]}" if self.revision else "")  # type: ignore[operator]

    def plain(self) -> ModelRef:
        """The reference alone (a :class:`~evohub.spec.job.Source` loses its name); not validated again."""
        return ModelRef.model_construct(repo=self.repo, revision=self.revision, path=self.path, weights=self.weights,
                                        file=self.file)  # fmt: skip

    def at(self, revision: str) -> ModelRef:
        """This Hub reference pinned to ``revision`` (a local path stays as it is)."""
        if self.path is not None:
            return self.plain()
        return ModelRef.model_construct(repo=self.repo, revision=revision, path=None, weights=self.weights,
                                        file=self.file)  # fmt: skip


class DataRef(Frozen):
    """A dataset on the Hub (``repo``, ``config``, ``revision``) or a local JSON/JSONL file."""

    repo: RepoId | None = None
    config: str | None = None
    revision: Revision | None = None
    path: LocalPath | None = None
    split: str = "train"

    @field_validator("split")
    @classmethod
    def _split_syntax(cls, v: str) -> str:
        if not _SPLIT.match(v):
            raise ValueError(f"{v!r} is not a split (e.g. 'test', 'train[:200]', 'test[869:]')")
        return v

    @model_validator(mode="after")
    def _one_of(self) -> DataRef:
        if (self.repo is None) == (self.path is None):
            raise ValueError("give exactly one of 'repo' (a Hub dataset id) or 'path' (a local file)")
        if self.path is not None and (self.config or self.revision):
            raise ValueError("'config' and 'revision' apply to 'repo' datasets only")
        return self

    def display(self, relative_to: str | Path | None = None) -> str:
        name = display_path(self.path, relative_to) if self.path is not None else self.repo
        return f"{name}{':' + self.config if self.config else ''}[{self.split}]"


class Range(Frozen):
    """Search bounds of one merge parameter: the optimiser searches [0, 1] and maps it linearly here."""

    bounds: tuple[float, float]

    @field_validator("bounds")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(math.isfinite(x) for x in v):
            raise ValueError("bounds must be finite numbers")
        if v[0] > v[1]:
            raise ValueError(f"lower bound {v[0]:g} is above upper bound {v[1]:g}; write [{v[1]:g}, {v[0]:g}]")
        return v


def relative_paths(data: Any, base: str | Path) -> Any:
    """A dumped document with every local ``path`` made relative to ``base`` (the directory the
    document is written to), so that no machine path is written and a moved checkout still loads
    it (docs/design.md#no-machine-paths)."""
    if isinstance(data, dict):
        return {
            k: os.path.relpath(v, base)
            if k == "path" and isinstance(v, str) and os.path.isabs(v)
            else relative_paths(v, base)
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [relative_paths(v, base) for v in data]
    return data


def display_path(path: str, base: str | Path | None) -> str:
    """A local path as published: relative to ``base`` when given, else as it is."""
    return os.path.relpath(path, base) if base is not None and os.path.isabs(path) else path


def source_name(ref: ModelRef) -> str:
    """The default name of a source: the repo's or directory's last part, lowercased."""
    return Path(ref.repo or ref.path or "").name.lower()
