"""The two YAML documents of evohub: the job spec and the recipe (schema 1).

A **job spec** (``jobs/*.yaml``) says what may be merged and how to judge it; a **recipe** is one
concrete merge that ``evohub merge`` rebuilds bit-for-bit. Both are frozen pydantic v2 models with
``extra="forbid"`` that round-trip to YAML. Loading reports every problem as one line
``file:line: field.path: what is wrong``::

    >>> spec = load_job("jobs/evollm-jp.yaml")          # doctest: +SKIP
    >>> spec.parameter_space.method
    'dare_ties'
    >>> recipe = load_recipe("runs/x/recipe.yaml")       # doctest: +SKIP
    >>> Recipe.from_yaml(recipe.to_yaml()) == recipe     # doctest: +SKIP
    True

Checks that need more than one field (a base model for delta methods, list lengths against
``layer_groups``, DFS layer indices against a local config) run after the per-field checks and
report the exact field they concern.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.functional_serializers import PlainSerializer

from evohub.errors import EvohubError, SpecError
from evohub.yamlio import Loc, YamlDoc, dump_yaml, format_loc, read_yaml

# ----------------------------------------------------------------------------------------------
# Vocabulary shared by both documents

DELTA_METHODS = ("task_arithmetic", "ties", "dare_ties", "dare_linear")  # need a base model
DENSITY_METHODS = ("ties", "dare_ties", "dare_linear")
#: Domains the values of each merge parameter must lie in (bounds in a job spec too).
WEIGHT_DOMAIN = (-10.0, 10.0)  # a sanity limit: task vectors scaled beyond this are noise
SLERP_WEIGHT_DOMAIN = (0.0, 1.0)
DENSITY_DOMAIN = (0.0, 1.0)
SCALE_DOMAIN = (0.0, 10.0)  # DFS hidden-state scales; must be > 0 (the fold divides by them)

EVAL_SUITES = ("mgsm-ja", "ja-math", "jp-lmeh", "ja-vg-vqa-500", "ja-vlm-bench-itw", "jcola")

_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9](?:[\w.-]{0,94}[\w])?/)?[A-Za-z0-9](?:[\w.-]{0,94}[\w])?$")
_SPLIT = re.compile(r"^[A-Za-z_][\w-]*(\[[-\d%:\s]*\])?$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class _Invalid(EvohubError):  # not a ValueError, so pydantic lets it through
    """Raised by the whole-document checks with exact field paths (a SpecError when loading)."""

    def __init__(self, problems: list[tuple[Loc, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{format_loc(loc)}: {msg}" for loc, msg in problems))


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def is_pinned(revision: str | None) -> bool:
    """True when ``revision`` is a full 40-hex commit sha."""
    return bool(revision and _HEX40.match(revision))


def _base_dir(info: ValidationInfo) -> Path:
    ctx = info.context or {}
    return Path(ctx.get("base_dir") or ".")


def _num_or_list(value: Any) -> float | tuple[float, ...]:
    def one(v: Any) -> float:
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


def _as_list(v: float | tuple[float, ...]) -> tuple[float, ...]:
    return v if isinstance(v, tuple) else (v,)


# ----------------------------------------------------------------------------------------------
# References to models and datasets


def _repo_id(v: str) -> str:
    if not _REPO_ID.match(v) or "--" in v or ".." in v:
        raise ValueError(f"{v!r} is not a Hub repo id (expected 'owner/name')")
    return v


def _revision(v: str) -> str:
    if not v or any(c.isspace() for c in v):
        raise ValueError(f"{v!r} is not a branch, tag or commit")
    return v


def _name(v: str) -> str:
    if not _NAME.match(v):
        raise ValueError(f"{v!r} is not a name (lowercase letters, digits, '.', '_', '-'; at most 64)")
    return v


RepoId = Annotated[str, AfterValidator(_repo_id)]
Revision = Annotated[str, AfterValidator(_revision)]
Name = Annotated[str, AfterValidator(_name)]


class ModelRef(Frozen):
    """A model on the Hub (``repo`` + optional ``revision``) or in a local directory (``path``)."""

    repo: RepoId | None = None
    revision: Revision | None = None
    path: str | None = None

    @field_validator("path")
    @classmethod
    def _path_exists(cls, v: str | None, info: ValidationInfo) -> str | None:
        """Relative paths are resolved against the document's directory and stored absolute."""
        if v is not None:
            p = (_base_dir(info) / Path(v).expanduser()).resolve()
            if not p.is_dir():
                raise ValueError(f"local model directory {str(p)!r} does not exist")
            return str(p)
        return v

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

    def display(self) -> str:
        if self.path is not None:
            return self.path
        return self.repo + (f"@{self.revision[:12]}" if self.revision else "")  # type: ignore[operator]


class DataRef(Frozen):
    """A dataset on the Hub (``repo``, ``config``, ``revision``) or a local JSON/JSONL file."""

    repo: RepoId | None = None
    config: str | None = None
    revision: Revision | None = None
    path: str | None = None
    split: str = "train"

    @field_validator("path")
    @classmethod
    def _file_exists(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None:
            p = (_base_dir(info) / Path(v).expanduser()).resolve()
            if not p.exists():
                raise ValueError(f"local data file {str(p)!r} does not exist")
            return str(p)
        return v

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

    def display(self) -> str:
        name = self.path or self.repo
        return f"{name}{':' + self.config if self.config else ''}[{self.split}]"


def read_local_config(ref: ModelRef) -> dict | None:
    """config.json of a model when it is on this machine (local dir or HF cache), else None."""
    if ref.path is not None:
        candidate: Path | None = Path(ref.path) / "config.json"
    else:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(ref.repo, "config.json", revision=ref.revision)  # type: ignore[arg-type]
        candidate = Path(hit) if isinstance(hit, str) else None
    if candidate is None or not candidate.is_file():
        return None
    try:
        return json.loads(candidate.read_text())
    except (OSError, ValueError):
        return None


def num_decoder_layers(config: dict) -> int | None:
    """Decoder layers of an LLM config or of the language model inside a VLM config."""
    for cfg in (config, config.get("text_config") or {}, config.get("llm_config") or {}):
        n = cfg.get("num_hidden_layers") or cfg.get("n_layer") or cfg.get("num_layers")
        if isinstance(n, int) and n > 0:
            return n
    return None


# ----------------------------------------------------------------------------------------------
# The recipe (schema 1)


class Override(Frozen):
    """Values for the tensors whose names match ``pattern`` (a regex, searched); first match wins."""

    pattern: str
    weight: NumOrList | None = None
    density: NumOrList | None = None

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"{v!r} is not a regular expression: {e}") from e
        return v


class RecipeModel(Frozen):
    source: ModelRef
    weight: NumOrList
    density: NumOrList | None = None
    overrides: tuple[Override, ...] = ()


class PSRecipe(Frozen):
    method: Literal["linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "slerp"]
    normalize: bool = False
    layer_groups: int = Field(1, ge=1)
    models: tuple[RecipeModel, ...] = Field(min_length=1)


def _a_tag(v: Any) -> str:
    return "ps" if isinstance(v, str) else "model"


#: ``ps`` (the parameter-space result) or a model reference.
PsOrRef = Annotated[
    Union[Annotated[Literal["ps"], Tag("ps")], Annotated[ModelRef, Tag("model")]],  # noqa: UP007
    Discriminator(_a_tag),
]


class DFSRecipe(Frozen):
    a: PsOrRef
    b: PsOrRef
    path: tuple[tuple[Literal["a", "b"], Annotated[int, Field(ge=0)]], ...] = Field(min_length=1)
    scales: tuple[Annotated[float, Field(gt=0, allow_inf_nan=False)], ...]


class Recipe(Frozen):
    """One concrete merge. ``evohub merge recipe.yaml --out DIR`` rebuilds it bit-for-bit."""

    evohub_recipe: Literal[1]
    base_model: ModelRef | None = None
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    seed: int = 0
    tokenizer_source: Annotated[
        Literal["base", "a"] | Annotated[int, Field(ge=0)], Field(union_mode="left_to_right")
    ] = "base"
    parameter_space: PSRecipe | None = None
    data_flow_space: DFSRecipe | None = None

    @model_validator(mode="after")
    def _whole(self) -> Recipe:
        problems = list(_recipe_problems(self))
        if problems:
            raise _Invalid(problems)
        return self

    def sources(self) -> list[ModelRef]:
        """Every model the recipe reads, base first, without duplicates."""
        refs: list[ModelRef] = []
        if self.base_model is not None:
            refs.append(self.base_model)
        if self.parameter_space is not None:
            refs += [m.source for m in self.parameter_space.models]
        if self.data_flow_space is not None:
            refs += [r for r in (self.data_flow_space.a, self.data_flow_space.b) if isinstance(r, ModelRef)]
        return list(dict.fromkeys(refs))

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json", exclude_none=True)
        for m in (data.get("parameter_space") or {}).get("models", []):
            if not m.get("overrides"):
                m.pop("overrides", None)  # the common case reads better without "overrides: []"
        return dump_yaml(data)

    @classmethod
    def from_yaml(cls, text: str, filename: str = "<recipe>", base_dir: str | Path = ".") -> Recipe:
        from evohub.yamlio import parse_yaml

        return _validate(cls, parse_yaml(text, filename), base_dir)


def _recipe_problems(r: Recipe) -> Iterator[tuple[Loc, str]]:
    ps, dfs = r.parameter_space, r.data_flow_space
    if ps is None and dfs is None:
        yield (), "a recipe needs 'parameter_space', 'data_flow_space' or both"
    if ps is not None:
        yield from _ps_problems(ps, r.base_model)
    if dfs is not None:
        if len(dfs.scales) != len(dfs.path):
            yield (
                ("data_flow_space", "scales"),
                (f"has {len(dfs.scales)} entries but 'path' has {len(dfs.path)} hops; give one scale per hop"),
            )
        for side in ("a", "b"):
            if getattr(dfs, side) == "ps" and ps is None:
                yield ("data_flow_space", side), "'ps' needs a 'parameter_space' section"
        yield from _dfs_layer_problems(r)
    if r.tokenizer_source == "base" and r.base_model is None:
        yield ("tokenizer_source",), "'base' needs a 'base_model' (or name a source index or 'a')"
    if r.tokenizer_source == "a" and dfs is None:
        yield ("tokenizer_source",), "'a' needs a 'data_flow_space' section"
    if isinstance(r.tokenizer_source, int):
        n = len(ps.models) if ps is not None else 0
        if r.tokenizer_source >= n:
            yield (
                ("tokenizer_source",),
                f"source index {r.tokenizer_source} is out of range (parameter_space has {n} models)",
            )


def _ps_problems(ps: PSRecipe, base: ModelRef | None) -> Iterator[tuple[Loc, str]]:
    at = ("parameter_space",)
    if ps.method in DELTA_METHODS and base is None:
        yield (*at, "method"), f"{ps.method!r} merges task vectors: add a top-level 'base_model'"
    if ps.method == "slerp" and len(ps.models) != 2:
        yield (*at, "models"), f"slerp takes exactly two models, got {len(ps.models)}"
    if ps.method == "linear" and len(ps.models) < 2 and base is None:
        yield (*at, "models"), "linear needs at least two models"
    wlo, whi = SLERP_WEIGHT_DOMAIN if ps.method == "slerp" else WEIGHT_DOMAIN
    G = ps.layer_groups
    for i, m in enumerate(ps.models):
        here = (*at, "models", i)
        values: list[tuple[Loc, str, Any]] = [
            (here, "weight", m.weight),
            (here, "density", m.density),
        ]
        values += [
            ((*here, "overrides", j), k, getattr(o, k))
            for j, o in enumerate(m.overrides)
            for k in ("weight", "density")
        ]
        for loc, key, v in values:
            if v is None:
                if key == "density" and ps.method in DENSITY_METHODS and loc == here:
                    yield (
                        (*loc, key),
                        f"method {ps.method!r} needs a density in [0, 1] for every model",
                    )
                continue
            if key == "density" and ps.method not in DENSITY_METHODS:
                yield (
                    (*loc, key),
                    f"method {ps.method!r} takes no density (only {', '.join(DENSITY_METHODS)})",
                )
                continue
            if isinstance(v, tuple) and len(v) != G:
                yield (
                    (*loc, key),
                    f"has {len(v)} values but layer_groups is {G}; give one number or {G}",
                )
            lo, hi = DENSITY_DOMAIN if key == "density" else (wlo, whi)
            bad = [x for x in _as_list(v) if not lo <= x <= hi]
            if bad:
                yield (*loc, key), f"{bad[0]} is outside [{lo:g}, {hi:g}] for {ps.method}"
    if ps.method == "slerp" and len(ps.models) == 2:
        for g in range(G):
            w = [_as_list(m.weight)[min(g, len(_as_list(m.weight)) - 1)] for m in ps.models]
            if sum(w) <= 0:
                yield (
                    (*at, "models", 1, "weight"),
                    "slerp weights are interpolation shares; their sum must be > 0",
                )
                break
    if base is not None and ps.layer_groups > 1:
        cfg = read_local_config(base)
        n = num_decoder_layers(cfg) if cfg else None
        if n is not None and n < G:
            yield (*at, "layer_groups"), f"{G} groups but the base model has {n} decoder layers"


def _dfs_layer_problems(r: Recipe) -> Iterator[tuple[Loc, str]]:
    dfs = r.data_flow_space
    assert dfs is not None
    for side in ("a", "b"):
        ref = getattr(dfs, side)
        if ref == "ps":
            ps = r.parameter_space
            ref = r.base_model or (ps.models[0].source if ps else None)
        cfg = read_local_config(ref) if isinstance(ref, ModelRef) else None
        n = num_decoder_layers(cfg) if cfg else None
        if n is None:
            continue  # checked again when the model is pulled
        for k, (who, layer) in enumerate(dfs.path):
            if who == side and layer >= n:
                yield (
                    ("data_flow_space", "path", k, 1),
                    f"layer {layer} of model {side!r} does not exist (it has {n} layers)",
                )


# ----------------------------------------------------------------------------------------------
# The job spec


class Source(ModelRef):
    """A model to merge: a Hub repo or a local directory, with a short ``name`` used elsewhere."""

    name: Name | None = None

    @property
    def key(self) -> str:
        """The source's name: ``name``, else the repo's or directory's last part, lowercased."""
        if self.name:
            return self.name
        return Path(self.repo or self.path or "").name.lower()

    def ref(self) -> ModelRef:
        """The plain reference (already validated, so not checked again)."""
        return ModelRef.model_construct(repo=self.repo, revision=self.revision, path=self.path)


class Range(Frozen):
    """Search bounds of one merge parameter: CMA-ES searches [0, 1] and maps it linearly here."""

    bounds: tuple[float, float]

    @field_validator("bounds")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(math.isfinite(x) for x in v):
            raise ValueError("bounds must be finite numbers")
        if v[0] > v[1]:
            raise ValueError(f"lower bound {v[0]:g} is above upper bound {v[1]:g}; write [{v[1]:g}, {v[0]:g}]")
        return v


class Optimizer(Frozen):
    """CMA-ES settings (the paper: x0 0.5, sigma0 1/6, popsize 4 + floor(3 ln n))."""

    algorithm: Literal["cma-es"] = "cma-es"
    x0: float = Field(0.5, ge=0.0, le=1.0, description="start point in the normalised [0, 1] space")
    sigma0: float = Field(1 / 6, gt=0.0, le=1.0)
    popsize: int | None = Field(None, ge=2, description="default 4 + floor(3 ln n)")
    max_evals: int | None = Field(None, gt=0)
    generations: int | None = Field(None, gt=0)
    max_hours: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _budget(self) -> Optimizer:
        if self.max_evals is None and self.generations is None and self.max_hours is None:
            raise ValueError("give a budget: 'max_evals', 'generations' or 'max_hours'")
        return self

    def population(self, dims: int) -> int:
        return self.popsize or 4 + int(3 * math.log(max(dims, 1)))

    def evaluations(self, dims: int) -> int | None:
        """Candidates evaluated, when the budget is by count (min of max_evals and generations)."""
        caps = [c for c in (self.max_evals, self.generations and self.generations * self.population(dims)) if c]
        return min(caps) if caps else None


def _regex(v: str) -> str:
    try:
        re.compile(v)
    except re.error as e:
        raise ValueError(f"{v!r} is not a regular expression: {e}") from e
    return v


class PSSearch(Frozen):
    """Parameter-space search: one (weight, density) per source and layer group, and per source
    for each tensor ``pattern`` (a regex: e.g. embeddings and LM head apart from the layers)."""

    method: Literal["linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "slerp"]
    normalize: bool = False
    layer_groups: int = Field(1, ge=1)
    patterns: tuple[Annotated[str, AfterValidator(_regex)], ...] = ()
    weight: Range = Range(bounds=(0.0, 1.0))
    density: Range | None = None
    optimizer: Optimizer

    def genes_per_group(self) -> int:
        return 2 if self.method in DENSITY_METHODS else 1


class DFSSearch(Frozen):
    """Data-flow-space search over layer paths through models ``a`` and ``b`` (paper: r = 3)."""

    a: str = Field(description="'ps' (the parameter-space result) or a source name")
    b: str = Field(description="a source name")
    repeats: int = Field(3, ge=1, description="r: the M layers of A and B are laid out r times")
    max_path_length: int | None = Field(None, ge=1)
    scales: Range = Range(bounds=(0.5, 2.0))
    parameterization: Literal["matrix", "compact"] = "matrix"
    optimizer: Optimizer


class Fitness(Frozen):
    """What evolution maximises: a task on a fixed data split (and optionally a validation split)."""

    task: Literal["ja-math", "ja-vqa", "lm-loss"]
    data: DataRef
    validation: DataRef | None = None
    limit: int | None = Field(None, gt=0, description="fixed subset size, drawn once from the seed")
    minibatch: int | None = Field(None, gt=0, description="fresh subset of this size per generation")
    backend: Literal["vllm", "hf"] = "vllm"
    max_new_tokens: int | None = Field(
        None, gt=0, description="generation budget; default: the task's protocol (ja-math 1024, ja-vqa 512)"
    )
    batch_size: int | None = Field(None, gt=0)
    prompt: str | None = Field(None, description="ja-math/ja-vqa prompt template with {input}; default: the paper's")
    stop: tuple[str, ...] | None = Field(None, description="ja-math stop strings; default: the paper's")

    @field_validator("prompt")
    @classmethod
    def _has_input(cls, v: str | None) -> str | None:
        if v is not None and "{input}" not in v:
            raise ValueError("the prompt template needs an {input} placeholder")
        return v


def _suite_name(v: str) -> str:
    if v not in EVAL_SUITES and not re.match(r"^lmeval:[\w.-]+$", v):
        near = difflib.get_close_matches(v, EVAL_SUITES, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else f" (known: {', '.join(EVAL_SUITES)}, or lmeval:<task>)"
        raise ValueError(f"unknown suite {v!r}{hint}")
    return v


class Evaluation(Frozen):
    """Held-out evaluation of the winner (and of each source, for the card's comparison)."""

    suites: tuple[Annotated[str, AfterValidator(_suite_name)], ...] = Field(min_length=1)
    compare_sources: bool = True
    backend: Literal["vllm", "hf"] = "vllm"
    data: dict[str, str] = Field(default_factory=dict, description="suite or lm-eval task -> local JSON/JSONL file")
    limit: int | None = Field(None, gt=0)
    max_new_tokens: int | None = Field(
        None, gt=0, description="generation budget; default: each suite's protocol (MGSM-JA 1024, VQA 512)"
    )

    @field_validator("data")
    @classmethod
    def _files_exist(cls, v: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        out = {}
        for name, path in v.items():
            p = (_base_dir(info) / Path(path).expanduser()).resolve()
            if not p.is_file():
                raise ValueError(f"local data file {str(p)!r} for {name!r} does not exist")
            out[name] = str(p)
        return out


class Publish(Frozen):
    """Where the winner is pushed, and how its card is made."""

    repo: RepoId
    private: bool = False
    card: Literal["llm", "vlm"] = "llm"
    language: tuple[str, ...] = ("ja",)
    license: str | None = None


class JobSpec(Frozen):
    """A whole evolution job: sources, search spaces, optimiser budgets, fitness, eval, publish."""

    evohub_job: Literal[1]
    name: Name
    description: str = ""
    seed: int = 0
    nightly: bool = False
    base_model: ModelRef | None = None
    sources: tuple[Source, ...] = Field(min_length=2)
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    tokenizer_source: str = "base"
    parameter_space: PSSearch | None = None
    data_flow_space: DFSSearch | None = None
    fitness: Fitness
    evaluation: Evaluation | None = None
    publish: Publish | None = None

    @model_validator(mode="after")
    def _whole(self) -> JobSpec:
        problems = list(_job_problems(self))
        if problems:
            raise _Invalid(problems)
        return self

    def source(self, name: str) -> Source:
        return next(s for s in self.sources if s.key == name)

    def to_yaml(self) -> str:
        return dump_yaml(self.model_dump(mode="json", exclude_none=True))

    @classmethod
    def from_yaml(cls, text: str, filename: str = "<job>", base_dir: str | Path = ".") -> JobSpec:
        from evohub.yamlio import parse_yaml

        return _validate(cls, parse_yaml(text, filename), base_dir)


def _job_problems(j: JobSpec) -> Iterator[tuple[Loc, str]]:
    names = [s.key for s in j.sources]
    for i, n in enumerate(names):
        if not n:
            yield ("sources", i, "name"), "give this source a name"
        elif names.index(n) != i:
            yield (
                ("sources", i, "name"),
                f"name {n!r} is used by sources[{names.index(n)}] too; give each source a distinct 'name'",
            )
    if n_ps := j.parameter_space:
        if n_ps.method in DELTA_METHODS and j.base_model is None:
            yield (
                ("parameter_space", "method"),
                f"{n_ps.method!r} merges task vectors: add a top-level 'base_model'",
            )
        if n_ps.method == "slerp" and len(j.sources) != 2:
            yield ("sources",), f"slerp takes exactly two sources, got {len(j.sources)}"
        lo, hi = SLERP_WEIGHT_DOMAIN if n_ps.method == "slerp" else WEIGHT_DOMAIN
        if not (lo <= n_ps.weight.bounds[0] and n_ps.weight.bounds[1] <= hi):
            yield (
                ("parameter_space", "weight", "bounds"),
                f"must lie inside [{lo:g}, {hi:g}] for {n_ps.method}",
            )
        if n_ps.density is not None:
            if n_ps.method not in DENSITY_METHODS:
                yield (
                    ("parameter_space", "density"),
                    f"method {n_ps.method!r} takes no density (only {', '.join(DENSITY_METHODS)})",
                )
            elif not (DENSITY_DOMAIN[0] <= n_ps.density.bounds[0] and n_ps.density.bounds[1] <= DENSITY_DOMAIN[1]):
                yield ("parameter_space", "density", "bounds"), "must lie inside [0, 1]"
        elif n_ps.method in DENSITY_METHODS:
            yield (
                ("parameter_space", "density"),
                f"method {n_ps.method!r} evolves a density: add 'density: {{bounds: [0, 1]}}'",
            )
        if j.base_model is not None and n_ps.layer_groups > 1:
            cfg = read_local_config(j.base_model)
            n = num_decoder_layers(cfg) if cfg else None
            if n is not None and n_ps.layer_groups > n:
                yield (
                    ("parameter_space", "layer_groups"),
                    f"{n_ps.layer_groups} groups but the base model has {n} decoder layers",
                )
    if dfs := j.data_flow_space:
        if dfs.a == "ps":
            if j.parameter_space is None:
                yield (
                    ("data_flow_space", "a"),
                    "'ps' needs a 'parameter_space' section to run first",
                )
        elif dfs.a not in names:
            yield ("data_flow_space", "a"), _unknown_name(dfs.a, ["ps", *names])
        if dfs.b not in names:
            yield ("data_flow_space", "b"), _unknown_name(dfs.b, names)
        lo, hi = dfs.scales.bounds
        if not (SCALE_DOMAIN[0] < lo and hi <= SCALE_DOMAIN[1]):
            yield (
                ("data_flow_space", "scales", "bounds"),
                "scales must be > 0 and <= 10 (the fold divides by them)",
            )
    if j.parameter_space is None and j.data_flow_space is None:
        yield (), "a job needs 'parameter_space', 'data_flow_space' or both"
    ts = j.tokenizer_source
    if ts == "base":
        if j.base_model is None:
            yield ("tokenizer_source",), "'base' needs a 'base_model' (or name a source)"
    elif ts not in names:
        yield ("tokenizer_source",), _unknown_name(ts, ["base", *names])
    if j.fitness.task == "lm-loss" and j.fitness.backend != "hf":
        yield ("fitness", "backend"), "lm-loss reads the model's logits: set 'backend: hf'"
    if j.fitness.limit and j.fitness.minibatch and j.fitness.minibatch > j.fitness.limit:
        yield (
            ("fitness", "minibatch"),
            f"{j.fitness.minibatch} is larger than 'limit' ({j.fitness.limit})",
        )


def _unknown_name(v: str, known: list[str]) -> str:
    near = difflib.get_close_matches(v, known, n=1)
    return f"no source named {v!r}" + (f"; did you mean {near[0]!r}?" if near else f" (known: {', '.join(known)})")


# ----------------------------------------------------------------------------------------------
# Loading with line numbers


def unpinned(doc: JobSpec | Recipe) -> Iterator[tuple[Loc, ModelRef | DataRef]]:
    """Every Hub reference whose revision is not a commit sha (resolved and pinned at pull time)."""

    def walk(obj: Any, loc: Loc) -> Iterator[tuple[Loc, ModelRef | DataRef]]:
        if isinstance(obj, ModelRef | DataRef):
            if obj.repo is not None and not is_pinned(obj.revision):
                yield loc, obj
        elif isinstance(obj, BaseModel):
            for name in type(obj).model_fields:
                yield from walk(getattr(obj, name), (*loc, name))
        elif isinstance(obj, tuple):
            for i, item in enumerate(obj):
                yield from walk(item, (*loc, i))

    yield from walk(doc, ())


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
        return f"expected a mapping, got {_short(err.get('input'))}"
    if kind in ("literal_error", "enum"):
        return msg.replace("Input should be", "must be") + f", got {_short(err.get('input'))}"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return msg.replace("Input should be", "expected") + f", got {_short(err.get('input'))}"
    return msg.replace("Input should be", "must be")


def _validate(cls: type[Recipe] | type[JobSpec], doc: YamlDoc, base_dir: str | Path) -> Any:
    if not isinstance(doc.data, dict):
        raise SpecError([f"{doc.filename}:1: (top level): expected a mapping of keys"])
    try:
        return cls.model_validate(doc.data, context={"base_dir": Path(base_dir)})
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
    except _Invalid as e:
        raise SpecError(
            [f"{doc.filename}:{doc.line_of(loc)}: {format_loc(loc)}: {msg}" for loc, msg in e.problems]
        ) from e


def load(path: str | Path) -> JobSpec | Recipe:
    """Load a job spec or a recipe, telling them apart by ``evohub_job`` / ``evohub_recipe``."""
    doc = read_yaml(path)
    base_dir = Path(path).resolve().parent
    if not isinstance(doc.data, dict):
        got = "nothing" if doc.data is None else type(doc.data).__name__
        raise SpecError([f"{path}:1: (top level): expected a mapping of keys, got {got}"])
    if "evohub_recipe" in doc.data:
        return _validate(Recipe, doc, base_dir)
    if "evohub_job" in doc.data:
        return _validate(JobSpec, doc, base_dir)
    raise SpecError(
        [
            f"{path}:1: (top level): not an evohub document; start it with 'evohub_job: 1' (a job spec) or 'evohub_recipe: 1' (a recipe)"
        ]
    )


def load_job(path: str | Path) -> JobSpec:
    doc = load(path)
    if not isinstance(doc, JobSpec):
        raise SpecError([f"{path}:1: (top level): this is a recipe, not a job spec (expected 'evohub_job: 1')"])
    return doc


def load_recipe(path: str | Path) -> Recipe:
    doc = load(path)
    if not isinstance(doc, Recipe):
        raise SpecError([f"{path}:1: (top level): this is a job spec, not a recipe (expected 'evohub_recipe: 1')"])
    return doc


def warnings_for(doc: JobSpec | Recipe, path: str | Path) -> list[str]:
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
