"""What a job will cost before it runs: search-space size, evaluations, model sizes, memory, disk.

    >>> plan = make_plan(load_job("jobs/evollm-jp.yaml"))     # doctest: +SKIP
    >>> plan.stages[0].dims, plan.stages[0].evaluations
    (6, 1000)

Model sizes come from each source's config.json (a local directory, or the Hub through
:mod:`evohub.hub`), counted exactly by building the model on PyTorch's meta device; dimensions
and budgets are the genomes' (:mod:`evohub.evolve.genome`).

Memory model (weights only; the scoring backend's KV cache comes on top):
- PS in memory: the base and K task vectors stay resident in the job's dtype, plus the resident
  model the candidates are written into: (K + 2) x P x bytes (K + 1 for ``linear``: no base).
- DFS: the layers of A and B stay resident and paths are executed over them: (P_a + P_b) x bytes.
- Streaming merge to disk (host RAM): the largest tensor of each input as stored, the merged
  tensor, and one output shard (the arithmetic runs in cache-sized chunks).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.table import Table

from evohub.errors import SpecError
from evohub.evolve.genome import Budget, Genome, PSGenome, genome_for
from evohub.evolve.optimizers import OPTIMIZERS
from evohub.hub.client import fetch_config, fetch_json, model_info, pipeline_layout
from evohub.hub.pipelines import local_layout, read_json
from evohub.merging.arch import ParamCount, count_parameters, dtype_bytes, read_config, stored_dtype
from evohub.registry import markdown_grid
from evohub.spec import JobSpec, ModelRef

#: Output shard size of ``evohub merge`` (bytes); the streaming writer holds one shard at a time.
SHARD_BYTES = 2 * 1024**3
#: Bytes per candidates.jsonl row (genotype, recipe hash, metrics, timings): a generous estimate.
LOG_ROW_BYTES = 2048


@dataclass
class SourcePlan:
    name: str
    ref: str
    pinned: bool
    model_type: str
    layers: int
    params: int
    per_layer: int
    hidden: int
    vocab: int
    stored_dtype: str
    bytes: int
    #: bytes of K and V one token takes in one decoder layer, in the job's dtype (for the KV cache)
    kv_bytes_per_layer_token: int = 0


@dataclass
class StagePlan:
    name: str
    dims: int
    dims_detail: str
    popsize: int
    evaluations: int | None
    generations: int | None
    max_hours: float | None
    #: the optimiser and what it reads beyond the budget (objectives, descriptors, options)
    optimizer: str = "cma-es"


@dataclass
class ImageFigures:
    """What one fitness image costs: the UNet's FLOPs per denoising step (counted on the meta
    device), the steps, whether guidance doubles the batch, the size."""

    image_size: int
    latent_size: int
    steps: int
    guidance_scale: float
    unet_flops: float
    unet_params: int
    largest_tensor: int


@dataclass
class Plan:
    job: str
    seed: int
    sources: list[SourcePlan]
    stages: list[StagePlan]
    fitness: str
    evaluation: list[str]
    output_params: int
    output_bytes: int
    accelerator_bytes: int
    host_bytes: int
    disk_bytes: int
    notes: list[str] = field(default_factory=list)
    #: a diffusion job: the figures the cost model reads (:class:`ImageFigures`)
    image: ImageFigures | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _text_cfg(config: dict) -> dict:
    return config.get("text_config") or config


def _source_plan(name: str, ref: ModelRef, config: dict, job_dtype: str = "bfloat16") -> SourcePlan:
    counts: ParamCount = count_parameters(config)
    dtype = stored_dtype(config)
    text = _text_cfg(config)
    heads = int(text.get("num_attention_heads") or 1)
    head_dim = int(text.get("head_dim") or (int(text.get("hidden_size") or 0) // heads))
    kv_heads = int(text.get("num_key_value_heads") or heads)
    return SourcePlan(
        name=name,
        ref=ref.display(),
        pinned=ref.pinned,
        model_type=str(config.get("model_type")),
        layers=counts.layers,
        params=counts.total,
        per_layer=counts.per_layer,
        hidden=int(text.get("hidden_size") or 0),
        vocab=int(text.get("vocab_size") or 0),
        stored_dtype=dtype,
        bytes=counts.total * dtype_bytes(dtype),
        kv_bytes_per_layer_token=2 * kv_heads * head_dim * dtype_bytes(job_dtype),
    )


def _config(ref: ModelRef) -> dict:
    if ref.path is not None:
        return read_config(ref.path, ref.display())
    return fetch_config(ref.repo, ref.revision)  # type: ignore[arg-type]


def _stage(name: str, genome: Genome, opt) -> StagePlan:
    budget = Budget.of(opt, genome.dims)
    detail = genome.describe()
    if isinstance(genome, PSGenome):  # the merge operator and its fixed options, before its genes
        ps = genome.search
        opts = {o.name: o.default for o in ps.kind.options} | dict(ps.options or {})
        detail = (
            f"{ps.method}" + (f" ({', '.join(f'{k}={v:g}' for k, v in opts.items())})" if opts else "") + f": {detail}"
        )
    return StagePlan(name=name, dims=genome.dims, dims_detail=detail, popsize=budget.popsize,
                     evaluations=budget.evaluations, generations=budget.generations, max_hours=budget.max_hours,
                     optimizer=_optimizer_line(opt))  # fmt: skip


def _optimizer_line(opt) -> str:
    """``nsga2 (objectives acc, ja_rate)``: the algorithm and the settings it reads."""
    kind = OPTIMIZERS.get(opt.algorithm)
    parts = []
    if "objectives" in kind.fields and opt.objectives:
        parts.append("objectives " + ", ".join(opt.objectives))
    if "descriptors" in kind.fields and opt.descriptors:
        parts.append("descriptors " + ", ".join(f"{d.metric} ({d.bins} bins)" for d in opt.descriptors))
    if kind.options:
        parts.append(", ".join(f"{k}={v:g}" for k, v in kind.settings(opt.options).items()))
    return opt.algorithm + (f" ({'; '.join(parts)})" if parts else "")


def _fitness_line(spec: JobSpec) -> str:
    fit = spec.fitness
    fitness = f"{fit.task} on {fit.data.display()}"
    if fit.limit:
        fitness += f", fixed subset of {fit.limit}"
    if fit.minibatch:
        fitness += f", minibatch {fit.minibatch} per generation"
    if fit.validation:
        fitness += f"; finalists re-scored on {fit.validation.display()}, the best on both pooled wins"
    return fitness


def make_plan(spec: JobSpec, configs: dict[str, dict] | None = None, layouts: dict | None = None) -> Plan:
    """Plan ``spec``; ``configs`` maps source names ('base' too) to config dicts (fetched if absent);
    a diffusion job's ``layouts`` map them to (model_index.json or None, unet/config.json, weight
    files with sizes), as :func:`~evohub.hub.client.pipeline_layout` reads them (fetched if absent),
    with ``vae_scale`` the VAE's downsampling factor (8 for SDXL; read from the primary if absent)."""
    if spec.fitness.backend == "diffusion":
        return _pipeline_plan(spec, dict(layouts or {}))
    refs = spec.models()
    configs = dict(configs or {})
    for name, ref in refs:
        if name not in configs:
            configs[name] = _config(ref)
    sources = [_source_plan(name, ref, configs[name], spec.dtype) for name, ref in refs]
    by_name = {s.name: s for s in sources}
    by_ref = {ref: by_name[name] for name, ref in refs}
    b = dtype_bytes(spec.dtype)
    stages: list[StagePlan] = []
    notes: list[str] = []
    accel = extra_disk = 0
    # The merged model has the architecture of the largest source (a VLM holds the LLM it merges).
    out = max((by_name[s.key] for s in spec.sources), key=lambda s: s.params)
    out_params = out.params
    layers = lambda ref: by_ref[ref].layers  # noqa: E731
    if (ps := spec.parameter_space) is not None:
        stages.append(_stage("parameter_space", genome_for(spec, "ps", layers), ps.optimizer))
        accel = (len(spec.sources) + (2 if ps.kind.base else 1)) * out_params * b  # base + K task vectors + resident
    if (dfs := spec.data_flow_space) is not None:
        genome = genome_for(spec, "dfs", layers)
        stages.append(_stage("data_flow_space", genome, dfs.optimizer))
        a, bsrc = (out if dfs.a == "ps" else by_name[dfs.a]), by_name[dfs.b]
        hops = genome.max_hops  # type: ignore[union-attr]
        out_params = a.params - a.layers * a.per_layer + hops * max(a.per_layer, bsrc.per_layer)
        accel = max(accel, (a.params + bsrc.params) * b)
        if dfs.a == "ps":
            extra_disk += a.params * b  # stage 1's merged model, kept in the run dir
        notes.append(f"DFS output is at most {hops} layers (every slot on); typical paths are shorter")
    K = len(spec.sources)
    largest_tensor = max(max(s.vocab * s.hidden, s.per_layer // 4) for s in sources)
    stored = max(dtype_bytes(s.stored_dtype) for s in sources)
    host = (K + 1) * largest_tensor * stored + largest_tensor * b + min(SHARD_BYTES, out_params * b)
    evals = sum(s.evaluations or 0 for s in stages)
    disk = sum(s.bytes for s in sources) + out_params * b + extra_disk + evals * LOG_ROW_BYTES
    notes.append("accelerator memory counts weights only; the scoring backend's KV cache comes on top")
    if any(not s.pinned for s in sources):
        notes.append("unpinned sources are resolved to commits at pull time (job.lock.yaml)")
    if any(s.max_hours for s in stages):
        notes.append("a stage has a wall-time budget: its evaluation count is known only at run time")
    return Plan(job=spec.name, seed=spec.seed, sources=sources, stages=stages, fitness=_fitness_line(spec),
                evaluation=list(spec.evaluation.suites) if spec.evaluation else [], output_params=out_params,
                output_bytes=out_params * b, accelerator_bytes=accel, host_bytes=host, disk_bytes=disk,
                notes=notes)  # fmt: skip


def _layout(ref: ModelRef):
    if ref.path is not None:
        return local_layout(Path(ref.path))
    return pipeline_layout(ref.repo, ref.revision)  # type: ignore[arg-type]


def _vae_scale(ref: ModelRef) -> int:
    """The VAE's downsampling factor (8 for SDXL): 2 ** (its blocks - 1)."""
    cfg = (
        read_json(Path(ref.path) / "vae" / "config.json")
        if ref.path
        else fetch_json(ref.repo, ref.revision, "vae/config.json")
    )  # type: ignore[arg-type]
    return 2 ** (len(cfg.get("block_out_channels") or [0] * 4) - 1)


def _file_size(ref: ModelRef) -> int:
    """The size of a LoRA's one file (``ref.file``), local or from the Hub's listing."""
    if ref.path is not None:
        return (Path(ref.path) / ref.file).stat().st_size  # type: ignore[operator]
    info = model_info(ref.repo, ref.revision, files=True)  # type: ignore[arg-type]
    return next((f.size or 0 for f in info.siblings or [] if f.rfilename == ref.file), 0)


def _pipeline_sources(spec: JobSpec, latent: int, layouts: dict) -> tuple[list[SourcePlan], dict]:
    """Each model's row (a LoRA: its file), and each distinct UNet config's figures
    (:func:`~evohub.merging.diffusion.unet_figures`), by the config's JSON."""
    from evohub.hub.pipelines import UNET
    from evohub.merging.diffusion import unet_figures

    figures: dict[str, tuple[int, int, float]] = {}
    sources = []
    for name, ref in spec.models():
        if ref.file is not None:
            sources.append(SourcePlan(name=name, ref=f"{ref.display()} {ref.file}", pinned=ref.pinned, model_type="LoRA",
                                      layers=0, params=0, per_layer=0, hidden=0, vocab=0, stored_dtype="-",
                                      bytes=layouts[name]))  # fmt: skip
            continue
        index, unet_cfg, files = layouts[name]
        key = json.dumps(unet_cfg, sort_keys=True)
        if key not in figures:
            figures[key] = unet_figures(unet_cfg, latent)
        params = figures[key][0]
        unet_bytes = sum(size for _, size in files.get(UNET, []))
        cls = index.get("_class_name") if index else "UNet2DConditionModel (UNet alone)"
        sources.append(SourcePlan(name=name, ref=ref.display(), pinned=ref.pinned,
                                  model_type=cls if isinstance(cls, str) else ".".join(map(str, cls)), layers=0,
                                  params=params, per_layer=0, hidden=0, vocab=0,
                                  stored_dtype="float16" if unet_bytes < 3 * params else "float32",
                                  bytes=sum(size for fs in files.values() for _, size in fs)))  # fmt: skip
    return sources, figures


def _pipeline_plan(spec: JobSpec, given: dict) -> Plan:
    """A diffusion job's plan (docs/design.md#diffusion-pipelines): each source's UNet counted on
    the meta device from its config, its files from the listing (the variant a pull fetches).

    Memory: a fitness worker holds the K inputs' UNets and the pipeline's own UNet in the job's
    dtype, plus the other components (text encoders, VAE) as stored; merging to disk streams one
    tensor at a time from every input, so host memory is bounded by K + 1 copies of the largest
    tensor as stored, the merged one in the job's dtype, and one output shard."""
    from evohub.hub.pipelines import UNET
    from evohub.score.tasks import get_task
    from evohub.spec.job import TASK_OPTIONS

    vae_scale = given.pop("vae_scale", None)
    # a pipeline or UNet: its layout; a LoRA: its file's size
    layouts = {name: given.get(name) or (_file_size(ref) if ref.file else _layout(ref)) for name, ref in spec.models()}
    fit = spec.fitness
    task = get_task(fit.task, **{k: getattr(fit, k) for k in TASK_OPTIONS})
    b = dtype_bytes(spec.dtype)
    primary = next((n for n, layout in layouts.items() if isinstance(layout, tuple) and layout[0] is not None), None)
    if primary is None:
        raise SpecError("no source is a whole pipeline (model_index.json): a UNet alone cannot give the rest")
    latent = task.size // (vae_scale or _vae_scale(dict(spec.models())[primary]))
    sources, figures = _pipeline_sources(spec, latent, layouts)
    params, largest, flops = figures[json.dumps(layouts[primary][1], sort_keys=True)]
    others = sum(size for folder, fs in layouts[primary][2].items() if folder != UNET for _, size in fs)  # type: ignore[index]
    K = len(spec.sources) + (1 if spec.base_model else 0)
    ps = spec.parameter_space
    stages = [_stage("parameter_space", genome_for(spec, "ps", lambda ref: 0), ps.optimizer)] if ps else []
    stored = max(dtype_bytes(s.stored_dtype) for s in sources if s.model_type != "LoRA")
    host = (K + 1) * largest * stored + largest * b + min(SHARD_BYTES, params * b)
    evals = sum(s.evaluations or 0 for s in stages)
    notes = [
        f"accelerator memory: {K} resident UNets and the pipeline's own in {spec.dtype}, its text encoders and "
        f"VAE as stored ({human_bytes(others)}); the activations of a batch of {fit.batch_size or 4} images at "
        f"{task.size}x{task.size} come on top",
        f"merging streams one tensor at a time: host memory stays under {human_bytes(host)} "
        f"({K} inputs + 1 of the largest tensor, {human_count(largest)} elements, as stored, and one "
        f"output shard of at most {human_bytes(SHARD_BYTES)})",
        f"one image: {task.steps} steps x {flops / 1e12:.2f} TFLOPs of UNet at {latent}x{latent} latents"
        + (" x 2 (classifier-free guidance)" if task.guidance > 1 else ""),
    ]
    if any(not s.pinned for s in sources):
        notes.append("unpinned sources are resolved to commits at pull time (job.lock.yaml)")
    return Plan(job=spec.name, seed=spec.seed, sources=sources, stages=stages, fitness=_fitness_line(spec),
                evaluation=list(spec.evaluation.suites) if spec.evaluation else [], output_params=params,
                output_bytes=params * b + others, accelerator_bytes=(K + 1) * params * b + others, host_bytes=host,
                disk_bytes=sum(s.bytes for s in sources) + params * b + others + evals * LOG_ROW_BYTES, notes=notes,
                image=ImageFigures(task.size, latent, task.steps, task.guidance, flops, params, largest))  # fmt: skip


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def human_count(n: float) -> str:
    for unit in ("", "K", "M", "B"):
        if abs(n) < 1000 or unit == "B":
            return f"{n:.0f}" if unit == "" else f"{n:.2f}{unit}"
        n /= 1000
    raise AssertionError("unreachable")


def render(plan: Plan, console) -> None:
    """Show the plan as tables on a rich ``console``."""
    console.print(f"[bold]job[/bold] {plan.job}  (seed {plan.seed})")
    t = Table("source", "ref", "type", "layers", "params", "stored", "size", title="sources")
    for s in plan.sources:
        ref = s.ref + ("" if s.pinned else " (unpinned)")
        t.add_row(
            s.name,
            ref,
            s.model_type,
            str(s.layers),
            human_count(s.params),
            s.stored_dtype,
            human_bytes(s.bytes),
        )
    console.print(t)
    t = Table("stage", "optimiser", "dims", "popsize", "evaluations", "generations", title="search")
    for st in plan.stages:
        evals = str(st.evaluations) if st.evaluations else "-"
        if st.max_hours:
            evals += f" (or {st.max_hours:g} h)"
        t.add_row(st.name, st.optimizer, str(st.dims), str(st.popsize), evals, str(st.generations or "-"))
    console.print(t)
    for st in plan.stages:
        console.print(f"  {st.name}: {st.dims_detail}")
    t = Table("resource", "estimate", title="resources")
    t.add_row("fitness", plan.fitness)
    t.add_row("evaluation", ", ".join(plan.evaluation) or "-")
    t.add_row(
        "output model",
        f"{human_count(plan.output_params)} params, {human_bytes(plan.output_bytes)}",
    )
    t.add_row("accelerator memory / worker", human_bytes(plan.accelerator_bytes))
    t.add_row("host memory (merge to disk)", human_bytes(plan.host_bytes))
    t.add_row("disk (downloads + output + run dir)", human_bytes(plan.disk_bytes))
    console.print(t)
    for n in plan.notes:
        console.print(f"note: {n}")


def render_markdown(plan: Plan) -> str:
    """The plan as Markdown (for a CI job summary or a pull-request comment)."""
    sources = [[s.name, f"`{s.ref}`" + ("" if s.pinned else " (unpinned)"), s.model_type, str(s.layers),
                human_count(s.params), human_bytes(s.bytes)] for s in plan.sources]  # fmt: skip
    stages = [[st.name, str(st.dims), st.dims_detail, str(st.popsize),
               str(st.evaluations or "-") + (f" (or {st.max_hours:g} h)" if st.max_hours else ""),
               str(st.generations or "-")] for st in plan.stages]  # fmt: skip
    lines = [
        f"### `{plan.job}` (seed {plan.seed})",
        "",
        *markdown_grid(["source", "ref", "type", "layers", "params", "size"], sources),
        "",
        *markdown_grid(["stage", "dims", "search space", "popsize", "evaluations", "generations"], stages),
        "",
        f"- fitness: {plan.fitness}",
        f"- evaluation: {', '.join(plan.evaluation) or '-'}",
        f"- output model: {human_count(plan.output_params)} params, {human_bytes(plan.output_bytes)}",
        f"- accelerator memory per worker (weights): {human_bytes(plan.accelerator_bytes)}",
        f"- host memory (merge to disk): {human_bytes(plan.host_bytes)}",
        f"- disk: {human_bytes(plan.disk_bytes)}",
    ]
    lines += [f"- note: {n}" for n in plan.notes]
    return "\n".join(lines) + "\n"
