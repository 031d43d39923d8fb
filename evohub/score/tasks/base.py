"""What a fitness task is (:class:`Task`), the registry of them, and what scoring returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from evohub.registry import Registry


@dataclass(frozen=True)
class Published:
    """How a task's fitness metric is published (``.eval_results``, ``model-index``)."""

    metric_type: str  # "accuracy", "rouge"
    task_type: str  # the Hub's task: "text-generation", "image-text-to-text"
    scale: float  # published value = scale * metric
    notes: str


@dataclass
class Scored:
    """A task's metrics on some examples, and one record per example."""

    metrics: dict[str, float]
    samples: list[dict] = field(default_factory=list)
    #: each example's contribution to the fitness metric, in row order (the score matrix's
    #: entries: docs/design.md#per-item-scores-and-the-cost-ledger); None where a task has none
    items: list[float] | None = None
    #: what a generative-image task made, one per example (PIL images; for the evaluation's grid)
    images: list | None = None


class Task(Protocol):
    """A fitness task. Registered classes are built as ``cls(**options)`` from the job spec's
    ``fitness`` fields named in ``options``."""

    name: ClassVar[str]
    doc: ClassVar[str]
    #: the metric evolution maximises
    fitness_metric: ClassVar[str]
    #: the ``fitness`` fields of a job spec this task takes (e.g. ``prompt``, ``stop``)
    options: ClassVar[tuple[str, ...]]
    #: scoring backends that can run it
    backends: ClassVar[tuple[str, ...]]
    #: the protocol's generation budget (None: the task does not generate)
    max_new_tokens: ClassVar[int | None]
    #: metrics shown in tables and on the card, in order
    shown: ClassVar[tuple[str, ...]]
    #: optional: every metric ``run`` reports, so the schema can check a multi-objective optimiser's
    #: ``objectives`` (a task without it is checked at its first outcome)
    # metrics: ClassVar[tuple[str, ...]]
    #: optional: the beams the protocol decodes with (absent: one, greedy or sampled)
    # beams: ClassVar[int]
    #: the range of one example's score in ``Scored.items`` (None: unbounded), and whether every
    #: one is 0 or 1: what the cheaper fitness estimators need (``Estimator.needs``)
    item_range: ClassVar[tuple[float, float] | None]
    item_binary: ClassVar[bool]

    def check(self, rows: Sequence[dict]) -> None:
        """Raise a one-line ScoreError for the first row the task cannot score."""
        ...

    def score(self, backend, rows: list[dict], max_new_tokens: int | None = None, batch_size: int = 16) -> dict: ...

    def run(self, backend, rows: list[dict], max_new_tokens: int | None = None, batch_size: int = 16) -> Scored:
        """The metrics, one record per example and ``items`` (each example's score)."""
        ...


TASKS: Registry = Registry("fitness task", package="evohub.score.tasks")


def get_task(name: str, **options) -> Task:
    """The task a job spec's ``fitness.task`` names, built with the options it takes (others,
    and None values, are left out)."""
    cls = TASKS.get(name)
    return cls(**{k: v for k, v in options.items() if k in cls.options and v is not None})
