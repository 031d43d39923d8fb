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
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from evohub.errors import RunError
from evohub.evolve.estimators import ESTIMATORS, Estimate
from evohub.evolve.genome import Budget, Genome
from evohub.evolve.matrix import COST_FIELDS, ScoreMatrix, totals
from evohub.evolve.optimizers import OPTIMIZERS
from evohub.evolve.optimizers.nsga2 import front_rows
from evohub.files import append_jsonl, read_jsonl, write_json
from evohub.spec import Optimizer, Recipe


def recipe_hash(recipe: Recipe) -> str:
    return hashlib.sha256(recipe.to_yaml().encode()).hexdigest()[:16]


def stage_seed(seed: int, stage: str) -> int:
    """CMA's seed for a stage, derived from the job seed."""
    return int.from_bytes(hashlib.blake2b(f"evohub-cma-{seed}-{stage}".encode(), digest_size=4).digest(), "little") or 1


@dataclass
class Outcome:
    """What evaluating one candidate on some items gave: the task's metric and metrics on them,
    each item's score (``scores``, in the items' order) and what it cost (``cost``: the
    :data:`~evohub.evolve.matrix.COST_FIELDS` but ``seconds``)."""

    fitness: float | None
    metrics: dict = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    scores: list[float] | None = None
    cost: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Candidate:
    stage: str
    generation: int
    index: int
    genotype: tuple[float, ...]
    recipe: Recipe
    split: str = "fitness"  # or "validation", when the final choice is re-scored
    #: the fitness rows to score (None: every row of the split)
    items: tuple[int, ...] | None = None

    @property
    def key(self) -> tuple[str, int, int]:
        return self.stage, self.generation, self.index


class Log:
    """candidates.jsonl: append-only, one row per candidate, each row flushed and fsynced."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict] = read_jsonl(path, "the log")
        self._index = {(r["stage"], r["generation"], r["index"]): r for r in self.rows}

    def get(self, key: tuple[str, int, int]) -> dict | None:
        return self._index.get(key)

    def append(self, row: dict) -> None:
        append_jsonl(self.path, row)
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
    #: an audited estimator's rows with a full-set score (``full``), best first: the finalists
    #: the winner is chosen among (None for ``full``: every row's fitness is a full score)
    ranked: list[dict] | None = None
    #: a multi-objective optimiser's final Pareto front (log rows), best fitness first: the
    #: finalists the winner is chosen among (docs/design.md#optimisers; None for one objective)
    front: list[dict] | None = None
    #: the optimiser's own answer beside its candidates (CMA-ES: its final mean; ``Search.recommend``),
    #: a finalist when a validation split chooses the winner
    recommended: tuple[float, ...] | None = None


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


@dataclass(frozen=True)
class Scoring:
    """How a stage scores its candidates (docs/design.md#fitness-estimators): the estimator and
    its settings, the item pool every full-set score is over (None: the evaluator scores the rows
    it has, as synthetic evaluators do), the range of one item's score and whether it is 0 or 1,
    the reference models (name, recipe) an estimator may calibrate on, and the score matrix's file."""

    estimator: str = "full"
    options: dict = field(default_factory=dict)
    minibatch: int | None = None
    pool: tuple[int, ...] | None = None
    item_range: tuple[float, float] | None = None
    item_binary: bool = False
    references: tuple[tuple[str, Recipe], ...] = ()
    matrix: Path | None = None


@dataclass
class _Call:
    items: tuple[int, ...] | None
    scores: list[float] | None
    fitness: float | None
    metrics: dict
    error: str | None


class _Context:
    """What an estimator's strategy sees of a stage (:class:`evohub.evolve.estimators.Context`)."""

    def __init__(self, stage: str, seed: int, scoring: Scoring, evaluator: Evaluator, matrix: ScoreMatrix,
                 popsize: int, after_call: Callable[[dict], None] | None):  # fmt: skip
        self.stage, self.seed, self.evaluator, self.matrix = stage, seed, evaluator, matrix
        self.pool = list(scoring.pool) if scoring.pool is not None else None
        self.item_range = scoring.item_range
        self.popsize, self.mu = popsize, max(1, popsize // 2)
        self._references = scoring.references
        self.after_call = after_call
        self.generation = 0  # the generation being run (a call's ``at``)

    def references(self) -> list[Candidate]:
        return [Candidate(self.stage, -1, k, (), recipe) for k, (_, recipe) in enumerate(self._references)]

    def full_rows(self, before: int) -> dict[tuple[int, int], list[float]]:
        return self.matrix.full_rows(self.pool or [], before)

    def score(self, calls, why: str = "fitness") -> list[_Call]:
        out: list[_Call | None] = [None] * len(calls)
        todo: dict[tuple, tuple[int, Candidate]] = {}
        for k, (cand, items) in enumerate(calls):
            items = None if items is None else tuple(items)
            row = self.matrix.get(cand.generation, cand.index, items)
            if row is not None:
                out[k] = _call(row)
            else:
                c = replace(cand, items=items)
                todo[self.matrix.key(c.generation, c.index, items)] = (k, c)
        if todo:

            def done(c: Candidate, o: Outcome) -> None:
                row = {"g": c.generation, "i": c.index, "at": self.generation, "why": why,
                       "items": None if c.items is None else list(c.items), "scores": o.scores,
                       "fitness": o.fitness, "metrics": o.metrics, "error": o.error,
                       **{f: o.cost.get(f, 0) for f in COST_FIELDS if f not in ("items", "seconds")},
                       "seconds": round(o.seconds, 4)}  # fmt: skip
                if c.generation < 0:
                    row["ref"] = self._references[c.index][0]
                row = self.matrix.append(row)
                out[todo[self.matrix.key(c.generation, c.index, c.items)][0]] = _call(row)
                if self.after_call:
                    self.after_call(row)

            self.evaluator.evaluate([c for _, c in todo.values()], done)
        if any(o is None for o in out):
            raise RunError(f"stage {self.stage}: the evaluator returned no result for some candidates")
        return out  # type: ignore[return-value]


def _call(row: dict) -> _Call:
    items = None if row["items"] is None else tuple(row["items"])
    return _Call(items, row.get("scores"), row.get("fitness"), row.get("metrics") or {}, row.get("error"))


def _row(c: Candidate, est: Estimate, calls: list[dict]) -> dict:
    """The candidates.jsonl row of ``c``: the estimate, and the summed cost of its calls."""
    cost = totals(calls)
    row = {
        "stage": c.stage, "generation": c.generation, "index": c.index,
        "genotype": list(c.genotype), "recipe_hash": recipe_hash(c.recipe),
        "fitness": est.fitness, "metrics": est.metrics, "error": est.error,
        **{f: cost[f] for f in COST_FIELDS},
    }  # fmt: skip
    if est.tell is not None and est.tell != est.fitness:
        row["tell"] = est.tell
    return row


def _checkpoint(path: Path, stage: str, generation: int, evaluations: int, pop: int, dims: int, search,
                best: tuple[float, Candidate] | None, elapsed: float, extra: dict) -> None:  # fmt: skip
    """checkpoint.json: where the stage stands, replaced atomically after every generation."""
    write_json(path, {
        "stage": stage, "generation": generation, "evaluations": evaluations, "popsize": pop, "dims": dims,
        **search.state(), "best_fitness": best[0] if best else None,
        "best_recipe_hash": recipe_hash(best[1].recipe) if best else None, "elapsed_s": round(elapsed, 3),
        **extra, "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })  # fmt: skip


def _out_of_time(stage: str, budget: Budget, elapsed: float, evaluated: int) -> bool:
    """True (and said) when the stage's ``max_hours`` of evaluation time are spent."""
    if budget.max_hours is None or elapsed < budget.max_hours * 3600:
        return False
    limit = f" of {budget.evaluations}" if budget.evaluations else ""
    logging.getLogger("evohub").info("stage %s: its max_hours budget (%g h of evaluation time) ended it after %d%s "
                                     "evaluations", stage, budget.max_hours, evaluated, limit)  # fmt: skip
    return True


def _ok(f) -> bool:
    return f is not None and math.isfinite(f)


def distinct_best(rows: Sequence[dict], k: int) -> list[dict]:
    """The first ``k`` of ``rows`` (best first) with distinct recipes (``recipe_hash``)."""
    seen, top = set(), []
    for r in rows:
        if r["recipe_hash"] not in seen:
            seen.add(r["recipe_hash"])
            top.append(r)
        if len(top) == k:
            break
    return top


class _Audit:
    """The audits of a non-``full`` estimator: the stage's ``audit_top`` best estimates (distinct
    recipes, among generations up to the audit's) scored on the whole item pool."""

    def __init__(self, ctx: _Context, log: Log, genome: Genome, options: dict):
        self.ctx, self.log, self.genome = ctx, log, genome
        self.every, self.top = int(options["audit_every"]), int(options["audit_top"])

    def run(self, stage: str, last: int) -> None:
        rows = [r for r in self.log.stage_rows(stage) if r["generation"] <= last and _ok(r["fitness"])]
        top = distinct_best(sorted(rows, key=lambda r: (-r["fitness"], r["generation"], r["index"])), self.top)
        calls = []
        for r in top:
            known = self.ctx.matrix.known(r["generation"], r["index"])
            missing = [j for j in self.ctx.pool or [] if j not in known]
            if missing:
                c = Candidate(
                    stage, r["generation"], r["index"], tuple(r["genotype"]), self.genome.decode(r["genotype"])
                )
                calls.append((c, missing))
        self.ctx.generation = last
        self.ctx.score(calls, why="audit")

    def standing(self, stage: str) -> tuple[tuple[float, Candidate] | None, dict]:
        """(the best candidate by full-set score, the checkpoint's :meth:`state`) after the audits so far."""
        ranked = self.full(stage)
        return _best(ranked, "full", self.genome), self.state(ranked)

    @staticmethod
    def state(ranked: list[dict]) -> dict:
        """What the checkpoint says of the audits: every full-set score so far (``full``'s rows)."""
        return {"audited": {f"{r['generation']}/{r['index']}": r["full"] for r in ranked}}

    def full(self, stage: str) -> list[dict]:
        """The stage's rows with a full-set score (``full``, over ``full_items`` items), best first."""
        out, pool = [], self.ctx.pool or []
        for r in self.log.stage_rows(stage):
            f = self.ctx.matrix.full_score(r["generation"], r["index"], pool)
            if f is not None:
                out.append(r | {"full": f, "full_items": len(pool)})
        return sorted(out, key=lambda r: (-r["full"], r["generation"], r["index"]))


class _Signal:
    """Says when a stage's estimates can hardly rank its candidates: for ``BLIND_AFTER`` generations
    in a row, candidates scored on part of the pool got under ``FEW_RIGHT`` of their items right on
    average (a task whose items score 0 or 1). A count of 0, 1 or 2 ranks them mostly by ties and chance,
    so the optimiser drifts where a full-set score would still lead it: on the demo world a start
    point that answers 2 % of the problems kept a 32-item minibatch there for 40 generations, where
    `full` left it in 4-11 (bench/README.md, "Cheaper fitness"). Said once a stage (again on resume)."""

    BLIND_AFTER, FEW_RIGHT = 3, 2.0

    def __init__(self, stage: str, pool: int | None, binary: bool):
        self.stage, self.pool, self.binary = stage, pool, binary
        self.streak, self.said = 0, False

    def see(self, generation: int, matrix: ScoreMatrix, cands: list[Candidate]) -> None:
        """Count the right answers of ``cands`` in this generation's fitness calls (what they were
        scored on: an estimator's estimate, IRT's, may stand for more)."""
        if not self.binary or self.said:
            return
        scored = []
        for c in cands:
            calls = [
                r for r in matrix.fitness_calls(c.generation, c.index) if r.get("error") is None and r.get("scores")
            ]
            if calls:
                scored.append((sum(sum(r["scores"]) for r in calls), sum(len(r["scores"]) for r in calls)))
        if not scored:
            return
        items = max(n for _, n in scored)
        right = sum(k for k, _ in scored) / len(scored)
        self.streak = self.streak + 1 if self.pool and items < self.pool and right < self.FEW_RIGHT else 0
        if self.streak == self.BLIND_AFTER:
            self.said = True
            logging.getLogger("evohub").warning(
                "stage %s: in generations %d-%d its candidates got %.1f of their %d items right on average: too few "
                "to rank them, so the search drifts (is the start point a broken merge?); more items a generation "
                "(a minibatch's size, the anchors) or the full estimator would tell them apart",
                self.stage, generation - self.BLIND_AFTER + 1, generation, right, items)  # fmt: skip


def _generation_rows(ctx: _Context, strategy, audited: bool, log: Log, cands: list[Candidate],
                     generation: int) -> list[dict]:  # fmt: skip
    """The log rows of a generation's candidates: logged ones as they are (their genotypes
    checked), the others estimated by the strategy and appended with the cost of their calls."""
    todo = _replayed(log, cands)
    if todo:
        ctx.generation = generation
        # ``full`` scores each candidate alone: only the unlogged ones; the other estimators rank
        # a generation together, reading what the matrix holds for the logged ones
        batch = cands if audited else todo
        for c, est in zip(batch, strategy.generation(ctx, generation, batch), strict=True):
            if c in todo:
                mine = ctx.matrix.fitness_calls(c.generation, c.index)
                log.append(_row(c, est, mine))
    rows = [log.get(c.key) for c in cands]
    if any(r is None for r in rows):
        raise RunError(f"{ctx.stage}: the evaluator returned no result for some candidates")
    return rows  # type: ignore[return-value]


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
    scoring: Scoring | None = None,
    on_call: Callable[[dict], None] | None = None,
) -> StageResult:
    """Run (or resume) one stage of the spec's optimiser; maximises fitness. ``max_evals`` caps the
    candidates *this call* evaluates: stopped by it, the result is not ``complete`` (resumable).
    ``scoring`` says how candidates are scored (default: ``full`` on the evaluator's rows);
    ``on_call(row)`` sees each new score-matrix row (a progress bar). The stage's best is the best
    fitness, or for an audited estimator the best full-set score (docs/design.md#fitness-estimators),
    or for a multi-objective optimiser the best fitness on the final Pareto front (``front``).
    It is over 60 lines: one generation's steps (budget and cap, ask, estimate, tell, audit, checkpoint)
    read in order in one loop, which resuming depends on."""
    scoring = scoring or Scoring()
    estimator = ESTIMATORS.get(scoring.estimator)
    options = estimator.settings(scoring.options)
    strategy = estimator.create(options, scoring.minibatch)
    if len(scoring.references) < estimator.min_references:
        raise RunError(f"stage {stage}: {scoring.estimator} needs {estimator.min_references} reference models "
                       f"(the sources of a parameter-space stage); this stage has {len(scoring.references)}")  # fmt: skip
    budget = Budget.of(optimizer, genome.dims)
    pop, limit = budget.popsize, budget.evaluations
    kind = OPTIMIZERS.get(optimizer.algorithm)
    # what the algorithm reads beyond the start; ``select`` is the stage's winner rule, applied below
    more = {f: getattr(optimizer, f) for f in kind.fields if f not in ("x0", "sigma0", "popsize", "options", "select")}
    if "options" in kind.fields:
        more["options"] = kind.settings(optimizer.options)
    if kind.genome:
        more["genome"] = genome
    search = kind.create(genome.x0(), optimizer.sigma0, pop, stage_seed(seed, stage), **more)
    matrix = ScoreMatrix(scoring.matrix)
    ctx = _Context(stage, seed, scoring, evaluator, matrix, pop, on_call)
    audit = _Audit(ctx, log, genome, options) if estimator.audited else None
    signal = _Signal(stage, len(ctx.pool) if ctx.pool is not None else None, scoring.item_binary)

    def elapsed(before: int) -> float:
        """The evaluation time of the generations before ``before`` (their audits included): what
        the run had spent there, so a resumed run replays its time budget as it was."""
        if matrix.rows:
            return sum(r.get("seconds") or 0.0 for r in matrix.rows if r["at"] < before)
        return sum(r.get("seconds", 0.0) for r in log.stage_rows(stage) if r["generation"] < before)

    def save(evaluated: int) -> None:  # checkpoint.json after a generation (or the final audit)
        extra = {"estimator": scoring.estimator, "cost": matrix.cost()} | audited
        _checkpoint(checkpoint, stage, generation, evaluated, pop, genome.dims, search, best, spent, extra)

    cap = len(log.stage_rows(stage)) + max_evals if max_evals else None  # this call's evaluations end here
    generation, complete, spent = 0, True, 0.0
    best: tuple[float, Candidate] | None = None
    audited: dict = {}
    while not (limit is not None and generation * pop >= limit):
        if _out_of_time(stage, budget, spent, generation * pop):
            if audit is not None and generation % audit.every:
                audit.run(stage, generation - 1)  # the time budget ended it: the final audit
                (best, audited), spent = audit.standing(stage), elapsed(generation)
                save(generation * pop)
            break
        if cap is not None and generation * pop >= cap:
            complete = False
            break
        X = search.ask()
        # the cap cuts a generation for ``full``; an estimator that ranks a generation together
        # finishes it (a capped call may then score up to popsize − 1 more candidates)
        ends = [e for e in (limit, cap if audit is None else None) if e is not None]
        n = min([pop] + [e - generation * pop for e in ends])  # the last generation may be cut
        cands = [Candidate(stage, generation, i, tuple(X[i]), genome.decode(X[i])) for i in range(n)]
        rows = _generation_rows(ctx, strategy, audit is not None, log, cands, generation)
        signal.see(generation, matrix, cands)
        if n == pop:  # a cut generation ends the stage and is not told
            search.tell(X, _penalised([r.get("tell", r["fitness"]) for r in rows]),
                        [(r.get("metrics") or {}) if r.get("error") is None else {} for r in rows],
                        _item_scores(matrix, cands, rows, scoring.item_range) if kind.item_scores else None)  # fmt: skip
        generation += 1
        done = limit is not None and generation * pop - pop + n >= limit
        if audit is not None:
            if generation % audit.every == 0 or done:
                audit.run(stage, generation - 1)
            best, audited = audit.standing(stage)
        for c, r in zip(cands, rows, strict=True) if audit is None else ():
            if _ok(r["fitness"]) and (best is None or r["fitness"] > best[0]):
                best = (r["fitness"], c)
        spent = elapsed(generation)
        save((generation - 1) * pop + n)
        if on_generation:
            on_generation(generation - 1, rows)
        if n < pop:
            complete = done  # cut by the budget, or by the cap
            break
    ranked = audit.full(stage) if audit is not None else None
    if ranked is not None:
        best = _best(ranked, "full", genome)
        if best is None and not complete:  # a capped call before any audit: nothing is chosen from it
            best = _best(sorted((r for r in log.stage_rows(stage) if _ok(r["fitness"])), key=lambda r: -r["fitness"]),
                         "fitness", genome)  # fmt: skip
    front = None
    if optimizer.objectives:  # a multi-objective stage: the best fitness on its final Pareto front
        front = front_rows(log.stage_rows(stage), optimizer.objectives, optimizer.select)
        best = _best(front, "fitness", genome) or best
    if best is None and ranked is not None and any(_ok(r["fitness"]) for r in log.stage_rows(stage)):
        raise RunError(f"stage {stage}: no audit scored a candidate on the whole item pool, and the winner is "
                       f"chosen on such scores (the audit rows of {matrix.path} say why)")  # fmt: skip
    if best is None:
        raise RunError(f"stage {stage}: no candidate was evaluated successfully (see {log.path})")
    rec = search.recommend()
    return StageResult(stage, best[1], best[0], len(log.stage_rows(stage)), generation, complete, ranked, front,
                       None if rec is None else tuple(rec))  # fmt: skip


def _item_scores(matrix: ScoreMatrix, cands: list[Candidate], rows: list[dict],
                 item_range: tuple[float, float] | None) -> list[list[float] | None]:  # fmt: skip
    """Each candidate's fitness scores item by item (in item order, mapped to [0, 1] where the task
    bounds an item's score), from its generation's calls in the score matrix; None for a failed one."""
    out: list[list[float] | None] = []
    lo, hi = item_range or (0.0, 1.0)
    for c, r in zip(cands, rows, strict=True):
        known: dict[int, float] = {}
        for call in matrix.fitness_calls(c.generation, c.index):
            if call.get("scores") is not None:
                known.update(zip(call["items"] or range(len(call["scores"])), call["scores"], strict=True))
        if r.get("error") is None and _ok(r["fitness"]) and not known:
            raise RunError(f"stage {c.stage}: the optimiser compares item scores, and the evaluator gave none "
                           f"for candidate {c.generation}/{c.index}")  # fmt: skip
        out.append([(known[j] - lo) / (hi - lo) for j in sorted(known)] if r.get("error") is None and known else None)
    return out


def _best(ranked: list[dict], score: str, genome: Genome) -> tuple[float, Candidate] | None:
    """The first of ``ranked`` log rows (best first) as (its ``score``, its candidate)."""
    if not ranked:
        return None
    r = ranked[0]
    return r[score], Candidate(r["stage"], r["generation"], r["index"], tuple(r["genotype"]),
                               genome.decode(r["genotype"]))  # fmt: skip
