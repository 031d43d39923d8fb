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
        at = f"@{self.revision[:12]}" if self.revision else ""
        return f"{self.repo}{':' + self.config if self.config else ''}[{self.split}]{at}"


@dataclass(frozen=True)
class Reported:
    """One number a suite reports, registered once: the card's table, ``results.json``'s scores,
    ``.eval_results`` and ``model-index`` all read it from here (docs/design.md#reported-results).

    ``task`` is the lm-eval task whose results hold ``metric`` (lm-eval suites) or None (a task
    suite: ``metric`` is one of the task's metrics); ``scale`` turns the value into 0-100."""

    name: str  # as shown: "JComQA"
    metric: str  # the key in the results: "acc,none", "acc_ja"
    scale: float  # 100 for a 0-1 metric, 1 for one already on 0-100
    dataset: HubDataset
    task: str | None = None
    metric_type: str = "accuracy"  # the Hub's metric type: accuracy, exact_match, rouge


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
    #: what the suite reports, each on 0-100 (docs/design.md#reported-results)
    reports: tuple[Reported, ...] = ()
    #: the name of the mean of ``reports`` when the suite has one ("JP-LMEH average")
    average: str | None = None
    #: published figures of the average (or of the one reported number): (model, value, where)
    references: tuple[tuple[str, float, str], ...] = ()
    #: tasks whose prompt version a job chooses (``evaluation.prompt_version``)
    prompt_versions: bool = False


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


def scores(suite: Suite, metrics: dict, local: frozenset[str] | set[str] = frozenset()) -> dict:
    """A suite's reported numbers on 0-100 from its raw ``metrics`` (what ``evaluate`` stores):
    ``{"scores": [{name, metric, value, dataset | local}], "average": x}``. A number whose
    data came from a local file (``local`` names the task or suite) says so instead of naming the
    Hub dataset. The average is the plain mean of the unrounded scores, rounded to two places, as
    jp-stable's ``compute_average_from_json.py`` computes it; it is left out unless every
    reported number is there."""
    rows = []
    for r in suite.reports:
        res = (metrics.get("lm_eval") or {}).get(r.task, {}) if r.task else metrics
        value = res.get(r.metric)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        where = {"local": True} if (r.task or suite.name) in local else {"dataset": r.dataset.display()}
        rows.append({"name": r.name, "metric": r.metric.split(",")[0], "value": r.scale * float(value), **where})
    out: dict = {"scores": [dict(x, value=round(x["value"], 2)) for x in rows]}
    if suite.average and rows and len(rows) == len(suite.reports):
        out["average"] = round(sum(x["value"] for x in rows) / len(rows), 2)
    return out


def suite_names() -> str:
    """``a | b | lmeval:<task>``: what --help and messages list."""
    return " | ".join(n + ("<task>" if n.endswith(":") else "") for n in SUITES.names())
