"""Fitness estimators: which examples a candidate is scored on (docs/design.md#fitness-estimators).

An estimator picks, for each generation, the indices of the fitness rows every candidate of
that generation is scored on; the fitness is the task's metric on them. All candidates of a
generation see the same rows, so CMA-ES ranks them on equal terms, and the choice is a function
of the job seed alone, so a resumed run scores the same rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from evohub.registry import Registry


@dataclass(frozen=True)
class Estimator:
    name: str
    doc: str
    #: items(n_rows, limit, minibatch, seed, generation) -> sorted row indices
    items: Callable[[int, int | None, int | None, int, int], list[int]]


ESTIMATORS: Registry[Estimator] = Registry("fitness estimator", package="evohub.evolve.estimators")
