"""Optimisers behind one ask/tell interface, one registry entry each (docs/design.md#optimisers).

An optimiser searches the unit cube [0, 1]^n of a genome: :meth:`Search.ask` gives a
population of genotypes, :meth:`Search.tell` takes their fitness (higher is better), each
one's task metrics (a dict; empty for a failed candidate), which a multi-objective (``nsga2``)
or quality-diversity (``map-elites``) optimiser reads, and, for an entry with ``item_scores``
(``m2n2``), each one's per-item scores from the stage's score matrix (None for a failed
candidate). It draws every random number from a generator seeded from the job seed, so a run
resumed by replaying the log asks the same genotypes again (:mod:`evohub.evolve.search`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from evohub.registry import HasOptions, Option, Registry


class Search(Protocol):
    def ask(self) -> list[list[float]]: ...
    def tell(self, genotypes: Sequence[Sequence[float]], fitness: Sequence[float],
             metrics: Sequence[dict] | None = None,
             scores: Sequence[Sequence[float] | None] | None = None) -> None: ...  # fmt: skip
    def state(self) -> dict:
        """What the checkpoint records of the optimiser (e.g. its mean and step size)."""
        ...

    def recommend(self) -> list[float] | None:
        """The point the optimiser itself would return beside its best candidate, in the cube
        (CMA-ES: its distribution mean, pycma's ``xfavorite``), or None when it has none."""
        ...


@dataclass(frozen=True)
class OptimizerKind(HasOptions):
    name: str
    doc: str
    #: the job spec's optimizer fields this algorithm reads (beyond the budget)
    fields: tuple[str, ...]
    #: create(x0, sigma0, popsize, seed, **the other ``fields``: e.g. objectives; ``options``:
    #: the settings, defaults filled in, when the entry has any; ``genome``: the stage's genome,
    #: when ``genome`` is True) -> Search
    create: Callable[..., Search]
    url: str | None = None
    #: its settings (``optimizer.options``)
    options: tuple[Option, ...] = ()
    #: tell() reads each candidate's per-item scores: every candidate must be scored on the same
    #: items (the ``full`` estimator without a minibatch)
    item_scores: bool = False
    #: create() reads the stage's genome (its slots, the sources' genotypes)
    genome: bool = False
    #: the stages it can search ("ps": parameter space, "dfs": data-flow space)
    stages: tuple[str, ...] = ("ps", "dfs")

    owner = "optimiser {name}"  # names it in option messages


OPTIMIZERS: Registry[OptimizerKind] = Registry("optimiser", package="evohub.evolve.optimizers")
