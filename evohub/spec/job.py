"""The job spec (``evohub_job: 1``): sources, search spaces, optimiser budgets, fitness, evaluation,
publishing. Pure: the schema and its cross-field rules read only the document and the registries
of the kinds it names (docs/design.md#the-job-spec).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from evohub.errors import UnknownName
from evohub.evolve.estimators import ESTIMATORS
from evohub.evolve.optimizers import OPTIMIZERS
from evohub.merging.methods import METHODS
from evohub.merging.methods.base import DENSITY_DOMAIN, MergeMethod
from evohub.models import KINDS
from evohub.score.backends import BACKENDS
from evohub.score.judges import JUDGES
from evohub.score.suites import find_suite
from evohub.score.tasks import TASKS
from evohub.spec.problems import Invalid, validate_doc
from evohub.spec.recipe import Dtype, MethodName, Vocab, model_count_problem, option_problems
from evohub.spec.refs import (
    DataRef,
    Frozen,
    LocalPath,
    ModelRef,
    Name,
    Range,
    Regex,
    RepoId,
    display_path,
    registered,
    relative_paths,
    source_name,
)
from evohub.spec.yamlio import Loc, dump_yaml, parse_yaml

#: DFS hidden-state scales must be > 0 (the fold divides by them) and at most this.
SCALE_MAX = 10.0

#: the ``fitness`` fields a task may take (``Task.options``), passed to it by name
TASK_OPTIONS = ("prompt", "stop", "loop_span", "judge", "steps", "guidance_scale", "image_size")
#: the lock's name for the image judge's model (docs/design.md#image-fitness)
JUDGE_MODEL = "judge"

Backend = Literal[BACKENDS]  # type: ignore[valid-type]  # the scoring backends: vllm | hf


class Source(ModelRef):
    """A model to merge: a Hub repo or a local directory, with a short ``name`` used elsewhere."""

    name: Name | None = None

    @property
    def key(self) -> str:
        """The source's name: ``name``, else the repo's or directory's last part, lowercased."""
        return self.name or source_name(self)

    def ref(self) -> ModelRef:
        """The plain reference (already validated, so not checked again)."""
        return self.plain()


class JobLora(Source):
    """A LoRA file fused into the merged UNet (``file`` in a Hub repo or a local directory), named
    like a source, at a fixed ``scale`` or one the optimiser searches within ``{bounds: [lo, hi]}``."""

    scale: float | Range = 1.0

    @model_validator(mode="after")
    def _a_file(self) -> JobLora:
        if self.file is None:
            raise ValueError("a LoRA needs its 'file' (the safetensors file in the repo or directory)")
        return self


class Descriptor(Frozen):
    """A quality-diversity descriptor (``map-elites``): a task metric cut into ``bins`` equal cells
    over ``bounds`` (docs/design.md#optimisers)."""

    metric: str
    bounds: tuple[float, float]
    bins: int = Field(10, ge=1, le=1000)

    @field_validator("bounds")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(math.isfinite(x) for x in v) or v[0] >= v[1]:
            raise ValueError("give two finite numbers, the lower first")
        return v


class Optimizer(Frozen):
    """The optimiser and its budget (the paper: CMA-ES, x0 0.5, sigma0 1/6, popsize 4 + ⌊3 ln n⌋).

    The budget is what :class:`evohub.evolve.genome.Budget` counts: ``max_evals`` candidates,
    ``generations``, or ``max_hours`` of evaluation time, whichever ends first.
    """

    algorithm: Annotated[str, registered(OPTIMIZERS)] = "cma-es"
    x0: Annotated[float, Field(ge=0.0, le=1.0)] | tuple[Annotated[float, Field(ge=0.0, le=1.0)], ...] = Field(
        0.5,
        description="start point in the normalised [0, 1] space: one value for every gene, or (parameter "
        "space) one per gene in the genome's order (`evohub plan` names it), e.g. a published recipe's weights",
    )
    sigma0: float = Field(1 / 6, gt=0.0, le=1.0)
    popsize: int | None = Field(None, ge=2, description="default 4 + floor(3 ln n)")
    max_evals: int | None = Field(None, gt=0)
    generations: int | None = Field(None, gt=0)
    max_hours: float | None = Field(None, gt=0)
    #: a multi-objective optimiser's objectives (``nsga2``): the fitness task's metric names, each
    #: maximised, or minimised with a ``-`` prefix (docs/design.md#optimisers)
    objectives: tuple[str, ...] | None = Field(None, description="nsga2: >= 2 task metrics; '-name' minimises")
    #: a multi-objective optimiser's winner rule (``nsga2``): the task metric the final front's
    #: best is picked by ('-' minimises; default: the fitness), then on the validation split
    select: str | None = Field(None, description="nsga2: the metric the winner is picked by on the front")
    #: a quality-diversity optimiser's descriptors (``map-elites``): 1 to 3 task metrics, each cut
    #: into cells (docs/design.md#optimisers)
    descriptors: tuple[Descriptor, ...] | None = Field(None, description="map-elites: 1-3 task metrics cut into cells")
    #: the algorithm's own settings (``OptimizerKind.options``: m2n2's alpha, map-elites' line_sigma)
    options: dict[str, float] | None = None

    @model_validator(mode="after")
    def _budget(self) -> Optimizer:
        if self.max_evals is None and self.generations is None and self.max_hours is None:
            raise ValueError("give a budget: 'max_evals', 'generations' or 'max_hours'")
        return self


class PSSearch(Frozen):
    """Parameter-space search: one (weight, density) per source and layer group, and per source
    for each tensor ``pattern`` (a regex: e.g. embeddings and LM head apart from the layers)."""

    method: MethodName
    normalize: bool = False
    layer_groups: int = Field(1, ge=1)
    patterns: tuple[Regex, ...] = ()
    weight: Range = Range(bounds=(0.0, 1.0))
    density: Range | None = None
    vocab: Vocab = None
    #: the method's fixed scalars (``MergeMethod.options``: DELLA's epsilon, Breadcrumbs' gamma,
    #: TSV's rank), copied into every candidate recipe; None: the method's defaults
    options: dict[str, float] | None = None
    optimizer: Optimizer

    @property
    def kind(self) -> MergeMethod:
        """The method's registry entry."""
        return METHODS.get(self.method)


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

    task: Annotated[str, registered(TASKS)]
    data: DataRef
    validation: DataRef | None = None
    estimator: Annotated[str, registered(ESTIMATORS)] = "full"
    estimator_options: dict[str, float] = Field(
        default_factory=dict, description="the estimator's settings (`evohub list estimators` names them)"
    )
    limit: int | None = Field(None, gt=0, description="fixed subset size, drawn once from the seed")
    minibatch: int | None = Field(None, gt=0, description="fresh subset of this size per generation")
    backend: Backend = "vllm"
    max_new_tokens: int | None = Field(None, gt=0, description="generation budget; default: the task's protocol")
    batch_size: int | None = Field(None, gt=0)
    prompt: str | None = Field(None, description="prompt template with {input}; default: the task's (the paper's)")
    stop: tuple[str, ...] | None = Field(None, description="stop strings; default: the task's (the paper's)")
    loop_span: int | None = Field(
        None, ge=6, description="stop an answer whose last this many tokens repeat one stretch verbatim (three times "
        "or more) and write its loop on to the budget undecoded (docs/design.md#answer-loops); default: decode every token",
    )  # fmt: skip
    draft_tokens: int | None = Field(
        None, ge=1, le=8, description="vLLM: speculative decoding with up to this many tokens a step drafted from "
        "earlier stretches of the prompt and answer, verified in the step (docs/design.md#drafted-answers); the same "
        "greedy answers in fewer steps; default: off",
    )  # fmt: skip
    #: text-to-image: the image judge, denoising steps, guidance scale and image size (pixels)
    judge: Annotated[str, registered(JUDGES)] | None = Field(None, description="text-to-image: the image judge")
    steps: int | None = Field(None, gt=0, description="text-to-image: denoising steps")
    guidance_scale: float | None = Field(None, ge=0, description="text-to-image: classifier-free guidance scale")
    image_size: int | None = Field(None, gt=0, description="text-to-image: square image size in pixels")
    judge_model: ModelRef | None = Field(
        None, description="text-to-image: the judge's model (default: the judge's own Hub repo), pulled and pinned"
    )

    @field_validator("prompt")
    @classmethod
    def _has_input(cls, v: str | None) -> str | None:
        if v is not None and "{input}" not in v:
            raise ValueError("the prompt template needs an {input} placeholder")
        return v


def _suite(v: str) -> str:
    try:
        find_suite(v)
    except UnknownName as e:
        raise ValueError(str(e)) from None
    return v


class Evaluation(Frozen):
    """Held-out evaluation of the winner (and of each source, for the card's comparison)."""

    suites: tuple[Annotated[str, AfterValidator(_suite)], ...] = Field(min_length=1)
    compare_sources: bool = True
    backend: Backend = "vllm"
    data: dict[str, LocalPath] = Field(default_factory=dict, description="suite or lm-eval task -> local JSON/JSONL")
    limit: int | None = Field(None, gt=0)
    max_new_tokens: int | None = Field(None, gt=0, description="generation budget; default: each suite's protocol")
    #: jp-stable's prompt version for ``jp-lmeh`` / ``jcola`` (docs/design.md#jp-lmeh)
    prompt_version: Literal["0.1", "0.2", "0.3"] = "0.3"
    #: the published model whose figures the card sets beside this job's (``EvoLLM-JP-v1-7B``)
    paper_reference: str | None = None

    @model_validator(mode="after")
    def _known_reference(self) -> Evaluation:
        if self.paper_reference is None:
            return self
        known = {m for name in self.suites for m, _, _ in find_suite(name).references}
        if self.paper_reference not in known:
            hint = f"one of {', '.join(sorted(known))}" if known else "no suite here has published figures"
            raise ValueError(
                f"paper_reference {self.paper_reference!r} is not a model the suites have figures for ({hint})"
            )
        return self


class Publish(Frozen):
    """Where the winner is pushed, and how its card is made (``card``: a model kind's template)."""

    repo: RepoId
    private: bool = False
    card: Annotated[str, registered(KINDS)] = "llm"
    language: tuple[str, ...] = ("ja",)
    license: str | None = None
    #: publish the job's local data files (fitness, validation, held-out evaluation) under data/
    #: in the commit, linked from the card; off by default: local data may be private
    include_data: bool = False


class JobSpec(Frozen):
    """A whole evolution job: sources, search spaces, optimiser budgets, fitness, eval, publish."""

    evohub_job: Literal[1]
    name: Name
    description: str = ""
    seed: int = 0
    nightly: bool = False
    base_model: ModelRef | None = None
    sources: tuple[Source, ...] = Field(min_length=2)
    dtype: Dtype = "bfloat16"
    tokenizer_source: str = "base"
    #: a diffusion pipeline's components taken whole from a named source (``text_encoder: jsdxl``;
    #: or ``base``); the UNet is merged (docs/design.md#diffusion-pipelines)
    components: dict[str, str] | None = None
    #: LoRA files fused into the merged UNet, each at a fixed or searched scale (docs/design.md#lora-fusion)
    loras: tuple[JobLora, ...] = ()
    #: a diffusion pipeline's scheduler settings written over its scheduler_config.json, for the
    #: fitness images and the published pipeline (``timestep_spacing: trailing`` for Lightning)
    scheduler: dict[str, str | int | float | bool] | None = None
    #: torch's intra-op threads on the CPU (default: the CPUs free to this process; evohub.threads)
    threads: int | None = Field(None, gt=0)
    parameter_space: PSSearch | None = None
    data_flow_space: DFSSearch | None = None
    fitness: Fitness
    evaluation: Evaluation | None = None
    publish: Publish | None = None

    @model_validator(mode="after")
    def _whole(self) -> JobSpec:
        problems = list(_job_problems(self))
        if problems:
            raise Invalid(problems)
        return self

    def source(self, name: str) -> Source:
        return next(s for s in self.sources if s.key == name)

    def models(self) -> list[tuple[str, ModelRef]]:
        """Every model the job reads, by name: ``base`` (if any), each source, then each LoRA."""
        return (
            ([("base", self.base_model)] if self.base_model else [])
            + [(s.key, s.ref()) for s in self.sources]
            + [(lora.key, lora.ref()) for lora in self.loras]
        )

    def judge_model(self) -> ModelRef | None:
        """The image judge's model, for a task that has a judge: ``fitness.judge_model``, else
        the judge's own Hub repo (unpinned: the lock pins it)."""
        fit = self.fitness
        name = fit.judge or getattr(TASKS.get(fit.task), "default_judge", None)
        if name is None:
            return None
        if fit.judge_model is not None:
            return fit.judge_model
        repo = JUDGES.get(name).repo
        return ModelRef.model_construct(repo=repo, revision=None, path=None, weights=None) if repo else None

    def stages(self) -> list[str]:
        """The search stages, in the order they run: ``ps`` then ``dfs``."""
        return [s for s, part in (("ps", self.parameter_space), ("dfs", self.data_flow_space)) if part is not None]

    def to_yaml(self, relative_to: str | Path | None = None) -> str:
        """The spec as YAML; with ``relative_to`` (the directory it is written to), local paths
        (sources, datasets, evaluation data) are written relative to it."""
        data = self.model_dump(mode="json", exclude_none=True)
        if relative_to is None:
            return dump_yaml(data)
        data = relative_paths(data, relative_to)
        if data.get("evaluation", {}).get("data"):
            data["evaluation"]["data"] = {
                k: display_path(v, relative_to) for k, v in data["evaluation"]["data"].items()
            }
        return dump_yaml(data)

    @classmethod
    def from_yaml(cls, text: str, filename: str = "<job>", base_dir: str | Path = ".") -> JobSpec:
        """Parse and validate a job spec (the schema and its rules; files are checked by ``load``)."""
        return validate_doc(cls, parse_yaml(text, filename), base_dir)


def _job_problems(j: JobSpec) -> Iterator[tuple[Loc, str]]:
    names = [s.key for s in j.sources]
    clashes = False
    for i, n in enumerate(names):
        if not n:
            yield ("sources", i, "name"), "give this source a name"
        elif names.index(n) != i:
            clashes = True
            yield (
                ("sources", i, "name"),
                f"name {n!r} is used by sources[{names.index(n)}] too; give each source a distinct 'name'",
            )
    if clashes:  # what refers to sources by name cannot be checked until the names are distinct
        return
    if j.parameter_space is not None:
        yield from _ps_search_problems(j)
    if dfs := j.data_flow_space:
        if dfs.a == "ps":
            if j.parameter_space is None:
                yield ("data_flow_space", "a"), "'ps' needs a 'parameter_space' section to run first"
        elif dfs.a not in names:
            yield ("data_flow_space", "a"), unknown_source(dfs.a, ["ps", *names])
        if dfs.b not in names:
            yield ("data_flow_space", "b"), unknown_source(dfs.b, names)
        lo, hi = dfs.scales.bounds
        if not (lo > 0 and hi <= SCALE_MAX):
            yield ("data_flow_space", "scales", "bounds"), "scales must be > 0 and <= 10 (the fold divides by them)"
    if j.parameter_space is None and j.data_flow_space is None:
        yield (), "a job needs 'parameter_space', 'data_flow_space' or both"
    ts = j.tokenizer_source
    if ts == "base":
        if j.base_model is None:
            yield ("tokenizer_source",), "'base' needs a 'base_model' (or name a source)"
    elif ts not in names:
        yield ("tokenizer_source",), unknown_source(ts, ["base", *names])
    for comp, src in (j.components or {}).items():
        if comp == "unet":
            yield ("components", comp), "the UNet is what the parameter space merges; it cannot be taken whole"
        elif src == "base" and j.base_model is None:
            yield ("components", comp), "'base' needs a 'base_model' (or name a source)"
        elif src != "base" and src not in names:
            yield ("components", comp), unknown_source(src, ["base", *names])
    if j.scheduler and j.fitness.backend != "diffusion":
        yield ("scheduler",), "scheduler settings apply to a diffusion pipeline: a job scored on 'diffusion'"
    for i, lora in enumerate(j.loras):
        if j.fitness.backend != "diffusion" or j.parameter_space is None or j.data_flow_space is not None:
            yield (
                ("loras", i),
                "LoRAs are fused into a merged diffusion UNet: a parameter_space job scored on 'diffusion'",
            )
            break
        if lora.key in names or lora.key in [x.key for x in j.loras[:i]]:
            yield ("loras", i, "name"), f"name {lora.key!r} is taken; give this LoRA a distinct 'name'"
    yield from _fitness_problems(j)
    for stage, part in (("parameter_space", j.parameter_space), ("data_flow_space", j.data_flow_space)):
        if part is not None:
            yield from _optimizer_problems(j, stage, part.optimizer)


def _optimizer_problems(j: JobSpec, stage: str, opt: Optimizer) -> Iterator[tuple[Loc, str]]:
    """The fields the algorithm does not read, its options, the stages and estimator it needs,
    and the metrics a multi-objective or quality-diversity one ranks on: names the fitness task
    reports (where it declares them), two distinct objectives, one to three descriptors."""
    kind = OPTIMIZERS.get(opt.algorithm)
    for f in ("x0", "sigma0", "popsize", "objectives", "select", "descriptors", "options"):
        # a default value is no mistake: a run's own job.yaml writes every field out
        if f not in kind.fields and getattr(opt, f) != Optimizer.model_fields[f].default:
            reads = ", ".join(repr(x) for x in kind.fields)
            yield (stage, "optimizer", f), f"{opt.algorithm} takes no {f!r} (it reads {reads} and the budget)"
    for msg in kind.problems(opt.options) if "options" in kind.fields else ():
        yield (stage, "optimizer", "options"), msg
    if stage == "data_flow_space" and isinstance(opt.x0, tuple):
        yield (stage, "optimizer", "x0"), "a list of genes applies to parameter_space only; give one value"
    short = {"parameter_space": "ps", "data_flow_space": "dfs"}[stage]
    if short not in kind.stages:
        yield (stage, "optimizer", "algorithm"), f"{opt.algorithm} searches only {', '.join(kind.stages)} stages"
    metrics: list[tuple[Loc, str]] = []
    if "objectives" in kind.fields:
        objs = opt.objectives or ()
        names = [o[1:] if o.startswith("-") else o for o in objs]
        if len(set(names)) < 2:
            yield (
                (stage, "optimizer", "objectives"),
                f"{opt.algorithm} needs at least 2 distinct task metrics, e.g. [acc, ja_rate]",
            )
        metrics += [((stage, "optimizer", "objectives", k), n) for k, n in enumerate(names)]
        if opt.select:
            metrics.append(((stage, "optimizer", "select"), opt.select.removeprefix("-")))
    if "descriptors" in kind.fields:
        ds = opt.descriptors or ()
        if not 1 <= len(ds) <= 3 or len({d.metric for d in ds}) < len(ds):
            yield (
                (stage, "optimizer", "descriptors"),
                f"{opt.algorithm} needs 1 to 3 distinct task metrics, e.g. [{{metric: ja_rate, bounds: [0, 1]}}]",
            )
        metrics += [((stage, "optimizer", "descriptors", k, "metric"), d.metric) for k, d in enumerate(ds)]
    known = getattr(TASKS.get(j.fitness.task), "metrics", None)
    for loc, n in metrics:
        if known is not None and n not in known:
            near = difflib.get_close_matches(n, known, n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"it reports {', '.join(known)}"
            yield loc, f"{j.fitness.task} reports no metric {n!r}; {hint}"
    if metrics and j.fitness.estimator != "full":
        yield (
            ("fitness", "estimator"),
            f"{opt.algorithm} ranks every candidate's metrics on the same items: use the full estimator",
        )
    if kind.item_scores and TASKS.get(j.fitness.task).item_range is None:
        yield ("fitness", "task"), f"{opt.algorithm} shares item scores out, and {j.fitness.task}'s are unbounded"
    if kind.item_scores and (j.fitness.estimator != "full" or j.fitness.minibatch):
        where = ("fitness", "minibatch") if j.fitness.estimator == "full" else ("fitness", "estimator")
        yield where, f"{opt.algorithm} compares candidates item by item: use the full estimator without a minibatch"


def _ps_search_problems(j: JobSpec) -> Iterator[tuple[Loc, str]]:
    ps = j.parameter_space
    assert ps is not None
    m = ps.kind
    if m.base and j.base_model is None:
        yield ("parameter_space", "method"), f"{ps.method!r} merges task vectors: add a top-level 'base_model'"
    if (problem := model_count_problem(m, len(j.sources), "sources")) is not None:
        yield ("sources",), problem
    yield from option_problems(m, ps.options or {})
    if not m.params:
        yield (
            ("parameter_space", "method"),
            f"{ps.method!r} has no per-model values to evolve; use it in a recipe ('evohub merge')",
        )
    lo, hi = m.weight_domain
    if not (lo <= ps.weight.bounds[0] and ps.weight.bounds[1] <= hi):
        yield ("parameter_space", "weight", "bounds"), f"must lie inside [{lo:g}, {hi:g}] for {ps.method}"
    if ps.density is not None:
        if not m.density:
            only = ", ".join(x.name for x in METHODS if x.density)
            yield ("parameter_space", "density"), f"method {ps.method!r} takes no density (only {only})"
        elif not (DENSITY_DOMAIN[0] <= ps.density.bounds[0] and ps.density.bounds[1] <= DENSITY_DOMAIN[1]):
            yield ("parameter_space", "density", "bounds"), "must lie inside [0, 1]"
    elif m.density:
        yield (
            ("parameter_space", "density"),
            f"method {ps.method!r} evolves a density: add 'density: {{bounds: [0, 1]}}'",
        )


def _fitness_problems(j: JobSpec) -> Iterator[tuple[Loc, str]]:
    fit = j.fitness
    task = TASKS.get(fit.task)
    if fit.backend not in task.backends:
        yield (
            ("fitness", "backend"),
            f"{fit.task} runs on {' or '.join(task.backends)}: set 'backend: {task.backends[0]}'",
        )
    for option in (*TASK_OPTIONS, "judge_model"):
        if getattr(fit, option) is not None and option not in task.options:
            yield ("fitness", option), f"{fit.task} takes no {option!r}"
    if fit.draft_tokens and fit.backend != "vllm":
        yield ("fitness", "draft_tokens"), "drafts are vLLM's speculative decoding: set 'backend: vllm'"
    elif fit.draft_tokens and getattr(task, "beams", 1) > 1:
        yield (
            ("fitness", "draft_tokens"),
            f"{fit.task} decodes with {task.beams} beams, and vLLM's beam search does not draft",
        )
    if fit.limit and fit.minibatch and fit.minibatch > fit.limit:
        yield ("fitness", "minibatch"), f"{fit.minibatch} is larger than 'limit' ({fit.limit})"
    yield from _estimator_problems(j, task)


def _estimator_problems(j: JobSpec, task) -> Iterator[tuple[Loc, str]]:
    fit = j.fitness
    est = ESTIMATORS.get(fit.estimator)
    for msg in est.problems(fit.estimator_options):
        yield ("fitness", "estimator_options"), msg
    if est.needs == "binary" and not task.item_binary:
        yield (
            ("fitness", "estimator"),
            f"{fit.estimator} needs right/wrong item scores; {fit.task} scores each item on a scale: use race or full",
        )
    elif est.needs == "bounded" and task.item_range is None:
        yield (
            ("fitness", "estimator"),
            f"{fit.estimator} needs bounded item scores; {fit.task}'s are unbounded: use full",
        )
    if est.audited and fit.minibatch:
        yield (
            ("fitness", "minibatch"),
            f"{fit.estimator} chooses its own items: drop 'minibatch' (use 'limit' for a fixed pool)",
        )
    if est.min_references and j.data_flow_space is not None:
        yield (
            ("fitness", "estimator"),
            f"{fit.estimator} combines the sources' abilities, which a data-flow stage has none of "
            "(the job's fitness section scores every stage): use irt",
        )


def unknown_source(v: str, known: list[str]) -> str:
    near = difflib.get_close_matches(v, known, n=1)
    return f"no source named {v!r}" + (f"; did you mean {near[0]!r}?" if near else f" (known: {', '.join(known)})")
