"""``full`` and ``minibatch``: the task's metric on the fitness rows, or on seeded subsets of them.

``limit`` draws a fixed subset once from the seed (the item pool of every estimator); ``full``'s
``fitness.minibatch`` draws a fresh subset of that for each generation (the paper's DFS stage: 200
problems per generation). Every candidate of a generation is scored on the same items and told the
task's metric on them; the stage's best fitness wins, as in the paper (with a validation split,
the winner rule picks among its finalists: docs/design.md#fitness-estimators).

The ``minibatch`` estimator scores and tells the same (a fresh ``size``-item subset per generation),
and is *audited*: its stage's winner comes from candidates scored on the whole pool, never from
the best of many noisy minibatch estimates (docs/design.md#fitness-estimators).
"""

from __future__ import annotations

import random

from evohub.evolve.estimators import (
    AUDIT_OPTIONS,
    ESTIMATORS,
    Calls,
    Estimate,
    Estimator,
    Option,
    PlanInputs,
    audit_calls,
)


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


class Full:
    def __init__(self, minibatch_size: int | None):
        self.size = minibatch_size

    def generation(self, ctx, generation: int, cands) -> list[Estimate]:
        items = minibatch(ctx.pool, self.size, ctx.seed, generation)
        calls = ctx.score([(c, items) for c in cands])
        return [Estimate(c.fitness, c.metrics, c.error) for c in calls]


def planned_calls(inputs: PlanInputs, options: dict) -> list[Calls]:
    per = min(inputs.minibatch, inputs.n_items) if inputs.minibatch else inputs.n_items
    return [Calls(inputs.evaluations, per)]


ESTIMATORS.register(
    Estimator(
        name="full",
        doc="the task's metric on every fitness row (or the spec's `limit` subset, or a fresh `minibatch` per generation)",
        create=lambda options, minibatch_size: Full(minibatch_size),
        planned_calls=planned_calls,
        audited=False,
    )
)


def planned_minibatch(inputs: PlanInputs, options: dict) -> list[Calls]:
    return [Calls(inputs.evaluations, min(int(options["size"]), inputs.n_items)), audit_calls(inputs, options)]


ESTIMATORS.register(
    Estimator(
        name="minibatch",
        doc="a fresh seeded subset of the pool per generation, the same for all its candidates; audited",
        create=lambda options, minibatch_size: Full(int(options["size"])),
        planned_calls=planned_minibatch,
        options=(
            Option("size", 100, "items each generation's candidates are scored on (a fresh draw each)", low=1),
            *AUDIT_OPTIONS,
        ),
    )
)
