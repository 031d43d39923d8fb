"""``full``: the task's metric on the fitness rows, or on seeded subsets of them.

``limit`` draws a fixed subset once from the seed; ``minibatch`` draws a fresh subset of that
for each generation (the paper's DFS stage: 200 problems per generation).
"""

from __future__ import annotations

import random

from evohub.evolve.estimators import ESTIMATORS, Estimator


def fixed_subset(n: int, size: int | None, seed: int) -> list[int]:
    """Indices of the fixed fitness subset (all rows when ``size`` is None)."""
    if size is None or size >= n:
        return list(range(n))
    return sorted(random.Random(f"evohub-subset-{seed}").sample(range(n), size))


def minibatch(indices: list[int], size: int | None, seed: int, generation: int) -> list[int]:
    """The examples generation ``generation`` is scored on (fresh per generation)."""
    if size is None or size >= len(indices):
        return indices
    return sorted(random.Random(f"evohub-minibatch-{seed}-{generation}").sample(indices, size))


def items(n: int, limit: int | None, size: int | None, seed: int, generation: int) -> list[int]:
    return minibatch(fixed_subset(n, limit, seed), size, seed, generation)


ESTIMATORS.register(
    Estimator(
        name="full",
        doc="the task's metric on every fitness row (or the spec's `limit` subset, or a fresh `minibatch` per generation)",
        items=items,
    )
)
