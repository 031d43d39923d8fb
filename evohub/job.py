"""Run a whole job in a resumable run directory: pull → evolve (each stage) → merge the best.

    >>> summary = run_job("jobs/demo.yaml", run_dir="runs/demo", resume=True)   # doctest: +SKIP

Every stage writes its output last (a stage's ``recipe.yaml``, the final ``model/``), so a
resumed run skips what is done and continues what is not; evolution itself resumes mid-stage
from ``candidates.jsonl`` (:mod:`evohub.evolve.search`). The run directory layout is in
:mod:`evohub.evolve.rundir`. Evaluation and publishing join this pipeline as they land.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from evohub.errors import EvohubError
from evohub.evolve.pool import InProcessPool, RayPool
from evohub.evolve.rundir import RunFiles
from evohub.evolve.search import Candidate, Log, Outcome, StageResult, run_stage, write_json
from evohub.evolve.stages import genome_for, stages_of
from evohub.evolve.worker import WorkerSpec
from evohub.spec import JobSpec, Recipe, load_job

VALIDATE_TOP = 5  # candidates re-scored on the validation split at the end of a stage


@dataclass
class StageSummary:
    stage: str
    evaluations: int
    generations: int
    best_fitness: float
    validation: float | None
    seconds: float
    failed: int


@dataclass
class RunSummary:
    run_dir: Path
    recipe: Recipe
    model_dir: Path
    stages: list[StageSummary] = field(default_factory=list)
    results: dict | None = None
    published: dict | None = None


def _start(spec_path: Path, run_dir: Path, resume: bool) -> tuple[JobSpec, RunFiles]:
    spec = load_job(spec_path)
    run = RunFiles(run_dir)
    if run.job_path.exists():
        if not resume:
            raise EvohubError(
                f"{run_dir} already holds a run; pass --resume to continue it, or choose another --run-dir"
            )
        if run.job().to_yaml() != spec.to_yaml():
            raise EvohubError(
                f"{spec_path} differs from the spec {run_dir} was started with ({run.job_path}); use another --run-dir"
            )
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run.job_path.with_name(".job.yaml.tmp")
        tmp.write_text(f"# {spec_path} as run by evohub (local paths made absolute)\n" + spec.to_yaml())
        tmp.replace(run.job_path)
    return spec, run


def _pull(spec: JobSpec, run: RunFiles) -> None:
    """Resolve and fetch the sources into job.lock.yaml; a lock from another machine (a run
    continued from its Hub state) is re-fetched at the same pinned commits."""
    from evohub.hub import pull

    models = ([("base", spec.base_model)] if spec.base_model else []) + [(s.key, s.ref()) for s in spec.sources]
    if run.lock_path.exists():
        entries = run.lock()
        if all(Path(e["local"]).is_dir() for e in entries):
            return
        pinned = {e["name"]: e for e in entries}
        models = [(n, r if r.path else r.model_copy(update={"revision": pinned[n]["revision"]})) for n, r in models]
    entries = pull(models, progress=True)
    tmp = run.lock_path.with_name(".job.lock.yaml.tmp")
    tmp.write_text(yaml.safe_dump({"evohub_lock": 1, "models": entries}, sort_keys=False))
    tmp.replace(run.lock_path)


def _dirs(run: RunFiles, recipe: Recipe) -> list[Path]:
    from evohub.merge.build import input_refs

    return [run.local_dir(ref) for ref in input_refs(recipe)]


class _Progress:
    """Wraps an evaluator: a bar per stage with best / mean fitness and evaluations per second."""

    def __init__(self, inner, bar):
        self.inner, self.bar = inner, bar

    def evaluate(self, batch, done) -> None:
        def tick(c: Candidate, out: Outcome) -> None:
            done(c, out)
            self.bar.update()

        self.inner.evaluate(batch, tick)


def _validate(pool, run: RunFiles, stage: str, log: Log, genome) -> tuple[dict, float]:
    """Re-score the stage's best candidates on the validation split; the best of them wins."""
    path = run.stage_dir(stage) / "validation.json"
    if path.exists():
        rows = json.loads(path.read_text())
    else:
        ok = [r for r in log.stage_rows(stage) if r["fitness"] is not None and math.isfinite(r["fitness"])]
        seen, top = set(), []
        for r in sorted(ok, key=lambda r: (-r["fitness"], r["generation"], r["index"])):
            if r["recipe_hash"] not in seen:
                seen.add(r["recipe_hash"])
                top.append(r)
            if len(top) == VALIDATE_TOP:
                break
        # the start point too (for a data-flow stage: model A itself), so a stage never replaces
        # what it started from with something that validates worse
        x0 = {"generation": -1, "index": 0, "genotype": list(genome.x0()), "fitness": None, "recipe_hash": "x0"}
        top.append(x0)
        cands = [
            Candidate(
                stage, r["generation"], r["index"], tuple(r["genotype"]), genome.decode(r["genotype"]), "validation"
            )
            for r in top
        ]
        scores: dict = {}
        pool.evaluate(cands, lambda c, out: scores.__setitem__(c.key, out))
        rows = [r | {"validation": scores[(stage, r["generation"], r["index"])].fitness} for r in top]
        write_json(path, rows)
    valid = [r for r in rows if r["validation"] is not None]
    if not valid:
        raise EvohubError(f"stage {stage}: no candidate could be scored on the validation split ({path})")
    best = max(valid, key=lambda r: (r["validation"], -math.inf if r["fitness"] is None else r["fitness"]))
    return best, best["validation"]


def plot_fitness(log: Log, out: Path, stages: list[str]) -> None:
    """fitness.png: best and mean fitness per generation, stages side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    offset = 0
    for stage in stages:
        rows = log.stage_rows(stage)
        gens = sorted({r["generation"] for r in rows})
        if not gens:
            continue
        per = [[r["fitness"] for r in rows if r["generation"] == g and r["fitness"] is not None] for g in gens]
        xs = [offset + g for g, p in zip(gens, per, strict=True) if p]
        best_so_far, running = [], -math.inf
        for p in per:
            if p:
                running = max(running, max(p))
                best_so_far.append(running)
        ax.plot(xs, best_so_far, label=f"{stage}: best so far")
        ax.plot(xs, [sum(p) / len(p) for p in per if p], "--", label=f"{stage}: generation mean")
        if offset:
            ax.axvline(offset - 0.5, color="grey", lw=0.8)
        offset += len(gens)
    ax.set_xlabel("generation")
    ax.set_ylabel("fitness")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = out.with_name(".fitness.png.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(out)


def _evolve(spec: JobSpec, run: RunFiles, stage: str, log: Log, *, max_evals: int | None, device: str,
            ray_actors: int | None, progress: bool, state_repo: str | None = None) -> Recipe:  # fmt: skip
    """Run (or resume) one search stage; returns its winner (written to the stage's recipe.yaml)."""
    from tqdm.auto import tqdm

    optimizer = (spec.parameter_space if stage == "ps" else spec.data_flow_space).optimizer  # type: ignore[union-attr]
    genome = genome_for(run, spec, stage)
    worker = WorkerSpec(str(run.root), stage, device)
    gpus = 1.0 if device.startswith("cuda") else 0.0
    pool = RayPool(worker, ray_actors, gpus_per_actor=gpus) if ray_actors else InProcessPool(worker)
    caps = [c for c in (optimizer.evaluations(genome.dims), max_evals) if c]
    bar = tqdm(total=min(caps) if caps else None, desc=f"evolve {stage}", unit="cand", disable=not progress)

    def show(gen: int, rows: list[dict]) -> None:
        if state_repo:
            from evohub.hub import push_state

            push_state(run.root, state_repo, f"evohub: {stage} generation {gen}")
        fits = [r["fitness"] for r in rows if r["fitness"] is not None]
        best = max(
            (r["fitness"] for r in log.stage_rows(stage) if r["fitness"] is not None),
            default=math.nan,
        )
        bar.set_postfix(gen=gen, best=f"{best:.4g}", mean=f"{sum(fits) / len(fits):.4g}" if fits else "-")

    try:
        with bar:
            result: StageResult = run_stage(stage, genome, optimizer, _Progress(pool, bar), log,
                                            run.stage_dir(stage) / "checkpoint.json", spec.seed, max_evals, show)  # fmt: skip
        winner = result.best.recipe
        if spec.fitness.validation is not None:
            best_row, _ = _validate(pool, run, stage, log, genome)
            winner = genome.decode(best_row["genotype"])
    finally:
        if isinstance(pool, RayPool):
            pool.close()
    tmp = run.stage_dir(stage) / ".recipe.yaml.tmp"
    tmp.write_text(winner.to_yaml())
    tmp.replace(run.stage_dir(stage) / "recipe.yaml")
    return winner


def _summary(run: RunFiles, stage: str, log: Log, seconds: float) -> StageSummary:
    rows = log.stage_rows(stage)
    ok = [r["fitness"] for r in rows if r["fitness"] is not None]
    vpath = run.root / "stages" / stage / "validation.json"
    vals = [r["validation"] for r in json.loads(vpath.read_text())] if vpath.exists() else []
    return StageSummary(
        stage=stage,
        evaluations=len(rows),
        generations=len({r["generation"] for r in rows}),
        best_fitness=max(ok) if ok else math.nan,
        validation=max((v for v in vals if v is not None), default=None),
        seconds=seconds,
        failed=len(rows) - len(ok),
    )


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
) -> RunSummary:
    """Run (or resume) a job; returns what it produced.

    ``state_repo`` (a Hub dataset repo) receives the run state after every generation, and a
    resumed run whose directory is empty starts from it. ``publish`` pushes the winner to the
    spec's ``publish.repo`` at the end (once: ``published.json`` records it).
    """
    from evohub.merge.build import merge_to_disk

    spec_path = Path(spec_path)
    run_dir = Path(run_dir) if run_dir else Path("runs") / load_job(spec_path).name
    if resume and state_repo and not (run_dir / "job.yaml").exists():
        from evohub.hub import fetch_state

        if fetch_state(state_repo, run_dir) and progress:
            print(f"continuing the run state from {state_repo}")
    spec, run = _start(spec_path, run_dir, resume)
    _pull(spec, run)
    log = Log(run.log_path)
    summaries: list[StageSummary] = []
    final: Recipe | None = None
    for stage in stages_of(spec):
        started = time.perf_counter()
        if stage == "dfs" and spec.data_flow_space.a == "ps":  # type: ignore[union-attr]
            ps_model, ps_recipe = run.root / "stages" / "ps" / "model", run.stage_recipe("ps")
            assert ps_recipe is not None
            if not ps_model.exists():  # model A of the data-flow stage
                merge_to_disk(ps_recipe, _dirs(run, ps_recipe), ps_model, progress=progress)
        final = run.stage_recipe(stage) or _evolve(
            spec,
            run,
            stage,
            log,
            max_evals=max_evals,
            device=device,
            ray_actors=ray_actors,
            progress=progress,
            state_repo=state_repo,
        )
        summaries.append(_summary(run, stage, log, time.perf_counter() - started))
    assert final is not None
    tmp = run.root / ".recipe.yaml.tmp"
    tmp.write_text(final.to_yaml())
    tmp.replace(run.root / "recipe.yaml")
    plot_fitness(log, run.root / "fitness.png", stages_of(spec))
    model_dir = run.root / "model"
    if not model_dir.exists():
        merge_to_disk(final, _dirs(run, final), model_dir, progress=progress)
    results = _evaluate(spec, run, model_dir, device) if spec.evaluation else None
    if state_repo:
        from evohub.hub import push_state

        push_state(run.root, state_repo, "evohub: run finished")
    published = None
    if spec.publish is not None and publish:
        marker = run.root / "published.json"
        if marker.exists():
            published = json.loads(marker.read_text())
        else:
            from evohub.hub import publish_run

            done, _ = publish_run(run.root, spec.publish.repo, private=spec.publish.private)
            published = {"repo": done.repo_id, "revision": done.revision, "commit": done.commit, "tag": done.tag}
            write_json(marker, published)
    return RunSummary(
        run_dir=run.root, recipe=final, model_dir=model_dir, stages=summaries, results=results, published=published
    )


def _untuned(spec: JobSpec, run: RunFiles) -> Path:
    """The merge anyone would try first: the spec's method, equal weights 1/K, density 1."""
    from evohub.merge.build import merge_to_disk

    out = run.root / "eval" / "untuned-model"
    if not out.exists():
        genome = genome_for(run, spec, "ps")
        recipe = genome.decode(genome.x0())
        ps = recipe.parameter_space
        k = len(ps.models)
        equal = 1.0 if ps.method == "slerp" else 1.0 / k
        models = tuple(
            m.model_copy(update={"weight": (0.5 if ps.method == "slerp" else equal), "overrides": (),
                                 "density": None if m.density is None else 1.0})
            for m in ps.models
        )  # fmt: skip
        recipe = recipe.model_copy(
            update={"parameter_space": ps.model_copy(update={"models": models, "layer_groups": 1})}
        )
        merge_to_disk(recipe, _dirs(run, recipe), out)
    return out


def _evaluate(spec: JobSpec, run: RunFiles, model_dir: Path, device: str) -> dict:
    """results.json: the evolved model on the held-out suites, and each source when asked."""
    from evohub.evaluate import evaluate, suites_for

    path = run.root / "results.json"
    if path.exists():
        return json.loads(path.read_text())
    ev = spec.evaluation
    assert ev is not None
    kw = {
        "backend": ev.backend,
        "device": device,
        "data": ev.data,
        "limit": ev.limit,
        "max_new_tokens": ev.max_new_tokens,
        "prompt": spec.fitness.prompt,
        "stop": spec.fitness.stop,
    }
    models = {"evolved": model_dir}
    if ev.compare_sources:
        if spec.base_model is not None:
            models["base"] = run.local_dir(spec.base_model)
        models |= {s.key: run.local_dir(s.ref()) for s in spec.sources}
        if spec.parameter_space is not None:
            models["untuned merge"] = _untuned(spec, run)
    out: dict = {"suites": list(ev.suites), "models": {}}
    for name, directory in models.items():
        suites = suites_for(directory, list(ev.suites))  # VQA suites only for VLMs
        if not suites:
            continue
        eval_dir = run.root / "eval" / name
        done = eval_dir / "results.json"
        out["models"][name] = (
            json.loads(done.read_text()) if done.exists() else evaluate(directory, suites, out_dir=eval_dir, **kw)
        )
    write_json(path, out)
    return out
