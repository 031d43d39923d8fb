"""``nsga2``: NSGA-II from pymoo over two or more of the fitness task's metrics (docs/design.md#optimisers).

The job names the objectives (``objectives: [acc, ja_rate]``): metrics the fitness task reports,
each maximised, or minimised with a ``-`` prefix. pymoo's ask/tell interface runs it; every random
number comes from the generator pymoo seeds from the stage seed (``setup(problem, seed=...)``), so a
resumed run that replays the log asks the same genotypes. The scalar fitness (the task's metric)
stays what is logged and what "best so far" means; :meth:`NSGA2.state` records the Pareto front of
the candidates told so far, and a stage's winner is chosen on its final front by the job's rule,
``select`` (a task metric, ``-`` to minimise; default the fitness) (:func:`front_rows`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from evohub.errors import RunError
from evohub.evolve.optimizers import OPTIMIZERS, OptimizerKind


def parse_objective(name: str) -> tuple[str, float]:
    """``acc`` -> (acc, +1: maximised); ``-mean_tokens`` -> (mean_tokens, -1: minimised)."""
    return (name[1:], -1.0) if name.startswith("-") else (name, 1.0)


def objective_values(objectives: Sequence[str], metrics: dict | None) -> list[float] | None:
    """The objectives of one candidate's metrics, each to maximise (a minimised one negated);
    None for a failed candidate (no metrics). A metric the task does not report is an error."""
    if not metrics:
        return None
    out = []
    for obj in objectives:
        name, sign = parse_objective(obj)
        if name not in metrics:
            known = ", ".join(sorted(metrics))
            raise RunError(f"optimizer.objectives: {name!r} is not a metric the fitness task reports ({known})")
        v = metrics[name]
        out.append(sign * float(v) if v is not None and math.isfinite(float(v)) else math.nan)
    return out


def nondominated_ranks(points: Sequence[Sequence[float]]) -> list[int]:
    """Each point's non-domination rank (0: the Pareto front), every objective maximised."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    if not len(points):
        return []
    F = -np.asarray(points, dtype=float)  # pymoo minimises
    return [int(r) for r in NonDominatedSorting().do(F, return_rank=True)[1]]


def _filled(values: Sequence[list[float] | None], k: int) -> np.ndarray:
    """Objective vectors to maximise, a failed candidate's (or a non-finite value) below every success."""
    arr = np.array([v if v is not None else [math.nan] * k for v in values], dtype=float).reshape(len(values), k)
    for j in range(k):
        col = arr[:, j]
        ok = np.isfinite(col)
        col[~ok] = (col[ok].min() - 1.0) if ok.any() else 0.0
    return arr


def front_rows(rows: Sequence[dict], objectives: Sequence[str], select: str | None = None) -> list[dict]:
    """The Pareto front of a stage's successful log rows (on their objectives), ordered by the
    winner rule: best ``select`` metric first (``-name``: lowest first; None: the fitness), ties by
    fitness, then earliest: the finalists a stage's winner is chosen among."""
    ok = [r for r in rows if r.get("error") is None and r["fitness"] is not None and math.isfinite(r["fitness"])]
    values = [objective_values(objectives, r.get("metrics")) for r in ok]
    ok = [r for r, v in zip(ok, values, strict=True) if v is not None]
    if not ok:
        return []
    ranks = nondominated_ranks(_filled([v for v in values if v is not None], len(objectives)))
    front = [r for r, k in zip(ok, ranks, strict=True) if k == 0]
    name, sign = parse_objective(select) if select else (None, 1.0)

    def rule(r: dict) -> float:
        v = r["fitness"] if name is None else (r.get("metrics") or {}).get(name)
        return sign * float(v) if v is not None and math.isfinite(float(v)) else -math.inf

    return sorted(front, key=lambda r: (-rule(r), -r["fitness"], r["generation"], r["index"]))


class NSGA2:
    """NSGA-II (pymoo) behind ask/tell; ``tell`` reads each candidate's metrics."""

    def __init__(self, x0: Sequence[float], sigma0: float, popsize: int, seed: int, objectives: Sequence[str]):
        from pymoo.algorithms.moo.nsga2 import NSGA2 as Algorithm
        from pymoo.core.problem import Problem

        self.objectives = tuple(objectives)
        self.popsize, self.dims = popsize, len(x0)
        problem = Problem(n_var=self.dims, n_obj=len(self.objectives), xl=0.0, xu=1.0)
        self.algorithm = Algorithm(pop_size=popsize)
        self.algorithm.setup(problem, termination=("n_gen", 2**62), seed=seed, verbose=False)
        self._pop = None
        self._told: list[tuple[int, int, list[float]]] = []  # (generation, index, objectives) of each told
        self._generation = 0

    def ask(self) -> list[list[float]]:
        pop = self.algorithm.ask()
        X = np.asarray(pop.get("X"), dtype=float)
        if len(X) < self.popsize:  # pymoo's mating may give fewer after removing duplicates: fill up
            from pymoo.core.population import Population

            extra = self.algorithm.random_state.random((self.popsize - len(X), self.dims))
            pop = Population.merge(pop, Population.new(X=extra))
            X = np.asarray(pop.get("X"), dtype=float)
        self._pop = pop[: self.popsize]
        return [[float(v) for v in x] for x in X[: self.popsize]]

    def tell(self, genotypes: Sequence[Sequence[float]], fitness: Sequence[float],
             metrics: Sequence[dict] | None = None, scores=None) -> None:  # fmt: skip
        from pymoo.core.evaluator import Evaluator
        from pymoo.problems.static import StaticProblem

        assert self._pop is not None and len(genotypes) == len(self._pop)
        if metrics is None:
            raise RunError("nsga2 needs each candidate's metrics at tell time")
        values = [objective_values(self.objectives, m) for m in metrics]
        F = _filled(values, len(self.objectives))
        Evaluator().eval(StaticProblem(self.algorithm.problem, F=-F), self._pop)  # pymoo minimises
        self.algorithm.tell(infills=self._pop)
        for i, v in enumerate(values):
            if v is not None and all(math.isfinite(x) for x in v):
                self._told.append((self._generation, i, v))
        self._generation += 1
        self._pop = None

    def recommend(self) -> None:
        return None  # its best candidates are its answer

    def state(self) -> dict:
        """The Pareto front of every candidate told so far: (generation, index) and objective values."""
        ranks = nondominated_ranks([v for _, _, v in self._told])
        front = [
            {"generation": g, "index": i, "objectives": [p * s for p, s in zip(v, self._signs(), strict=True)]}
            for (g, i, v), r in zip(self._told, ranks, strict=True)
            if r == 0
        ]
        return {"objectives": list(self.objectives), "front": front}

    def _signs(self) -> list[float]:
        return [parse_objective(o)[1] for o in self.objectives]


OPTIMIZERS.register(
    OptimizerKind(
        name="nsga2",
        doc="NSGA-II (pymoo), seeded; maximises >= 2 task metrics ('objectives', '-' minimises); "
        "winner: the final Pareto front's best on 'select' (default: the fitness)",
        fields=("popsize", "objectives", "select"),
        create=NSGA2,
        url="https://doi.org/10.1109/4235.996017",
    )
)
