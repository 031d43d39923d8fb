"""Optimisers behind one ask/tell interface, one registry entry each (docs/design.md#optimisers).

An optimiser searches the unit cube [0, 1]^n of a genome: :meth:`Search.ask` gives a
population of genotypes, :meth:`Search.tell` takes their fitness (higher is better) and each
one's task metrics (a dict; empty for a failed candidate), which a multi-objective optimiser
(``nsga2``) ranks on and the others ignore. It draws
every random number from a generator seeded from the job seed, so a run resumed by replaying the
log asks the same genotypes again (:mod:`evohub.evolve.search`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from evohub.registry import Registry


class Search(Protocol):
    def ask(self) -> list[list[float]]: ...
    def tell(self, genotypes: Sequence[Sequence[float]], fitness: Sequence[float],
             metrics: Sequence[dict] | None = None) -> None: ...  # fmt: skip
    def state(self) -> dict:
        """What the checkpoint records of the optimiser (e.g. its mean and step size)."""
        ...


@dataclass(frozen=True)
class OptimizerKind:
    name: str
    doc: str
    #: the job spec's optimizer fields this algorithm reads (beyond the budget)
    fields: tuple[str, ...]
    #: create(x0, sigma0, popsize, seed, **the other ``fields``: e.g. objectives) -> Search
    create: Callable[..., Search]
    url: str | None = None


OPTIMIZERS: Registry[OptimizerKind] = Registry("optimiser", package="evohub.evolve.optimizers")
