"""The recipe (schema 1): one concrete merge, which ``evohub merge`` rebuilds bit-for-bit.

Pure: the schema and its cross-field rules read only the document and the merge-method registry
(docs/design.md#the-recipe). Checks against the models themselves (a layer index that must exist)
run when a file is loaded (:mod:`evohub.spec.load`).

    >>> Recipe.from_yaml(recipe.to_yaml()) == recipe     # doctest: +SKIP
    True
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag, model_validator

from evohub.merging.methods import METHODS
from evohub.merging.methods.base import DENSITY_DOMAIN, MergeMethod
from evohub.spec.problems import Invalid, validate_doc
from evohub.spec.refs import Frozen, ModelRef, NumOrList, Regex, as_list, registered, relative_paths
from evohub.spec.yamlio import Loc, dump_yaml, parse_yaml

DTYPES = ("bfloat16", "float16", "float32")
Dtype = Literal["bfloat16", "float16", "float32"]


class Override(Frozen):
    """Values for the tensors whose names match ``pattern`` (a regex, searched); first match wins
    (docs/design.md#overrides)."""

    pattern: Regex
    weight: NumOrList | None = None
    density: NumOrList | None = None


class RecipeModel(Frozen):
    source: ModelRef
    #: None only for a method that takes no weights (``model_stock``)
    weight: NumOrList | None = None
    density: NumOrList | None = None
    overrides: tuple[Override, ...] = ()


MethodName = Annotated[str, registered(METHODS)]


#: ``base``: models whose vocabularies differ merge their embeddings and LM head over the base
#: vocabulary's rows; rows the output's architecture has beyond them are copied from it
#: (docs/design.md#vocabularies). None: vocabularies must be equal.
Vocab = Literal["base"] | None


class PSRecipe(Frozen):
    method: MethodName
    normalize: bool = False
    layer_groups: int = Field(1, ge=1)
    vocab: Vocab = None
    #: method-wide scalars (``MergeMethod.options``: DELLA's epsilon, Breadcrumbs' gamma)
    options: dict[str, float] = Field(default_factory=dict)
    models: tuple[RecipeModel, ...] = Field(min_length=1)

    @property
    def kind(self) -> MergeMethod:
        """The method's registry entry, with this recipe's ``options`` bound."""
        return METHODS.get(self.method).bind(self.options)


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


class RecipeLora(Frozen):
    """One LoRA file (``source.file``) fused into the merged UNet at ``scale``."""

    source: ModelRef
    scale: float

    @model_validator(mode="after")
    def _a_file(self) -> RecipeLora:
        if self.source.file is None:
            raise ValueError("a LoRA's source needs its 'file' (the safetensors file in the repo or directory)")
        return self


class Recipe(Frozen):
    """One concrete merge. ``evohub merge recipe.yaml --out DIR`` rebuilds it bit-for-bit."""

    evohub_recipe: Literal[1]
    base_model: ModelRef | None = None
    dtype: Dtype = "bfloat16"
    seed: int = 0
    tokenizer_source: Annotated[
        Literal["base", "a"] | Annotated[int, Field(ge=0)], Field(union_mode="left_to_right")
    ] = "base"
    parameter_space: PSRecipe | None = None
    data_flow_space: DFSRecipe | None = None
    #: a diffusion pipeline's components taken whole from one input (``text_encoder: 3``: model 3
    #: of parameter_space; ``base``): the UNet is merged, a component not named here comes from the
    #: output's primary model (docs/design.md#diffusion-pipelines)
    components: dict[str, Literal["base"] | Annotated[int, Field(ge=0)]] | None = None
    #: LoRA files fused into the merged UNet, each at its scale (docs/design.md#lora-fusion)
    loras: tuple[RecipeLora, ...] = ()
    #: a diffusion pipeline's scheduler settings written over its scheduler_config.json
    #: (SDXL-Lightning's ``timestep_spacing: trailing``)
    scheduler: dict[str, str | int | float | bool] | None = None

    @model_validator(mode="after")
    def _whole(self) -> Recipe:
        problems = list(_recipe_problems(self))
        if problems:
            raise Invalid(problems)
        return self

    def inputs(self) -> list[ModelRef]:
        """The models a recipe reads, in the order merges index them: the base (if any), the
        parameter-space models in order, then the data-flow models not already listed, then
        each LoRA's file."""
        refs: list[ModelRef] = [self.base_model] if self.base_model else []
        if self.parameter_space is not None:
            refs += [m.source for m in self.parameter_space.models]
        if self.data_flow_space is not None:
            for ref in (self.data_flow_space.a, self.data_flow_space.b):
                if isinstance(ref, ModelRef) and ref not in refs:
                    refs.append(ref)
        return refs + [lora.source for lora in self.loras]

    def sources(self) -> list[ModelRef]:
        """Every model the recipe reads, base first, without duplicates."""
        return list(dict.fromkeys(self.inputs()))

    def to_yaml(self, relative_to: str | Path | None = None) -> str:
        """The recipe as YAML; with ``relative_to`` (the directory it is written to), local paths
        are written relative to it."""
        data = self.model_dump(mode="json", exclude_none=True)
        for m in (data.get("parameter_space") or {}).get("models", []):
            if not m.get("overrides"):
                m.pop("overrides", None)  # the common case reads better without "overrides: []"
        if data.get("parameter_space") is not None and not data["parameter_space"].get("options"):
            data["parameter_space"].pop("options", None)  # and without "options: {}"
        return dump_yaml(relative_paths(data, relative_to) if relative_to is not None else data)

    @classmethod
    def from_yaml(cls, text: str, filename: str = "<recipe>", base_dir: str | Path = ".") -> Recipe:
        """Parse and validate a recipe (the schema and its rules; files are checked by ``load``)."""
        return validate_doc(cls, parse_yaml(text, filename), base_dir)


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
    if r.loras and (r.parameter_space is None or r.data_flow_space is not None):
        yield (
            ("loras",),
            "LoRAs are fused into a merged diffusion UNet: a parameter-space recipe without data_flow_space",
        )
    for name, src in (r.components or {}).items():
        if name == "unet":
            yield ("components", name), "the UNet is what the parameter space merges; it cannot be taken whole"
        elif src == "base" and r.base_model is None:
            yield ("components", name), "'base' needs a 'base_model' (or name a source index)"
        elif isinstance(src, int) and src >= (n := len(ps.models) if ps is not None else 0):
            yield ("components", name), f"source index {src} is out of range (parameter_space has {n} models)"


def model_count_problem(m: MergeMethod, n: int, what: str = "models") -> str | None:
    """Why ``n`` models cannot be merged by ``m`` (None if they can)."""
    lo, hi = m.models
    if hi is not None and lo == hi and n != lo:
        return f"{m.name} takes exactly {lo} {what}, got {n}"
    if n < lo:
        return f"{m.name} needs at least {lo} {what}"
    if hi is not None and n > hi:
        return f"{m.name} takes at most {hi} {what}, got {n}"
    return None


def _ps_problems(ps: PSRecipe, base: ModelRef | None) -> Iterator[tuple[Loc, str]]:
    at = ("parameter_space",)
    m = ps.kind
    if m.base and base is None:
        yield (*at, "method"), f"{ps.method!r} merges task vectors: add a top-level 'base_model'"
    if (problem := model_count_problem(m, len(ps.models))) is not None:
        yield (*at, "models"), problem
    yield from option_problems(m, ps.options)
    G = ps.layer_groups
    for i, model in enumerate(ps.models):
        here = (*at, "models", i)
        values: list[tuple[Loc, str, Any]] = [(here, "weight", model.weight), (here, "density", model.density)]
        values += [
            ((*here, "overrides", j), k, getattr(o, k))
            for j, o in enumerate(model.overrides)
            for k in ("weight", "density")
        ]
        for loc, key, v in values:
            yield from _value_problems(m, G, loc, key, v, top=loc == here)
    if m.shares and len(ps.models) == 2 and all(x.weight is not None for x in ps.models):
        for g in range(G):
            w = [as_list(x.weight)[min(g, len(as_list(x.weight)) - 1)] for x in ps.models]
            if sum(w) <= 0:
                yield (*at, "models", 1, "weight"), f"{m.name} weights are interpolation shares; their sum must be > 0"
                break


def _value_problems(m: MergeMethod, groups: int, loc: Loc, key: str, v: Any, top: bool) -> Iterator[tuple[Loc, str]]:
    """Problems of one weight or density value (a number or one per layer group)."""
    if v is None:
        if key == "density" and m.density and top:
            yield (*loc, key), f"method {m.name!r} needs a density in [0, 1] for every model"
        if key == "weight" and m.weights and top:
            yield (*loc, key), f"method {m.name!r} needs a weight for every model"
        return
    if key == "weight" and not m.weights:
        yield (*loc, key), f"method {m.name!r} takes no weights (it derives its own coefficients)"
        return
    if key == "density" and not m.density:
        yield (*loc, key), f"method {m.name!r} takes no density (only {', '.join(_density_methods())})"
        return
    if isinstance(v, tuple) and len(v) != groups:
        yield (*loc, key), f"has {len(v)} values but layer_groups is {groups}; give one number or {groups}"
    lo, hi = DENSITY_DOMAIN if key == "density" else m.weight_domain
    bad = [x for x in as_list(v) if not lo <= x <= hi]
    if bad:
        yield (*loc, key), f"{bad[0]} is outside [{lo:g}, {hi:g}] for {m.name}"


def option_problems(m: MergeMethod, options: dict[str, float]) -> Iterator[tuple[Loc, str]]:
    """Problems of ``parameter_space.options``: names the method lacks, values outside their domain."""
    known = {o.name: o for o in m.options}
    for name, value in options.items():
        o = known.get(name)
        if o is None:
            has = ", ".join(known) or "none"
            yield ("parameter_space", "options", name), f"method {m.name!r} has no option {name!r} (it has: {has})"
        elif not o.domain[0] <= value <= o.domain[1]:
            yield ("parameter_space", "options", name), f"{value:g} is outside [{o.domain[0]:g}, {o.domain[1]:g}]"


def _density_methods() -> list[str]:
    return [m.name for m in METHODS if m.density]
