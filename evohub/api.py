"""The public API: what ``import evohub`` offers, and what the ``evohub`` command itself calls.

    >>> import evohub
    >>> job = evohub.load_job("jobs/demo.yaml")                          # doctest: +SKIP
    >>> summary = evohub.run("jobs/demo.yaml", run_dir="runs/demo")      # doctest: +SKIP
    >>> evohub.merge("runs/demo/recipe.yaml", "merged/")                  # doctest: +SKIP
    >>> evohub.evaluate("merged/", ["mgsm-ja"], data={"mgsm-ja": "mgsm.jsonl"})   # doctest: +SKIP
    >>> evohub.publish("runs/demo", "me/EvoLLM-JP", dry_run=True)        # doctest: +SKIP

Each function composes the stages (docs/design.md#layout); errors a user can fix are
:class:`~evohub.errors.EvohubError` subclasses with one-line messages.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from evohub.spec import JobSpec, Recipe, load_job, load_recipe

if TYPE_CHECKING:
    from evohub.hub.commit import Published
    from evohub.pipeline.job import RunSummary
    from evohub.pipeline.plan import Plan

__all__ = ["evaluate", "load_job", "load_recipe", "merge", "plan", "publish", "run"]


def plan(job: JobSpec | str | Path) -> Plan:
    """What ``job`` will cost: search-space sizes, evaluations, model sizes, memory, disk."""
    from evohub.pipeline.plan import make_plan

    return make_plan(job if isinstance(job, JobSpec) else load_job(job))


def merge(
    recipe: Recipe | str | Path,
    out: str | Path,
    *,
    device: str = "cpu",
    shard_bytes: int = 2 << 30,
    force: bool = False,
    progress: bool = False,
) -> Path:
    """Build the model ``recipe`` describes into ``out`` (Hub sources are pulled, pinned)."""
    from evohub.merging.build import merge_to_disk
    from evohub.pipeline.pull import local_dir

    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    dirs = [local_dir(ref) for ref in recipe.inputs()]
    return merge_to_disk(recipe, dirs, out, device=device, shard_bytes=shard_bytes, force=force, progress=progress)


def run(
    job: str | Path,
    run_dir: str | Path | None = None,
    *,
    resume: bool = False,
    max_evals: int | None = None,
    device: str = "cpu",
    ray_actors: int | None = None,
    progress: bool = True,
    publish: bool = True,
    state_repo: str | None = None,
    evolve: bool = True,
) -> RunSummary:
    """Run (or ``resume``) a job spec in ``run_dir`` (default ``runs/<name>``): pull, evolve each
    stage, merge the best, evaluate, publish (see :func:`evohub.pipeline.job.run_job`)."""
    from evohub.pipeline.job import run_job

    return run_job(job, run_dir, resume=resume, max_evals=max_evals, device=device, ray_actors=ray_actors,
                   progress=progress, publish=publish, state_repo=state_repo, evolve=evolve)  # fmt: skip


def evaluate(model_dir: str | Path, suites: list[str], **options) -> dict:
    """A model directory on evaluation suites → results (see :func:`evohub.score.evaluate.evaluate`)."""
    from evohub.score.evaluate import evaluate as run_suites

    return run_suites(model_dir, suites, **options)


def publish(
    run_dir: str | Path,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool = False,
    force: bool = False,
    dry_run: bool = False,
) -> tuple[Published, str]:
    """A finished run as one tagged Hub commit; returns what was published and the card text."""
    from evohub.pipeline.publish import publish_run
    from evohub.pipeline.rundir import RunDir

    return publish_run(RunDir(run_dir), repo_id, revision=revision, private=private, force=force, dry_run=dry_run)
