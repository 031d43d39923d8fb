"""The registries as tables: ``evohub list`` and the README's tables of what a job may name."""

from __future__ import annotations

from evohub.evolve.estimators import ESTIMATORS
from evohub.evolve.optimizers import OPTIMIZERS
from evohub.merging.methods import METHODS
from evohub.models import KINDS
from evohub.registry import Registry, markdown_table
from evohub.score.judges import JUDGES
from evohub.score.suites import SUITES
from evohub.score.tasks import TASKS

#: kind -> (title, registry, extra columns: header -> attribute)
KIND_TABLES: dict[str, tuple[str, Registry, dict[str, str]]] = {
    "methods": (
        "merge methods (`parameter_space.method`)",
        METHODS,
        {"takes": "params", "needs a base": "base", "options (`parameter_space.options`)": "option_list"},
    ),
    "tasks": ("fitness tasks (`fitness.task`)", TASKS, {"fitness": "fitness_metric", "options": "options"}),
    "estimators": (
        "fitness estimators (`fitness.estimator`)",
        ESTIMATORS,
        {"item scores": "needs", "options (`fitness.estimator_options`)": "defaults"},
    ),
    "optimisers": (
        "optimisers (`optimizer.algorithm`)",
        OPTIMIZERS,
        {"reads": "fields", "options (`optimizer.options`)": "defaults", "stages": "stages"},
    ),
    "judges": ("image judges (`fitness.judge`)", JUDGES, {"model": "repo"}),
    "suites": ("evaluation suites (`evaluation.suites`)", SUITES, {"task": "task", "dataset": "dataset_name"}),
    "kinds": ("model kinds (`publish.card`)", KINDS, {"pipeline": "pipeline_tag"}),
}


class _Row:
    """An entry seen through the table's columns (tuples joined, datasets named)."""

    def __init__(self, entry):
        self._e = entry

    def __getattr__(self, name: str):
        if name == "dataset_name":
            d = getattr(self._e, "dataset", None)
            return d.display() if d is not None else ""
        if name == "name" and getattr(self._e, "runner", None) == "lmeval" and self._e.name.endswith(":"):
            return self._e.name + "<task>"
        v = getattr(self._e, name, "")
        if isinstance(v, tuple):
            return ", ".join(v)
        if isinstance(v, bool):
            return "yes" if v else "no"
        return v


def _rows(registry: Registry) -> list[_Row]:
    return [_Row(e) for e in registry]


def markdown(kinds: list[str]) -> str:
    """Markdown tables of the given kinds (the README's "What a job may name")."""
    out = []
    for kind in kinds:
        title, registry, columns = KIND_TABLES[kind]
        out.append(f"**{title}**\n\n{markdown_table(_rows(registry), columns)}\n")
    return "\n".join(out)


def text(kinds: list[str]) -> str:
    """Plain lists of the given kinds (``evohub list``)."""
    out = []
    for kind in kinds:
        title, registry, _ = KIND_TABLES[kind]
        out.append(title.replace("`", ""))
        out += [f"  {r.name:<20} {r.doc}" for r in _rows(registry)]
    return "\n".join(out) + "\n"
