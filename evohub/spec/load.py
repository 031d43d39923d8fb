"""Loading job specs and recipes from files: YAML with line numbers, the schema, then the checks
that need the machine (docs/design.md#loading).

    >>> spec = load_job("jobs/evollm-jp.yaml")          # doctest: +SKIP
    >>> spec.parameter_space.method
    'dare_ties'

Every problem is one line ``file:line: field.path: what is wrong``. After the schema, a file's
references are checked once: local paths must exist, and where a model's config.json is on this
machine (a local directory, or the HF cache, read without a request) ``layer_groups`` and DFS
layer indices are checked against its decoder layers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from evohub.errors import SpecError
from evohub.hub.client import cached_config
from evohub.merging.arch import num_decoder_layers
from evohub.spec.job import JobSpec
from evohub.spec.problems import validate_doc
from evohub.spec.recipe import Recipe
from evohub.spec.refs import DataRef, ModelRef, is_pinned
from evohub.spec.yamlio import Loc, YamlDoc, format_loc, read_yaml

Document = JobSpec | Recipe


def local_config(ref: ModelRef) -> dict | None:
    """config.json of a model when it is on this machine (local dir or HF cache), else None."""
    if ref.repo is not None:
        return cached_config(ref.repo, ref.revision)
    try:
        return json.loads((Path(ref.path) / "config.json").read_text())  # type: ignore[arg-type]
    except (OSError, ValueError):
        return None


def walk_refs(doc: BaseModel) -> Iterator[tuple[Loc, ModelRef | DataRef]]:
    """Every model and dataset reference in a document, with its field path."""

    def walk(obj: Any, loc: Loc) -> Iterator[tuple[Loc, ModelRef | DataRef]]:
        if isinstance(obj, ModelRef | DataRef):
            yield loc, obj
        elif isinstance(obj, BaseModel):
            for name in type(obj).model_fields:
                yield from walk(getattr(obj, name), (*loc, name))
        elif isinstance(obj, tuple):
            for i, item in enumerate(obj):
                yield from walk(item, (*loc, i))

    yield from walk(doc, ())


def unpinned(doc: Document) -> Iterator[tuple[Loc, ModelRef | DataRef]]:
    """Every Hub reference whose revision is not a commit sha (resolved and pinned at pull time)."""
    for loc, ref in walk_refs(doc):
        if ref.repo is not None and not is_pinned(ref.revision):
            yield loc, ref


def _file_problems(doc: Document) -> Iterator[tuple[Loc, str]]:
    for loc, ref in walk_refs(doc):
        if ref.path is None:
            continue
        if isinstance(ref, ModelRef) and not Path(ref.path).is_dir():
            yield (*loc, "path"), f"local model directory {ref.path!r} does not exist"
        elif isinstance(ref, DataRef) and not Path(ref.path).exists():
            yield (*loc, "path"), f"local data file {ref.path!r} does not exist"
    if isinstance(doc, JobSpec) and doc.evaluation is not None:
        for name, path in doc.evaluation.data.items():
            if not Path(path).is_file():
                yield ("evaluation", "data", name), f"local data file {path!r} for {name!r} does not exist"


def _layers(ref: ModelRef | None) -> int | None:
    cfg = local_config(ref) if ref is not None else None
    return num_decoder_layers(cfg) if cfg else None


def _config_problems(doc: Document) -> Iterator[tuple[Loc, str]]:
    """Checks against the models' configs, where they are on this machine."""
    ps = doc.parameter_space
    if ps is not None and ps.layer_groups > 1 and doc.base_model is not None:
        n = _layers(doc.base_model)
        if n is not None and ps.layer_groups > n:
            yield (
                ("parameter_space", "layer_groups"),
                f"{ps.layer_groups} groups but the base model has {n} decoder layers",
            )
    if isinstance(doc, Recipe) and doc.data_flow_space is not None:
        dfs = doc.data_flow_space
        for side in ("a", "b"):
            ref = getattr(dfs, side)
            if ref == "ps":
                ref = doc.base_model or (ps.models[0].source if ps else None)
            n = _layers(ref) if isinstance(ref, ModelRef) else None
            for k, (who, layer) in enumerate(dfs.path):
                if n is not None and who == side and layer >= n:
                    yield (
                        ("data_flow_space", "path", k, 1),
                        f"layer {layer} of model {side!r} does not exist (it has {n} layers)",
                    )


def _check(doc: Document, yaml_doc: YamlDoc) -> Document:
    problems = [*_file_problems(doc)] or [*_config_problems(doc)]
    if problems:
        raise SpecError(
            [f"{yaml_doc.filename}:{yaml_doc.line_of(loc)}: {format_loc(loc)}: {msg}" for loc, msg in problems]
        )
    return doc


def load(path: str | Path) -> Document:
    """Load a job spec or a recipe, telling them apart by ``evohub_job`` / ``evohub_recipe``."""
    doc = read_yaml(path)
    base_dir = Path(path).resolve().parent
    if not isinstance(doc.data, dict):
        got = "nothing" if doc.data is None else type(doc.data).__name__
        raise SpecError(f"{path}:1: (top level): expected a mapping of keys, got {got}")
    if "evohub_recipe" in doc.data:
        return _check(validate_doc(Recipe, doc, base_dir), doc)
    if "evohub_job" in doc.data:
        return _check(validate_doc(JobSpec, doc, base_dir), doc)
    raise SpecError(
        f"{path}:1: (top level): not an evohub document; start it with 'evohub_job: 1' (a job spec) or 'evohub_recipe: 1' (a recipe)"
    )


def load_job(path: str | Path) -> JobSpec:
    """A job spec from a file (every problem one line, exit 2 from the CLI)."""
    doc = load(path)
    if not isinstance(doc, JobSpec):
        raise SpecError(f"{path}:1: (top level): this is a recipe, not a job spec (expected 'evohub_job: 1')")
    return doc


def load_recipe(path: str | Path) -> Recipe:
    """A recipe from a file (every problem one line, exit 2 from the CLI)."""
    doc = load(path)
    if not isinstance(doc, Recipe):
        raise SpecError(f"{path}:1: (top level): this is a job spec, not a recipe (expected 'evohub_recipe: 1')")
    return doc


def check_remote(doc: Document, path: str | Path) -> list[str]:
    """One line per problem of the document's Hub references, checked against the Hub
    (metadata only: :mod:`evohub.spec.remote`)."""
    from evohub.spec.remote import remote_problems  # imports datasets: only for --strict

    lines_doc = read_yaml(path)
    return [
        f"{path}:{lines_doc.line_of(loc)}: {format_loc(loc)}: {msg}"
        for loc, msg in remote_problems(doc, walk_refs(doc))
    ]


def warnings_for(doc: Document, path: str | Path) -> list[str]:
    """One-line warnings (unpinned revisions), with the line of each field."""
    lines_doc = read_yaml(path)
    out = []
    for loc, ref in unpinned(doc):
        rev = ref.revision or "main"
        out.append(
            f"{path}:{lines_doc.line_of(loc)}: {format_loc(loc)}: warning: unpinned revision {rev!r} of {ref.repo}; "
            "it is resolved to a commit and recorded in job.lock.yaml at pull time"
        )
    return out
