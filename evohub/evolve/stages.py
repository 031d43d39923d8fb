"""The search stages of a job: parameter space (``ps``) and data-flow space (``dfs``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from evohub.errors import EvohubError
from evohub.evolve.genome import DFSGenome, PSGenome
from evohub.evolve.rundir import RunFiles
from evohub.merge.arch import num_decoder_layers
from evohub.spec import JobSpec, Recipe

__all__ = ["RunFiles", "dfs_dirs", "genome_for", "stages_of", "tokenizer_dir"]


def stages_of(job: JobSpec) -> list[str]:
    return [s for s, part in (("ps", job.parameter_space), ("dfs", job.data_flow_space)) if part is not None]


def genome_for(run: RunFiles, job: JobSpec, stage: str) -> PSGenome | DFSGenome:
    """The genome of ``stage``, over the pinned (resolved) model references of the run."""
    if stage == "ps":
        return PSGenome.for_job(job, pin=run.pinned)
    dfs = job.data_flow_space
    assert dfs is not None
    b = job.source(dfs.b).ref()
    base: Recipe | None = None
    if dfs.a == "ps":
        base = run.stage_recipe("ps")
        if base is None:
            raise EvohubError("the data-flow stage needs the finished parameter-space stage (stages/ps/recipe.yaml)")
        primary = job.base_model or job.sources[0].ref()
        layers_a = num_decoder_layers(run.config(primary)) or 0
        a: object = "ps"
    else:
        a_ref = job.source(dfs.a).ref()
        layers_a = num_decoder_layers(run.config(a_ref)) or 0
        a = run.pinned(a_ref)
    layers_b = num_decoder_layers(run.config(b)) or 0
    return DFSGenome(search=dfs, layers_a=layers_a, layers_b=layers_b, a=a, b=run.pinned(b), base=base,  # type: ignore[arg-type]
                     seed=job.seed, dtype=job.dtype)  # fmt: skip


def dfs_dirs(run: RunFiles, job: JobSpec) -> tuple[Path, Path]:
    """Local directories of the data-flow stage's models A and B."""
    dfs = job.data_flow_space
    assert dfs is not None
    a = run.root / "stages" / "ps" / "model" if dfs.a == "ps" else run.local_dir(job.source(dfs.a).ref())
    return a, run.local_dir(job.source(dfs.b).ref())


def tokenizer_dir(run: RunFiles, recipe: Recipe, dirs: Sequence[Path]) -> Path:
    from evohub.merge.build import tokenizer_dir as for_recipe

    return for_recipe(recipe, dirs)
