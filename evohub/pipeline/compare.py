"""The held-out evaluation of a run: the winner, and (``compare_sources``) the base, each source
and the untuned merge, so the card can show what evolution added; a job of two stages also has
its parameter-space winner evaluated alone, so each stage's gain is measured on held-out data."""

from __future__ import annotations

from pathlib import Path

from evohub.files import write_json
from evohub.merging.build import merge_to_disk
from evohub.pipeline.report import plot_samples, run_cost, stage_summary
from evohub.pipeline.rundir import RunDir
from evohub.pipeline.stages import model_dirs, ps_winner_dir, stage_genome
from evohub.score.evaluate import evaluate, suites_for
from evohub.spec import JobSpec, Recipe
from evohub.spec.job import TASK_OPTIONS


def untuned_recipe(job: JobSpec, run: RunDir) -> Recipe:
    """The merge anyone would try first: the spec's method, equal weights, density 1."""
    genome = stage_genome(job, run, "ps")
    recipe = genome.decode(genome.x0())
    ps = recipe.parameter_space
    assert ps is not None
    equal = 0.5 if ps.kind.shares else 1.0 / len(ps.models)
    models = tuple(
        m.model_copy(update={"weight": equal, "overrides": (), "density": None if m.density is None else 1.0})
        for m in ps.models
    )
    return recipe.model_copy(update={"parameter_space": ps.model_copy(update={"models": models, "layer_groups": 1})})


#: the name results give the parameter-space winner of a PS-then-DFS job
PS_WINNER = "PS winner"


def evaluate_run(job: JobSpec, run: RunDir, device: str) -> dict:
    """results.json: the evolved model on the held-out suites, and each source when asked, and
    (``cost``) what evolution's fitness cost on ``device`` (:func:`~evohub.pipeline.report.run_cost`).

    Each model's results are kept in ``eval/<name>/results.json``, so a resumed run evaluates
    only what it has not.
    """
    done = run.read_json(run.results_path)
    if done is not None:
        return done  # type: ignore[return-value]
    ev = job.evaluation
    assert ev is not None
    fit = job.fitness
    judge = job.judge_model()
    # the evaluation keeps the protocol: every token decoded (a loop stop is a fitness setting)
    image_options = {k: getattr(fit, k) for k in TASK_OPTIONS if k not in ("prompt", "stop", "loop_span")}
    kw = {"backend": ev.backend, "device": device, "data": ev.data, "limit": ev.limit,
          "max_new_tokens": ev.max_new_tokens, "prompt": fit.prompt, "stop": fit.stop,
          "prompt_version": ev.prompt_version, "dtype": job.dtype,
          "task_options": image_options | {"judge_model": str(run.local_dir(judge)) if judge else None}}  # fmt: skip
    if fit.batch_size and fit.backend == "diffusion":  # images in the fitness's batches (its memory plan)
        kw["batch_size"] = fit.batch_size
    # name -> (directory, how results name it: repo@commit or a path relative to the run)
    models: dict[str, tuple[Path, str]] = {"evolved": (run.model_dir, "model")}
    if len(job.stages()) > 1:  # what the data-flow stage added: the PS winner without it
        models[PS_WINNER] = (ps_winner_dir(run), "the parameter-space winner (before the data-flow stage)")
    if ev.compare_sources:
        models |= {name: (run.local_dir(ref), run.pinned(ref).display(run.root)) for name, ref in job.models()}
        if job.parameter_space is not None:
            if not run.untuned_dir.exists():
                recipe = untuned_recipe(job, run)
                merge_to_disk(recipe, model_dirs(run, recipe), run.untuned_dir)
            models["untuned merge"] = (run.untuned_dir, "the untuned merge (equal weights)")
    out: dict = {"suites": list(ev.suites), "models": {}}
    for name, (directory, label) in models.items():
        suites = suites_for(directory, list(ev.suites))  # vision suites only for VLMs
        if suites:
            kept = run.eval_results(name)
            if kept is None:
                kept = evaluate(directory, suites, out_dir=run.eval_dir(name), label=label, **kw)
            out["models"][name] = kept
    _samples(run, ev.suites, [name for name in models if name in out["models"]])
    rows = run.log_rows()
    cost = run_cost([stage_summary(run, stage, rows) for stage in job.stages()], device)
    if cost is not None:
        out["cost"] = cost
    write_json(run.results_path, out)
    return out


def _samples(run: RunDir, suites: tuple[str, ...], names: list[str]) -> None:
    """samples.png from the first suite that saved images: each model a column, the evolved one last."""
    order = [n for n in names if n != "evolved"] + ["evolved"]
    for suite in suites:
        if plot_samples({n: run.eval_dir(n) / "images" / suite for n in order}, run.samples_plot):
            return
