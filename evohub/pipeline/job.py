"""Run a whole job in a resumable run directory: pull → evolve each stage → merge the best →
evaluate → publish (docs/design.md#the-flow-of-one-job).

    >>> summary = run_job("jobs/demo.yaml", run_dir="runs/demo", resume=True)   # doctest: +SKIP

Every step writes its output last (a stage's ``recipe.yaml``, the final ``model/``,
``results.json``, ``published.json``), so a resumed run skips what is done and continues what is
not; evolution itself resumes mid-stage from ``candidates.jsonl`` (:mod:`evohub.evolve.search`).
The directory's layout is :class:`~evohub.pipeline.rundir.RunDir`'s.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from evohub.errors import RunError, SpecError
from evohub.evolve.search import Log, recipe_hash
from evohub.files import write_json
from evohub.merging.build import merge_to_disk
from evohub.pipeline import publish as publishing
from evohub.pipeline.compare import evaluate_run
from evohub.pipeline.pull import pull
from evohub.pipeline.report import StageSummary, plot_fitness, plot_front, stage_matrices, stage_summary
from evohub.pipeline.rundir import RunDir
from evohub.pipeline.stages import evolve_stage, model_dirs, ps_winner_dir
from evohub.spec import JobSpec, Recipe, load_job

log = logging.getLogger("evohub")


@dataclass
class RunSummary:
    run_dir: Path
    recipe: Recipe | None  # None: the run stopped at --max-evals in ``paused``
    model_dir: Path | None
    stages: list[StageSummary] = field(default_factory=list)
    results: dict | None = None
    published: dict | None = None
    #: the stage that this call's ``max_evals`` stopped before its budget (then nothing is final)
    paused: str | None = None


def start_run(spec_path: Path, run_dir: Path, resume: bool) -> tuple[JobSpec, RunDir]:
    """The spec and the run directory it runs in: a new one (its Hub references checked first),
    or (``resume``) the same spec's."""
    spec = load_job(spec_path)
    if spec.threads:  # the job's own thread count (docs/design.md#threads)
        from evohub import threads

        threads.apply(override=spec.threads)
    run = RunDir(run_dir)
    if run.holds_run():
        if not resume:
            raise RunError(f"{run_dir} already holds a run; pass --resume to continue it, or choose another --run-dir")
        if run.job().to_yaml() != spec.to_yaml():
            raise RunError(
                f"{spec_path} differs from the spec {run_dir} was started with ({run.job_path}); use another --run-dir"
            )
    else:
        _check_references(spec, spec_path)
        run_dir.mkdir(parents=True, exist_ok=True)
        run.write_job(spec, spec_path)
    return spec, run


def _stage_one(spec: JobSpec, run: RunDir, stage: str, progress: bool) -> None:
    """Materialise the parameter-space winner as model A of a PS-then-DFS job's second stage."""
    if stage == "dfs" and spec.data_flow_space and spec.data_flow_space.a == "ps":
        ps_winner_dir(run, progress=progress)


def _plot_fronts(spec: JobSpec, run: RunDir, rows: list[dict]) -> None:
    """front.png beside fitness.png: each multi-objective stage's Pareto front, its winner marked."""
    multi = {st: (part.optimizer.objectives, recipe_hash(run.stage_recipe(st)))
             for st, part in (("ps", spec.parameter_space), ("dfs", spec.data_flow_space))
             if part is not None and part.optimizer.objectives}  # fmt: skip
    if multi:
        plot_front(rows, run.front_plot, multi)


def run_job(
    spec_path: str | Path,
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
    """Run (or resume) a job; returns what it produced (docs/design.md#resuming).

    ``max_evals`` caps the candidates this call evaluates per stage (a stage it stops stays
    unfinished: nothing final, nothing published). ``state_repo`` (a Hub dataset repo) gets the
    run state every generation and seeds an empty resumed run. ``evolve=False`` only finishes a
    run whose stages are done. ``publish`` pushes the winner to ``publish.repo`` once.
    """
    spec_path = Path(spec_path)
    run_dir = Path(run_dir) if run_dir else Path("runs") / load_job(spec_path).name
    _restore(run_dir, resume, state_repo, evolve)
    spec, run = start_run(spec_path, run_dir, resume)
    pull(spec, run)
    candidates = Log(run.log_path)

    def pushed(stage: str, generation: int) -> None:
        if state_repo:
            publishing.push_state(run, state_repo, f"evohub: {stage} generation {generation}")

    summaries: list[StageSummary] = []
    final: Recipe | None = None
    for stage in spec.stages():
        started = time.perf_counter()
        final = run.stage_recipe(stage)
        if final is None and not evolve:
            raise RunError(f"stage {stage} of {run.root} is not finished; only a finished run can be completed here")
        if final is None:
            _stage_one(spec, run, stage, progress)  # model A of a data-flow stage, only when it evolves
            final = evolve_stage(spec, run, stage, candidates, max_evals=max_evals, device=device,
                                 ray_actors=ray_actors, progress=progress, on_generation=pushed)  # fmt: skip
        summaries.append(stage_summary(run, stage, candidates.rows))
        summaries[-1].seconds = time.perf_counter() - started
        if final is None:  # this call's cap stopped the stage: nothing after it is final
            plot_fitness(candidates.rows, run.fitness_plot, spec.stages(), stage_matrices(run, spec.stages()))
            log.info("stage %s stopped at the --max-evals cap (%d evaluations so far); --resume continues it",
                     stage, summaries[-1].evaluations)  # fmt: skip
            return RunSummary(run.root, None, None, summaries, paused=stage)
    assert final is not None
    run.write_recipe(final)
    plot_fitness(candidates.rows, run.fitness_plot, spec.stages(), stage_matrices(run, spec.stages()))
    _plot_fronts(spec, run, candidates.rows)
    if not run.model_dir.exists():
        merge_to_disk(final, model_dirs(run, final), run.model_dir, progress=progress)
    results = evaluate_run(spec, run, device) if spec.evaluation else None
    if state_repo:
        publishing.push_state(run, state_repo, "evohub: run finished")
    published = _publish_once(spec, run) if spec.publish is not None and publish else None
    return RunSummary(run.root, final, run.model_dir, summaries, results, published)  # type: ignore[arg-type]


def _check_references(spec: JobSpec, spec_path: Path) -> None:
    """A new run's first step: every Hub reference checked on the Hub, metadata only (what
    ``evohub validate --strict`` checks, unpinned revisions aside: the lock pins them); each
    problem one line (docs/design.md#checked-before-compute)."""
    from evohub.hub.client import offline
    from evohub.spec.load import check_remote

    if offline():
        return
    problems = check_remote(spec, spec_path)
    if problems:
        raise SpecError("\n".join(problems))


def _restore(run_dir: Path, resume: bool, state_repo: str | None, evolve: bool) -> None:
    """Bring a resumed run's state from its Hub repo into an empty run directory; refuse to
    resume nothing, and (``evolve=False``) to finish what is not there."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"{run_dir}: the run directory names a file; choose another --run-dir")
    if resume and state_repo and not RunDir(run_dir).holds_run():
        if publishing.fetch_state(state_repo, run_dir):
            log.info("continuing the run state from %s", state_repo)
        elif not evolve:
            raise RunError(f"{state_repo} holds no run state (or this token cannot read it); nothing to finish")
    if resume and not RunDir(run_dir).holds_run() and not state_repo:
        raise RunError(f"{run_dir} holds no run to resume; start one without --resume")
    if not evolve and not RunDir(run_dir).holds_run():
        raise RunError(f"{run_dir} holds no run to finish")


def _publish_once(spec: JobSpec, run: RunDir) -> dict:
    """Publish the winner to the spec's repo, once: ``published.json`` records where it went."""
    published = run.read_json(run.published_path)
    if published is None:
        assert spec.publish is not None
        done, _ = publishing.publish_run(run, spec.publish.repo, private=spec.publish.private)
        published = {"repo": done.repo_id, "revision": done.revision, "commit": done.commit, "tag": done.tag}
        write_json(run.published_path, published)
    return published  # type: ignore[return-value]
