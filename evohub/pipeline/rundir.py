"""The run directory: every path of a run, and the lock that pins its models.

::

    runs/<job>/
      job.yaml              the job spec as run (local paths made absolute)
      job.lock.yaml         every model: Hub repo + resolved commit, or local path, and its directory
      candidates.jsonl      one row per evaluated candidate, all stages (the source of truth)
      stages/<ps|dfs>/      checkpoint.json (after every generation), recipe.yaml (stage done),
                            validation.json (when the spec has a validation split),
                            scores.jsonl (the score matrix: one row per scoring call, with its cost)
      stages/ps/model/      the stage-1 model, materialised for a PS-then-DFS job
      recipe.yaml           the final recipe
      model/                the final merged model
      fitness.png           best and mean fitness per generation (and best against generated tokens)
      eval/<model>/         results.json and samples of each evaluated model; eval/untuned-model/
      results.json          every evaluated model's results
      published.json        where the run was published (written once)

No path of a run is spelled outside this module; files are replaced atomically (:mod:`evohub.files`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from evohub.errors import RunError
from evohub.files import atomic_write, read_jsonl
from evohub.spec import JobSpec, ModelRef, Recipe, load_job, load_recipe
from evohub.spec.yamlio import read_yaml

#: Run-state files pushed to the Hub state repo, besides the stage and eval files.
STATE_FILES = ("job.yaml", "job.lock.yaml", "candidates.jsonl")
STATE_SUFFIXES = (".json", ".jsonl", ".yaml")


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- paths -----------------------------------------------------------------------------------
    job_path = property(lambda self: self.root / "job.yaml")
    lock_path = property(lambda self: self.root / "job.lock.yaml")
    log_path = property(lambda self: self.root / "candidates.jsonl")
    recipe_path = property(lambda self: self.root / "recipe.yaml")
    model_dir = property(lambda self: self.root / "model")
    fitness_plot = property(lambda self: self.root / "fitness.png")
    #: a multi-objective stage's Pareto front (``nsga2``), beside fitness.png
    front_plot = property(lambda self: self.root / "front.png")
    #: an image job's held-out prompts (rows) by model (columns: each source, the untuned merge, the winner)
    samples_plot = property(lambda self: self.root / "samples.png")
    results_path = property(lambda self: self.root / "results.json")
    published_path = property(lambda self: self.root / "published.json")
    untuned_dir = property(lambda self: self.root / "eval" / "untuned-model")

    def stage_dir(self, stage: str) -> Path:
        d = self.root / "stages" / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def checkpoint_path(self, stage: str) -> Path:
        return self.stage_dir(stage) / "checkpoint.json"

    def scores_path(self, stage: str) -> Path:
        """The stage's score matrix (docs/design.md#per-item-scores-and-the-cost-ledger)."""
        return self.root / "stages" / stage / "scores.jsonl"

    def validation_path(self, stage: str) -> Path:
        return self.root / "stages" / stage / "validation.json"

    def stage_recipe_path(self, stage: str) -> Path:
        return self.root / "stages" / stage / "recipe.yaml"

    def stage_model_dir(self, stage: str) -> Path:
        """The materialised winner of a stage (model A of a PS-then-DFS job's second stage)."""
        return self.root / "stages" / stage / "model"

    def eval_dir(self, name: str) -> Path:
        """Where one evaluated model's results.json and samples go."""
        return self.root / "eval" / name

    def eval_results(self, name: str) -> dict | None:
        """One evaluated model's results, if it has been evaluated."""
        return self.read_json(self.eval_dir(name) / "results.json")  # type: ignore[return-value]

    # -- documents -------------------------------------------------------------------------------
    def holds_run(self) -> bool:
        return self.job_path.exists()

    def job(self) -> JobSpec:
        return load_job(self.job_path)

    def write_job(self, spec: JobSpec, source: str | Path) -> None:
        name = Path(source).name
        atomic_write(
            self.job_path, f"# {name} as run by evohub (local paths relative to this file)\n" + spec.to_yaml(self.root)
        )

    def stage_recipe(self, stage: str) -> Recipe | None:
        p = self.stage_recipe_path(stage)
        return load_recipe(p) if p.exists() else None

    def write_recipe(self, recipe: Recipe, stage: str | None = None) -> None:
        """The final recipe, or (with ``stage``) a finished stage's (local paths relative to it)."""
        path = self.stage_dir(stage) / "recipe.yaml" if stage else self.recipe_path
        atomic_write(path, recipe.to_yaml(path.parent))

    def recipe(self) -> Recipe:
        if not self.recipe_path.exists():
            raise RunError(f"{self.root}: no recipe.yaml; the run has not finished")
        return load_recipe(self.recipe_path)

    def read_json(self, path: Path) -> dict | list | None:
        """A JSON file of the run, or None if it is not there."""
        return json.loads(path.read_text()) if path.exists() else None

    def log_rows(self) -> list[dict]:
        """candidates.jsonl as rows (empty before the first candidate)."""
        if not self.log_path.exists():
            return []
        return [json.loads(x) for x in self.log_path.read_text().splitlines() if x.strip()]

    def score_rows(self, stage: str) -> list[dict]:
        """A stage's score matrix as rows, read only (empty when it has none; a last row cut short
        by a crash is left out)."""
        return read_jsonl(self.scores_path(stage), "the score matrix", repair=False)

    def state_files(self) -> dict[str, Path]:
        """What the Hub state repo holds of the run: spec, lock, log, stage and eval files, results."""
        found = [self.root / n for n in STATE_FILES]
        found += sorted([*(self.root / "stages").glob("*/*"), *(self.root / "eval").glob("*/*"), self.results_path])
        return {
            str(p.relative_to(self.root)): p
            for p in found
            if p.is_file() and (p.name in STATE_FILES or p.suffix in STATE_SUFFIXES)
        }

    # -- the lock: which directory and commit each model reference resolved to ------------------
    def lock(self) -> list[dict]:
        """The lock's entries, local paths made absolute again (they are stored relative to the run)."""
        if not self.lock_path.exists():
            raise RunError(f"{self.lock_path}: missing; the pull stage has not run")
        data = read_yaml(self.lock_path).data  # the limits of every YAML evohub reads; syntax: one line
        entries = data.get("models") if isinstance(data, dict) else None
        fields = ("name", "local")
        if not isinstance(entries, list) or not all(
            isinstance(e, dict) and all(isinstance(e.get(k), str) for k in fields) for e in entries
        ):
            raise RunError(f"{self.lock_path}:1: models: not a lock file (a list of entries with a name and a local "
                           "directory); remove it to pull again")  # fmt: skip
        for e in entries:
            for key in ("path", "local"):
                if e.get(key) and not Path(e[key]).is_absolute():
                    e[key] = os.path.normpath(self.root.resolve() / e[key])
        return entries

    def write_lock(self, entries: list[dict]) -> None:
        """job.lock.yaml; local models' paths are written relative to the run directory."""
        rel = [
            e | {k: os.path.relpath(e[k], self.root.resolve()) for k in ("path", "local") if e.get("path") and e.get(k)}
            for e in entries
        ]
        atomic_write(self.lock_path, yaml.safe_dump({"evohub_lock": 1, "models": rel}, sort_keys=False))

    def _entry(self, ref: ModelRef) -> dict:
        for e in self.lock():
            if ref.path is not None and e.get("path") == ref.path:
                return e
            if (
                ref.repo is not None
                and e.get("repo") == ref.repo
                and ref.revision in (None, e.get("requested"), e.get("revision"))
            ):
                return e
        raise RunError(f"{self.lock_path}: has no entry for {ref.display()}")

    def local_dir(self, ref: ModelRef) -> Path:
        return Path(self._entry(ref)["local"])

    def pinned(self, ref: ModelRef) -> ModelRef:
        """``ref`` with its Hub revision replaced by the resolved commit (local paths as they are)."""
        return ref.plain() if ref.path is not None else ref.at(self._entry(ref)["revision"])

    def config(self, ref: ModelRef) -> dict:
        """A pulled model's config (:func:`~evohub.merging.arch.read_config`: a pipeline's model_index.json)."""
        from evohub.merging.arch import read_config

        return read_config(self.local_dir(ref), ref.display())
