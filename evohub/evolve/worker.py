"""A worker: the inputs of one search stage resident on a device, a scoring model, the fitness data.

A worker is built once (in the driver process, or inside a Ray actor) from a picklable
:class:`WorkerSpec` and then evaluates genotypes: decode → merge in memory (parameter space:
:class:`~evohub.merge.ps.ResidentMerge` writes straight into the scoring model's parameters;
data flow: :class:`~evohub.merge.path.PathExecutor` switches the path over resident layers) →
score on the generation's fitness examples → :class:`~evohub.evolve.search.Outcome`.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from evohub.evolve.search import Outcome


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, as plain data: the run directory and the stage."""

    run_dir: str
    stage: str  # "ps" or "dfs"
    device: str = "cpu"
    threads: int | None = None

    def build(self) -> Worker:
        return Worker(self)


class Worker:
    def __init__(self, spec: WorkerSpec):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from evohub.evolve import stages
        from evohub.merge.io import DTYPES
        from evohub.score.backends.hf import HFBackend
        from evohub.score.data import fixed_subset, load_rows
        from evohub.score.tasks import get_task

        if spec.threads:
            torch.set_num_threads(spec.threads)
        self.spec = spec
        run = stages.RunFiles(Path(spec.run_dir))
        job = run.job()
        self.job = job
        self.genome = stages.genome_for(run, job, spec.stage)
        self.task = get_task(job.fitness.task, job.fitness.prompt, job.fitness.stop)
        self.rows = load_rows(job.fitness.data)
        self.task.check(self.rows)
        self.subset = fixed_subset(len(self.rows), job.fitness.limit, job.seed)
        self._validation: list[dict] | None = None
        dtype = DTYPES[job.dtype]
        device = torch.device(spec.device)
        batch = job.fitness.batch_size or 16
        if spec.stage == "ps":
            from evohub.merge.build import input_refs, open_inputs
            from evohub.merge.ps import ResidentMerge, make_plan

            template = self.genome.decode(self.genome.x0())
            dirs = [run.local_dir(r) for r in input_refs(template)]
            inputs = open_inputs(template, dirs)
            primary_index = make_plan(template.parameter_space, inputs, template.base_model is not None).primary
            primary = dirs[primary_index]
            vlm = inputs[primary_index].vlm  # the output is a VLM: its language model is merged
            tok_dir = stages.tokenizer_dir(run, template, dirs)
            self.merge = ResidentMerge(inputs, template, device=device)
            if job.fitness.backend == "vllm":
                # the engine holds the model; merged tensors are handed to it by name
                from evohub.score.backends.vllm import VLLMBackend

                self.backend = VLLMBackend(primary, dtype=job.dtype, seed=job.seed, tokenizer=str(tok_dir))
                self._apply = lambda recipe: self.backend.load_weights(self.merge.tensors(recipe))
            else:
                from evohub.merge.arch import lm_parameters

                if vlm:
                    from transformers import AutoModelForImageTextToText, AutoProcessor

                    model = AutoModelForImageTextToText.from_pretrained(primary, dtype=dtype).to(device).eval()
                    processor = AutoProcessor.from_pretrained(primary)  # a VLM's tokenizer is its processor's
                    self.backend = HFBackend(model, processor.tokenizer, batch, processor)
                else:
                    model = AutoModelForCausalLM.from_pretrained(primary, dtype=dtype).to(device).eval()
                    self.backend = HFBackend(model, AutoTokenizer.from_pretrained(tok_dir), batch)
                params = lm_parameters(model)
                self._apply = lambda recipe: self.merge.apply(recipe, params)
        else:
            # data-flow paths run over resident layers with the path executor (transformers):
            # a vLLM engine cannot change its number of layers between candidates
            from evohub.merge.path import PathExecutor

            a_dir, b_dir = stages.dfs_dirs(run, job)
            model_a = AutoModelForCausalLM.from_pretrained(a_dir, dtype=dtype).to(device).eval()
            model_b = AutoModelForCausalLM.from_pretrained(b_dir, dtype=dtype).to(device).eval()
            self.executor = PathExecutor(model_a, model_b)
            self.backend = HFBackend(self.executor.model, AutoTokenizer.from_pretrained(a_dir), batch)
            self._apply = lambda recipe: None

    def _examples(self, generation: int, split: str) -> list[dict]:
        from evohub.score.data import load_rows, minibatch

        if split == "validation":
            if self._validation is None:
                assert self.job.fitness.validation is not None
                self._validation = load_rows(self.job.fitness.validation)
                self.task.check(self._validation)
            return self._validation
        idx = minibatch(self.subset, self.job.fitness.minibatch, self.job.seed, generation)
        return [self.rows[i] for i in idx]

    def evaluate(self, genotype: Sequence[float], generation: int, split: str = "fitness") -> Outcome:
        """Score one genotype on the ``split`` examples of ``generation``; errors become outcomes."""
        start = time.perf_counter()
        try:
            if self.spec.stage == "ps":
                self._apply(self.genome.decode(genotype))
            else:
                self.executor.set_path(*self.genome.path(genotype))
            merged = time.perf_counter()
            metrics = self.task.score(
                self.backend,
                self._examples(generation, split),
                max_new_tokens=self.job.fitness.max_new_tokens,
                batch_size=self.job.fitness.batch_size or 16,
            )
            done = time.perf_counter()
            metrics = dict(metrics) | {
                "merge_s": round(merged - start, 4),
                "score_s": round(done - merged, 4),
            }
            return Outcome(float(metrics[self.task.fitness_metric]), metrics, None, done - start)
        except Exception as e:  # a failing candidate must not stop the run: it becomes a row
            last = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
            where = f" ({Path(last.filename).name}:{last.lineno})" if last else ""
            return Outcome(None, {}, f"{type(e).__name__}: {e}{where}", time.perf_counter() - start)
