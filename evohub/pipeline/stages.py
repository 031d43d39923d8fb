"""One search stage of a run: its genome, its workers, the search, the choice of its winner.

    >>> winner = evolve_stage(spec, run, "ps", log, device="cpu")     # doctest: +SKIP

The stage's winner is written to ``stages/<stage>/recipe.yaml`` last, so a resumed run skips a
finished stage and continues an unfinished one from its log.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

from evohub.errors import RunError
from evohub.evolve.estimators.full import fixed_subset
from evohub.evolve.genome import Budget, Genome, genome_for
from evohub.evolve.matrix import COST_FIELDS, ScoreMatrix, totals
from evohub.evolve.pool import InProcessPool, RayPool
from evohub.evolve.search import Candidate, Evaluator, Log, Outcome, Scoring, distinct_best, run_stage
from evohub.evolve.worker import WorkerSpec
from evohub.files import write_json
from evohub.merging.arch import num_decoder_layers
from evohub.merging.build import merge_to_disk, tokenizer_dir
from evohub.merging.diffusion import UNET, is_pipeline
from evohub.pipeline.gpu import sources_fit
from evohub.pipeline.plan import human_count
from evohub.pipeline.rundir import RunDir
from evohub.progress import bar as progress_bar
from evohub.score.data import load_rows
from evohub.score.tasks import TASKS
from evohub.spec import JobSpec, Recipe

logger = logging.getLogger("evohub")

VALIDATE_TOP = 5  # candidates re-scored on the validation split at the end of a stage


def stage_genome(job: JobSpec, run: RunDir, stage: str) -> Genome:
    """The genome of ``stage`` over the run's pinned models (a DFS stage after PS decodes on
    top of the finished parameter-space recipe)."""
    stage1 = None
    if stage == "dfs" and job.data_flow_space and job.data_flow_space.a == "ps":
        stage1 = run.stage_recipe("ps")
        if stage1 is None:
            raise RunError("the data-flow stage needs the finished parameter-space stage (stages/ps/recipe.yaml)")
    return genome_for(job, stage, lambda ref: num_decoder_layers(run.config(ref)) or 0, run.pinned, stage1)


def worker_spec(job: JobSpec, run: RunDir, stage: str, device: str = "cpu", threads: int | None = None) -> WorkerSpec:
    """What a worker of ``stage`` needs: the genome, the fitness section, its models' directories."""
    genome = stage_genome(job, run, stage)
    judge = job.judge_model()
    common = {"genome": genome, "fitness": job.fitness, "seed": job.seed, "dtype": job.dtype, "device": device,
              "threads": threads, "judge_dir": str(run.local_dir(judge)) if judge else None}  # fmt: skip
    if stage == "ps":
        template = genome.decode(genome.x0())
        dirs = [run.local_dir(ref) for ref in template.inputs()]
        home = _resident_device(dirs, device)
        return WorkerSpec("ps", model_dirs=tuple(map(str, dirs)), tokenizer_dir=str(tokenizer_dir(template, dirs)),
                          resident_device=home, **common)  # fmt: skip
    dfs = job.data_flow_space
    assert dfs is not None
    a = run.stage_model_dir("ps") if dfs.a == "ps" else run.local_dir(job.source(dfs.a).ref())
    return WorkerSpec("dfs", model_dirs=(str(a), str(run.local_dir(job.source(dfs.b).ref()))), **common)


def _resident_device(dirs: list[Path], device: str) -> str | None:
    """Where a parameter-space worker keeps its inputs: on the GPU when they fit beside the
    scoring engine, else in pinned host memory (docs/design.md#gpu-memory)."""
    if not device.startswith("cuda"):
        return None
    sizes = [sum(p.stat().st_size for p in (d / UNET if is_pipeline(d) else d).glob("*.safetensors")) for d in dirs]
    return None if sources_fit(sum(sizes), max(sizes), device) else "cpu"


def scoring_for(job: JobSpec, run: RunDir, stage: str, genome: Genome) -> Scoring:
    """How ``stage`` scores its candidates: the job's estimator and options, the item pool (every
    fitness row, or the ``limit`` subset), the task's item range (and whether items score 0 or 1), the
    reference models."""
    fit = job.fitness
    n = len(load_rows(fit.data))
    names = {None: "base"} | {k: s.name for k, s in enumerate(job.sources)}
    task = TASKS.get(fit.task)
    return Scoring(estimator=fit.estimator, options=dict(fit.estimator_options), minibatch=fit.minibatch,
                   pool=tuple(fixed_subset(n, fit.limit, job.seed)), item_range=task.item_range,
                   item_binary=task.item_binary,
                   references=tuple((names[k], r) for k, r in genome.references()),
                   matrix=run.scores_path(stage))  # fmt: skip


def choose_on_validation(pool: Evaluator, run: RunDir, stage: str, log: Log, genome: Genome,
                         ranked: list[dict] | None = None, front: list[dict] | None = None,
                         items: tuple[int, ...] | None = None,
                         recommended: tuple[float, ...] | None = None) -> dict:  # fmt: skip
    """Re-score the stage's finalists (:func:`_best_rows`, and its start point and the optimiser's
    ``recommended`` point, CMA-ES's final mean: :func:`_own_points`) on the validation split; the
    winner is :func:`pick_winner`'s. The scores are kept in ``validation.json``, so this runs once."""
    path = run.validation_path(stage)
    rows = run.read_json(path)
    if rows is None:
        top = _best_rows(log, stage, ranked, front, items)
        own = _own_points(pool, stage, genome, items, recommended)
        top += [r for r, _ in own]
        cands = [Candidate(stage, r["generation"], r["index"], tuple(r["genotype"]), genome.decode(r["genotype"]),
                           "validation") for r in top]  # fmt: skip
        scores: dict = {}
        pool.evaluate(cands, lambda c, out: scores.__setitem__(c.key, out))
        rows = []
        for r in top:
            outs = [scores[(stage, r["generation"], r["index"])]]
            if r["generation"] < 0:
                outs.append(own[r["index"]][1])  # its fitness call is part of the choice's cost too
            cost = {f: sum(o.cost.get(f, 0) for o in outs) for f in COST_FIELDS if f != "seconds"}
            cost["seconds"] = round(sum(o.seconds for o in outs), 4)
            rows.append(r | {"validation": outs[0].fitness, "validation_items": outs[0].cost.get("items", 0)} | cost)
        run.stage_dir(stage)
        write_json(path, rows)
    return pick_winner(rows, f"stage {stage}: no candidate could be scored on the validation split ({path})")


def _best_rows(log: Log, stage: str, ranked: list[dict] | None, front: list[dict] | None,
               items: tuple[int, ...] | None) -> list[dict]:  # fmt: skip
    """The stage's 5 best distinct recipes, each with ``fitness_items``: an audited estimator's
    ``ranked`` rows by their full-set scores (``full``; docs/design.md#fitness-estimators), a
    multi-objective optimiser's final ``front`` in its winner rule's order (docs/design.md#optimisers),
    otherwise the log's rows by fitness."""
    if ranked is not None:
        ok = [r | {"estimate": r["fitness"], "fitness": r["full"], "fitness_items": r["full_items"]} for r in ranked]
    else:
        # a fitness counts as evidence only when it is over the whole pool (``items``): a minibatch
        # estimate, the best of many noisy ones, is optimistic by more than its items can say
        whole = len(items) if items is not None else 0
        ok = [r | {"fitness_items": r.get("items", 0) if r.get("items", 0) >= whole else 0}
              for r in (front if front is not None else log.stage_rows(stage))
              if r["fitness"] is not None and math.isfinite(r["fitness"])]  # fmt: skip
    order = ok if front is not None else sorted(ok, key=lambda r: (-r["fitness"], r["generation"], r["index"]))
    return distinct_best(order, VALIDATE_TOP)


def _own_points(pool: Evaluator, stage: str, genome: Genome, items: tuple[int, ...] | None,
                recommended: tuple[float, ...] | None) -> list[tuple[dict, Outcome]]:  # fmt: skip
    """The start point (for a data-flow stage: model A itself), so a stage never replaces what it
    started from with something that scores worse, and the optimiser's own answer, which under
    noisy fitness often beats its best sample: each scored on the fitness ``items`` (the pool), as
    (finalist row with a full-set fitness, the call's outcome), at generation -1, index 0 and 1."""
    points = {"x0": genome.x0()} | ({"mean": list(recommended)} if recommended is not None else {})
    cands = [
        Candidate(stage, -1, k, tuple(x), genome.decode(x), "fitness", items) for k, x in enumerate(points.values())
    ]
    scored: dict[int, Outcome] = {}
    pool.evaluate(cands, lambda c, out: scored.__setitem__(c.index, out))
    return [({"generation": -1, "index": k, "genotype": list(x), "fitness": scored[k].fitness,
              "fitness_items": scored[k].cost.get("items", 0), "recipe_hash": name}, scored[k])
            for k, (name, x) in enumerate(points.items())]  # fmt: skip


def pooled(row: dict) -> float:
    """A finalist's score on all it was scored on: its full-set fitness over ``fitness_items`` items
    (0 for an estimate on part of the pool) and its validation score over ``validation_items``,
    weighted by their items. Each finalist's full-set score is optimistic (it is why it is a
    finalist), by about as much as the others'; the validation split is unbiased but, when small,
    noisy."""
    nf = (row.get("fitness_items") or 0) if row["fitness"] is not None else 0
    nv = row.get("validation_items") or 1
    return (nf * (row["fitness"] or 0.0) + nv * row["validation"]) / (nf + nv)


def pick_winner(rows: list[dict], none: str) -> dict:
    """The validation.json row that wins: the best :func:`pooled` score, ties by validation, then
    fitness (docs/design.md#fitness-estimators). Rows without ``fitness_items`` (written before it
    was recorded) are judged on validation alone. ``none`` is the error when no row was scored."""
    valid = [r for r in rows if r["validation"] is not None]
    if not valid:
        raise RunError(none)
    return max(valid, key=lambda r: (pooled(r), r["validation"], -math.inf if r["fitness"] is None else r["fitness"]))


class _Progress:
    """The stage's bar: candidates done, and beside them the generation, the best fitness so far,
    and the items and generated tokens scored (moving with every scoring call)."""

    def __init__(self, bar, log: Log, run: RunDir, stage: str, on_generation: Callable[[str, int], None] | None):
        self.bar, self.log, self.stage, self.on_generation = bar, log, stage, on_generation
        self.spent = totals(ScoreMatrix(run.scores_path(stage)).rows)
        self.gen: int | str = "-"
        self.best = math.nan

    def _show(self) -> None:
        self.bar.set_postfix(gen=self.gen, best=f"{self.best:.4g}", items=human_count(self.spent["items"]),
                             tokens=human_count(self.spent["generated_tokens"]))  # fmt: skip

    def call(self, row: dict) -> None:
        one = totals([row])  # a row's items and tokens as the ledger counts them
        self.spent["items"] += one["items"]
        self.spent["generated_tokens"] += one["generated_tokens"]
        self._show()

    def generation(self, gen: int, rows: list[dict]) -> None:
        if self.on_generation:
            self.on_generation(self.stage, gen)
        self.gen = gen
        fits = [r["fitness"] for r in self.log.stage_rows(self.stage) if r["fitness"] is not None]
        self.best = max(fits, default=math.nan)
        self.bar.update(len(rows))
        self._show()


def evolve_stage(
    job: JobSpec,
    run: RunDir,
    stage: str,
    log: Log,
    *,
    max_evals: int | None = None,
    device: str = "cpu",
    ray_actors: int | None = None,
    progress: bool = False,
    on_generation: Callable[[str, int], None] | None = None,
) -> Recipe | None:
    """Run (or resume) one search stage; returns its winner (written to the stage's recipe.yaml),
    or None when ``max_evals`` (this call's cap) stopped it first: the stage stays unfinished and
    ``--resume`` continues it."""
    part = job.parameter_space if stage == "ps" else job.data_flow_space
    assert part is not None
    worker = worker_spec(job, run, stage, device)
    genome = worker.genome
    gpus = 1.0 if device.startswith("cuda") else 0.0
    pool: Evaluator = RayPool(worker, ray_actors, gpus_per_actor=gpus) if ray_actors else InProcessPool(worker)
    budget = Budget.of(part.optimizer, genome.dims)
    done = len(log.stage_rows(stage))
    if done:
        gens = max((r["generation"] for r in log.stage_rows(stage)), default=-1) + 1
        logger.info("resuming stage %s after generation %d: %d of %d evaluations done", stage, gens - 1, done,
                    budget.evaluations)  # fmt: skip
    bar = progress_bar(budget.evaluations, f"evolve {stage}", "cand", initial=done, disable=not progress)
    shown = _Progress(bar, log, run, stage, on_generation)
    scoring = scoring_for(job, run, stage, genome)
    try:
        with bar:
            result = run_stage(stage, genome, part.optimizer, pool, log, run.checkpoint_path(stage), job.seed,
                               max_evals, shown.generation, scoring=scoring, on_call=shown.call)  # fmt: skip
        if not result.complete:
            return None
        winner = result.best.recipe
        if job.fitness.validation is not None:
            chosen = choose_on_validation(pool, run, stage, log, genome, result.ranked, result.front, scoring.pool,
                                          result.recommended)  # fmt: skip
            winner = genome.decode(chosen["genotype"])
    finally:
        pool.close()
    run.write_recipe(winner, stage)
    return winner


def model_dirs(run: RunDir, recipe: Recipe) -> list[Path]:
    """Local directories of a recipe's inputs (Recipe.inputs order), from the run's lock."""
    return [run.local_dir(ref) for ref in recipe.inputs()]


def ps_winner_dir(run: RunDir, progress: bool = False) -> Path:
    """The parameter-space winner on disk, merged once: model A of a PS-then-DFS job's second
    stage, and the held-out evaluation's measure of what the data-flow stage added."""
    out, recipe = run.stage_model_dir("ps"), run.stage_recipe("ps")
    if recipe is None:
        raise RunError(f"{run.root}: the parameter-space stage has no recipe yet")
    if not out.exists():
        merge_to_disk(recipe, model_dirs(run, recipe), out, progress=progress)
    return out
