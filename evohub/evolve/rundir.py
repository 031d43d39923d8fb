"""The layout of a run directory, shared by the job runner and the workers it starts.

::

    runs/<job>/
      job.yaml              the job spec as run (local paths made absolute)
      job.lock.yaml         every model: Hub repo + resolved commit, or local path, and its directory
      candidates.jsonl      one row per evaluated candidate, all stages (the source of truth)
      stages/<ps|dfs>/      checkpoint.json (after every generation), recipe.yaml (stage done),
                            validation.json (when the spec has a validation split)
      stages/ps/model/      the stage-1 model, materialised for a PS-then-DFS job
      recipe.yaml           the final recipe
      model/                the final merged model
      fitness.png           best and mean fitness per generation
"""

from __future__ import annotations

from pathlib import Path

import yaml

from evohub.errors import EvohubError
from evohub.spec import JobSpec, ModelRef, Recipe, load_job, load_recipe


class RunFiles:
    def __init__(self, root: Path):
        self.root = Path(root)

    @property
    def job_path(self) -> Path:
        return self.root / "job.yaml"

    @property
    def lock_path(self) -> Path:
        return self.root / "job.lock.yaml"

    @property
    def log_path(self) -> Path:
        return self.root / "candidates.jsonl"

    def stage_dir(self, stage: str) -> Path:
        d = self.root / "stages" / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def job(self) -> JobSpec:
        return load_job(self.job_path)

    def stage_recipe(self, stage: str) -> Recipe | None:
        p = self.root / "stages" / stage / "recipe.yaml"
        return load_recipe(p) if p.exists() else None

    # -- the lock: which directory and commit each model reference resolved to ------------------
    def lock(self) -> list[dict]:
        if not self.lock_path.exists():
            raise EvohubError(f"{self.lock_path}: missing; the pull stage has not run")
        return yaml.safe_load(self.lock_path.read_text())["models"]

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
        raise EvohubError(f"{self.lock_path}: has no entry for {ref.display()}")

    def local_dir(self, ref: ModelRef) -> Path:
        return Path(self._entry(ref)["local"])

    def pinned(self, ref: ModelRef) -> ModelRef:
        """``ref`` with its Hub revision replaced by the resolved commit (local paths as they are)."""
        if ref.path is not None:
            return ref
        e = self._entry(ref)
        return ModelRef.model_construct(repo=ref.repo, revision=e["revision"], path=None)

    def config(self, ref: ModelRef) -> dict:
        import json

        return json.loads((self.local_dir(ref) / "config.json").read_text())
