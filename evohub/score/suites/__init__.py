"""Evaluation suites, one registry entry each (docs/design.md#suites).

A suite is what ``evaluation.suites`` and ``evohub evaluate --suite`` name: either a task's
protocol run on a dataset (``runner="task"``: ``mgsm-ja`` is ``ja-math`` on MGSM's Japanese
split), or lm-eval tasks (``runner="lmeval"``). Each suite names its Hub dataset once, here;
evaluation, the card and ``.eval_results`` read it from the entry.

    >>> find_suite("mgsm-ja").dataset.repo
    'juletxara/mgsm'
    >>> find_suite("lmeval:xwinograd_jp").lmeval_tasks
    ('xwinograd_jp',)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from evohub.errors import UnknownName
from evohub.registry import Registry


@dataclass(frozen=True)
class HubDataset:
    repo: str
    config: str | None = None
    split: str = "test"
    revision: str | None = None

    def display(self) -> str:
        return f"{self.repo}{':' + self.config if self.config else ''}[{self.split}]"


@dataclass(frozen=True)
class Suite:
    name: str
    doc: str
    runner: Literal["task", "lmeval"]
    #: runner "task": the fitness task whose protocol is run on the dataset's rows
    task: str | None = None
    #: where its examples come from; None: only from a local file (``evaluation.data``)
    dataset: HubDataset | None = None
    #: runner "lmeval": the lm-eval tasks or groups (a name ending in ``:`` takes one from the name)
    lmeval_tasks: tuple[str, ...] = ()
    #: needs a model that sees images (a VLM kind); skipped for others in a job
    vision: bool = False
    #: the job's fitness prompt and stop strings are used (a held-out split of the job's own task)
    job_prompt: bool = False
    #: the metric reported as the suite's result on the card and in .eval_results
    metric: str | None = None


SUITES: Registry[Suite] = Registry("evaluation suite", package="evohub.score.suites")


def find_suite(name: str) -> Suite:
    """The suite called ``name``; ``prefix:arg`` names a suite registered as ``prefix:`` with its
    one lm-eval task ``arg`` (``lmeval:xwinograd_jp``)."""
    if name in SUITES:
        return SUITES.get(name)
    prefix, sep, arg = name.partition(":")
    if sep and arg and f"{prefix}:" in SUITES:
        base = SUITES.get(f"{prefix}:")
        return dataclasses.replace(base, name=name, lmeval_tasks=(arg,))
    raise UnknownName(SUITES.unknown(name))


def suite_names() -> str:
    """``a | b | lmeval:<task>``: what --help and messages list."""
    return " | ".join(n + ("<task>" if n.endswith(":") else "") for n in SUITES.names())
