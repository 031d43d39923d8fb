"""A seeded optimiser over a genome, with every candidate logged and runs that resume exactly.

    >>> result = run_stage(stage, genome, optimizer, pool, log, checkpoint, seed=0)     # doctest: +SKIP

The log (``candidates.jsonl``, one JSON row per evaluated candidate, fsynced) is the source of
truth; ``checkpoint.json`` (replaced atomically after every generation) summarises it
(docs/design.md#resuming). The optimiser (:mod:`evohub.evolve.optimizers`; CMA-ES by default)
draws its samples from its own generator seeded from the job seed, so a resumed run re-creates
it and replays the logged generations: every ``ask`` gives the logged genotypes again (checked)
and every ``tell`` gets the logged fitness. A candidate already in the log is never evaluated
again, so a run killed at any moment and resumed produces the same candidates, rows and final
recipe as one that was never stopped. Each candidate is decoded once, here; workers receive the
genotype and its recipe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evohub.errors import RunError
from evohub.evolve.genome import Budget, Genome
from evohub.evolve.optimizers import OPTIMIZERS
from evohub.files import atomic_write, write_json
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
                        raise RunError(f"{path}:{i + 1}: not a JSON row; the log is damaged") from None
                    self._truncate(len(lines) - 1)  # a row cut short by a crash: drop it
        self._index = {(r["stage"], r["generation"], r["index"]): r for r in self.rows}

    def _truncate(self, keep_lines: int) -> None:
        atomic_write(self.path, "".join(line + "\n" for line in self.path.read_text().splitlines()[:keep_lines]))

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


class Evaluator:
    """Evaluates a batch of candidates; calls ``done(candidate, outcome)`` as each finishes."""

    def evaluate(self, batch: Sequence[Candidate], done: Callable[[Candidate, Outcome], None]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the evaluator holds (workers, engines)."""


@dataclass
class StageResult:
    stage: str
    best: Candidate
    best_fitness: float
    evaluations: int
    generations: int
    #: False when this invocation's cap (``max_evals``) stopped the stage before its budget did:
    #: the stage is not finished and resumes from the log (docs/design.md#resuming)
    complete: bool = True


def _penalised(fitness: Sequence[float | None]) -> list[float]:
    """Failed candidates rank below every successful one."""
    ok = [f for f in fitness if f is not None and math.isfinite(f)]
    worst = (min(ok) - 1.0) if ok else 0.0
    return [f if f is not None and math.isfinite(f) else worst for f in fitness]


def _replayed(log: Log, cands: Sequence[Candidate]) -> list[Candidate]:
    """The candidates the log does not hold yet; a logged one must have the same genotype."""
    todo = []
    for c in cands:
        row = log.get(c.key)
        if row is None:
            todo.append(c)
        elif not np.allclose(row["genotype"], c.genotype, rtol=0, atol=1e-12):
            raise RunError(
                f"{log.path}: generation {c.generation} candidate {c.index} differs from the replayed optimiser; "
                "the log belongs to another job or seed (start a new --run-dir)"
            )
    return todo


def _row(c: Candidate, out: Outcome) -> dict:
    return {
        "stage": c.stage, "generation": c.generation, "index": c.index,
        "genotype": list(c.genotype), "recipe_hash": recipe_hash(c.recipe),
        "fitness": out.fitness, "metrics": out.metrics, "error": out.error,
        "seconds": round(out.seconds, 4),
    }  # fmt: skip


def _checkpoint(path: Path, stage: str, generation: int, evaluations: int, pop: int, dims: int, search,
                best: tuple[float, Candidate] | None, elapsed: float) -> None:  # fmt: skip
    """checkpoint.json: where the stage stands, replaced atomically after every generation."""
    write_json(path, {
        "stage": stage, "generation": generation, "evaluations": evaluations, "popsize": pop, "dims": dims,
        **search.state(), "best_fitness": best[0] if best else None,
        "best_recipe_hash": recipe_hash(best[1].recipe) if best else None, "elapsed_s": round(elapsed, 3),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })  # fmt: skip


def _out_of_time(stage: str, budget: Budget, elapsed: float, evaluated: int) -> bool:
    """True (and said) when the stage's ``max_hours`` of evaluation time are spent."""
    if budget.max_hours is None or elapsed < budget.max_hours * 3600:
        return False
    limit = f" of {budget.evaluations}" if budget.evaluations else ""
    logging.getLogger("evohub").info("stage %s: its max_hours budget (%g h of evaluation time) ended it after %d%s "
                                     "evaluations", stage, budget.max_hours, evaluated, limit)  # fmt: skip
    return True


def run_stage(
    stage: str,
    genome: Genome,
    optimizer: Optimizer,
    evaluator: Evaluator,
    log: Log,
    checkpoint: Path,
    seed: int,
    max_evals: int | None = None,
    on_generation: Callable[[int, list[dict]], None] | None = None,
) -> StageResult:
    """Run (or resume) one stage of the spec's optimiser; maximises fitness. ``max_evals`` caps the
    candidates *this call* evaluates: stopped by it, the result is not ``complete`` (resumable)."""
    budget = Budget.of(optimizer, genome.dims)
    pop, limit = budget.popsize, budget.evaluations
    search = OPTIMIZERS.get(optimizer.algorithm).create(genome.x0(), optimizer.sigma0, pop, stage_seed(seed, stage))
    logged = log.stage_rows(stage)
    elapsed = sum(r.get("seconds", 0.0) for r in logged)  # resumed runs count it all
    cap = len(logged) + max_evals if max_evals else None  # this call's evaluations end here
    generation, complete = 0, True
    best: tuple[float, Candidate] | None = None
    while not (limit is not None and generation * pop >= limit):
        if _out_of_time(stage, budget, elapsed, generation * pop):
            break
        if cap is not None and generation * pop >= cap:
            complete = False
            break
        X = search.ask()
        ends = [e for e in (limit, cap) if e is not None]
        n = min([pop] + [e - generation * pop for e in ends])  # the last generation may be cut
        cands = [Candidate(stage, generation, i, tuple(X[i]), genome.decode(X[i])) for i in range(n)]

        def record(c: Candidate, out: Outcome) -> None:
            nonlocal elapsed
            elapsed += out.seconds
            log.append(_row(c, out))

        if todo := _replayed(log, cands):
            evaluator.evaluate(todo, record)
        rows = [log.get(c.key) for c in cands]
        if any(r is None for r in rows):
            raise RunError(f"stage {stage}: the evaluator returned no result for some candidates")
        fitness = [r["fitness"] for r in rows]  # type: ignore[index]
        for c, f in zip(cands, fitness, strict=True):
            if f is not None and math.isfinite(f) and (best is None or f > best[0]):
                best = (f, c)
        if n == pop:  # a cut generation ends the stage and is not told
            search.tell(X, _penalised(fitness))
        generation += 1
        _checkpoint(checkpoint, stage, generation, (generation - 1) * pop + n, pop, genome.dims, search, best, elapsed)
        if on_generation:
            on_generation(generation - 1, rows)  # type: ignore[arg-type]
        if n < pop:
            complete = limit is not None and generation * pop - pop + n >= limit  # cut by the budget, or by the cap
            break
    if best is None:
        raise RunError(f"stage {stage}: no candidate was evaluated successfully (see {log.path})")
    return StageResult(stage, best[1], best[0], len(log.stage_rows(stage)), generation, complete)
