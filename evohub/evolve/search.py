"""Seeded CMA-ES over a genome, with every candidate logged and runs that resume exactly.

    >>> result = run_stage(stage, genome, optimizer, pool, log, seed=0)     # doctest: +SKIP

The log (``candidates.jsonl``, one JSON row per evaluated candidate, fsynced) is the source of
truth; ``checkpoint.json`` (replaced atomically after every generation) summarises it. CMA-ES
(the ``cma`` package) draws its samples from its own generator seeded from the job seed, so a
resumed run re-creates the optimiser and replays the logged generations: every ``ask`` gives the
logged genotypes again (checked) and every ``tell`` gets the logged fitness. A candidate already
in the log is never evaluated again, so a run killed at any moment and resumed produces the
same candidates, rows and final recipe as one that was never stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evohub.errors import EvohubError
from evohub.spec import Optimizer, Recipe


def recipe_hash(recipe: Recipe) -> str:
    return hashlib.sha256(recipe.to_yaml().encode()).hexdigest()[:16]


def stage_seed(seed: int, stage: str) -> int:
    """CMA's seed for a stage, derived from the job seed."""
    return int.from_bytes(hashlib.blake2b(f"evohub-cma-{seed}-{stage}".encode(), digest_size=4).digest(), "little") or 1


@dataclass
class Outcome:
    """What evaluating one candidate gave."""

    fitness: float | None
    metrics: dict = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class Candidate:
    stage: str
    generation: int
    index: int
    genotype: tuple[float, ...]
    recipe: Recipe
    split: str = "fitness"  # or "validation", when the final choice is re-scored

    @property
    def key(self) -> tuple[str, int, int]:
        return self.stage, self.generation, self.index


class Log:
    """candidates.jsonl: append-only, one row per candidate, each row flushed and fsynced."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict] = []
        if path.exists():
            lines = path.read_text().splitlines()
            for i, line in enumerate(lines):
                try:
                    self.rows.append(json.loads(line))
                except ValueError:
                    if i != len(lines) - 1:
                        raise EvohubError(f"{path}:{i + 1}: not a JSON row; the log is damaged") from None
                    self._truncate(len(lines) - 1)  # a row cut short by a crash: drop it
        self._index = {(r["stage"], r["generation"], r["index"]): r for r in self.rows}

    def _truncate(self, keep_lines: int) -> None:
        text = "".join(line + "\n" for line in self.path.read_text().splitlines()[:keep_lines])
        self.path.write_text(text)

    def get(self, key: tuple[str, int, int]) -> dict | None:
        return self._index.get(key)

    def append(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row, separators=(",", ":")) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.rows.append(row)
        self._index[(row["stage"], row["generation"], row["index"])] = row

    def stage_rows(self, stage: str) -> list[dict]:
        return [r for r in self.rows if r["stage"] == stage]


def write_json(path: Path, obj: object) -> None:
    """Atomically replace ``path`` with ``obj`` as JSON (temp file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Evaluator:
    """Evaluates a batch of candidates; calls ``done(candidate, outcome)`` as each finishes."""

    def evaluate(self, batch: Sequence[Candidate], done: Callable[[Candidate, Outcome], None]) -> None:
        raise NotImplementedError


@dataclass
class StageResult:
    stage: str
    best: Candidate
    best_fitness: float
    evaluations: int
    generations: int


def _penalised(fitness: Sequence[float | None]) -> list[float]:
    """Failed candidates rank below every successful one."""
    ok = [f for f in fitness if f is not None and math.isfinite(f)]
    worst = (min(ok) - 1.0) if ok else 0.0
    return [f if f is not None and math.isfinite(f) else worst for f in fitness]


def run_stage(
    stage: str,
    genome,
    optimizer: Optimizer,
    evaluator: Evaluator,
    log: Log,
    checkpoint: Path,
    seed: int,
    max_evals: int | None = None,
    on_generation: Callable[[int, list[dict]], None] | None = None,
) -> StageResult:
    """Run (or resume) one stage of CMA-ES; maximises fitness."""
    import cma

    dims = genome.dims
    pop = optimizer.population(dims)
    budget = [b for b in (optimizer.evaluations(dims), max_evals) if b]
    limit = min(budget) if budget else None
    rng = np.random.default_rng(stage_seed(seed, stage))
    es = cma.CMAEvolutionStrategy(
        genome.x0(),
        optimizer.sigma0,
        {"seed": np.nan, "randn": lambda *shape: rng.standard_normal(shape), "bounds": [0, 1],
         "popsize": pop, "verbose": -9, "maxfevals": math.inf, "tolfun": 0, "tolx": 0,
         "tolfunhist": 0, "tolstagnation": math.inf, "tolflatfitness": math.inf},
    )  # fmt: skip
    elapsed = sum(r.get("seconds", 0.0) for r in log.stage_rows(stage))  # resumed runs count it all
    generation = 0
    best: tuple[float, Candidate] | None = None
    while True:
        done_before = generation * pop
        if limit is not None and done_before >= limit:
            break
        if optimizer.max_hours is not None and elapsed >= optimizer.max_hours * 3600:
            break
        X = es.ask()
        n = pop if limit is None else min(pop, limit - done_before)  # the last generation may be cut
        cands = [Candidate(stage, generation, i, tuple(float(v) for v in X[i]), genome.decode(X[i])) for i in range(n)]
        todo = []
        for c in cands:
            row = log.get(c.key)
            if row is None:
                todo.append(c)
            elif not np.allclose(row["genotype"], c.genotype, rtol=0, atol=1e-12):
                raise EvohubError(
                    f"{log.path}: generation {generation} candidate {c.index} differs from the replayed optimiser; "
                    "the log belongs to another job or seed (start a new --run-dir)"
                )

        def record(c: Candidate, out: Outcome) -> None:
            nonlocal elapsed
            elapsed += out.seconds
            log.append({
                "stage": c.stage, "generation": c.generation, "index": c.index,
                "genotype": list(c.genotype), "recipe_hash": recipe_hash(c.recipe),
                "fitness": out.fitness, "metrics": out.metrics, "error": out.error,
                "seconds": round(out.seconds, 4),
            })  # fmt: skip

        if todo:
            evaluator.evaluate(todo, record)
        rows = [log.get(c.key) for c in cands]
        if any(r is None for r in rows):
            raise EvohubError(f"stage {stage}: the evaluator returned no result for some candidates")
        fitness = [r["fitness"] for r in rows]  # type: ignore[index]
        for c, f in zip(cands, fitness, strict=True):
            if f is not None and math.isfinite(f) and (best is None or f > best[0]):
                best = (f, c)
        if n == pop:  # a cut generation ends the stage and is not told
            es.tell(X, [-f for f in _penalised(fitness)])
        generation += 1
        write_json(checkpoint, {
            "stage": stage, "generation": generation, "evaluations": done_before + n,
            "popsize": pop, "dims": dims, "sigma": float(es.sigma), "mean": [float(v) for v in es.mean],
            "best_fitness": best[0] if best else None, "best_recipe_hash": recipe_hash(best[1].recipe) if best else None,
            "elapsed_s": round(elapsed, 3), "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })  # fmt: skip
        if on_generation:
            on_generation(generation - 1, rows)  # type: ignore[arg-type]
        if n < pop:
            break
    if best is None:
        raise EvohubError(f"stage {stage}: no candidate was evaluated successfully (see {log.path})")
    evaluations = sum(1 for _ in log.stage_rows(stage))
    return StageResult(stage, best[1], best[0], evaluations, generation)
