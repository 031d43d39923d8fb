"""Fitness estimators: how a generation's candidates are scored (docs/design.md#fitness-estimators).

An estimator decides, for each generation, which fitness items each candidate is scored on and
what the optimiser is told. It runs in the driver: it asks a :class:`Context` to score
(candidate, items) calls — the context reuses any call the stage's score matrix already holds,
so a resumed run evaluates nothing twice — and returns one :class:`Estimate` per candidate.
Every choice is a function of the job seed and of logged scores, so resume is bit-identical.

``full`` scores every candidate on the generation's items (all, the ``limit`` subset, or a fresh
``minibatch``). The others (``race``, ``irt``, ``gmp-irt``) score less and are *audited*: every
``audit_every`` generations and at the stage's end the stage's ``audit_top`` best estimates are
scored on the whole item pool, and the stage's winner is chosen on those full scores (and on the
validation split), never on an estimate.

An entry is light (no torch): its ``create`` builds the per-stage strategy, ``planned_calls``
says which scoring calls a stage is expected to make (``evohub plan``'s cost model): each call
merges its candidate into the engine (or switches its path) once, then generates its items.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from evohub.registry import HasOptions, Option, Registry

#: The audit every non-``full`` estimator takes (docs/design.md#fitness-estimators).
AUDIT_OPTIONS = (
    Option(
        "audit_every", 10, "score the stage's best estimates on the whole item pool every this many generations", low=1
    ),
    Option("audit_top", 2, "how many of the stage's best estimates (distinct recipes) each audit scores", low=1),
)


@dataclass(frozen=True)
class PlanInputs:
    """What a stage's expected item evaluations depend on (``evohub plan``)."""

    n_items: int  # the item pool: every fitness row, or the ``limit`` subset
    popsize: int
    evaluations: int
    references: int  # reference models the stage can score (the base and the sources of a PS stage)
    minibatch: int | None = None
    complete: bool = True  # False: a capped night's share of the stage (no final audit)


@dataclass
class Estimate:
    """What one candidate of a generation got: ``fitness`` (the metric's scale; an estimate for a
    non-``full`` estimator), ``tell`` (what the optimiser is told, when it differs: a value that
    keeps a stopped candidate's rank), ``metrics`` and its ``error``."""

    fitness: float | None
    metrics: dict = field(default_factory=dict)
    error: str | None = None
    tell: float | None = None


class Call(Protocol):
    """One scoring call's result: the items, each one's score, the task's metrics on them."""

    items: tuple[int, ...]
    scores: list[float] | None
    fitness: float | None
    metrics: dict
    error: str | None


class Context(Protocol):
    """What a strategy may do and know in one stage (implemented by :mod:`evohub.evolve.search`)."""

    stage: str
    seed: int
    pool: list[int]  # the fitness items every full-set score is over (row indices)
    popsize: int
    mu: int  # the optimiser's parent number (CMA-ES: popsize // 2)
    item_range: tuple[float, float] | None  # the bounds of one item's score (None: unbounded)

    def score(self, calls: Sequence[tuple[object, Sequence[int]]], why: str = "fitness") -> list[Call]:
        """Score each (candidate, items) pair (logged calls are read back, never re-run)."""
        ...

    def references(self) -> list:
        """The stage's reference models as candidates (the base and each source of a PS stage)."""
        ...

    def full_rows(self, before: int) -> dict[tuple[int, int], list[float]]:
        """(generation, index) -> pool scores of every candidate fully scored before ``before``."""
        ...


class Strategy(Protocol):
    def generation(self, ctx: Context, generation: int, cands: Sequence) -> list[Estimate]: ...


@dataclass(frozen=True)
class Estimator(HasOptions):
    name: str
    doc: str
    #: (options, the spec's ``fitness.minibatch``) -> the strategy of one stage
    create: Callable[[dict, int | None], Strategy]
    #: (stage inputs, options) -> the stage's expected scoring calls, audits included
    planned_calls: Callable[[PlanInputs, dict], list[Calls]]
    options: tuple[Option, ...] = ()
    #: what the task's per-item scores must be: "any", "bounded" (a known range) or "binary"
    needs: str = "any"
    #: True for the estimators whose winner is picked on audited full-set scores
    audited: bool = True
    #: reference models a stage must offer (the base and sources of a parameter-space stage; a
    #: data-flow stage has none): the schema and the stage both check it
    min_references: int = 0

    owner = "the {name} estimator"  # names it in option messages


@dataclass(frozen=True)
class Calls:
    """``count`` scoring calls of ``items`` items each. A call is the unit of a candidate's cost on
    an engine: one merge (or path switch), then its items generated together, so it lasts at least
    as long as its longest answer (docs/design.md#cost-model)."""

    count: float
    items: int


def planned_items(calls: Sequence[Calls]) -> float:
    """The item evaluations of ``calls``."""
    return float(sum(c.count * c.items for c in calls))


def generations(inputs: PlanInputs) -> int:
    """The stage's generations, a last one cut short by the budget included (at least one)."""
    return max(1, -(-inputs.evaluations // max(inputs.popsize, 1)))


def audit_calls(inputs: PlanInputs, options: dict) -> Calls:
    """The audits' calls: one every ``audit_every`` generations and, for a stage that ends, one
    after its last (the same one when that is a multiple); each scores ``audit_top`` candidates
    on the pool (a candidate already scored in full costs nothing; counted in full here, an upper
    bound)."""
    g, every = generations(inputs), int(options["audit_every"])
    audits = g // every + (1 if inputs.complete and g % every else 0)
    return Calls(audits * int(options["audit_top"]), inputs.n_items)


ESTIMATORS: Registry[Estimator] = Registry("fitness estimator", package="evohub.evolve.estimators")
