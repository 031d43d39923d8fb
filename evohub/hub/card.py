"""Model cards: a Jinja template of ``cards/`` (``llm``, ``vlm``; both extend ``base.md.j2``)
rendered into a huggingface_hub ``ModelCard``, with the metadata and eval results the Hub reads.

    >>> text, files = render_card(meta, context)      # doctest: +SKIP

Metadata (``ModelCardData``): ``base_model`` (the Hub sources), ``base_model_relation: merge``,
tags, language, licence, library and pipeline, datasets, and every evaluation result twice: as
``.eval_results/*.yaml`` (the Hub's current format, built with ``EvalResultEntry``: one entry per
reported number, with its dataset's id and revision) and as ``model-index`` for older tools, both
keyed by the Hub dataset (docs/design.md#reported-results). What goes in is plain data (:class:`CardMeta`); the run layer
gathers it (:mod:`evohub.pipeline.publish`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import yaml
from huggingface_hub import EvalResult, EvalResultEntry, ModelCard, ModelCardData, eval_result_entries_to_yaml

from evohub.errors import HubError

#: the templates: ``evohub/hub/cards`` links to the repository's ``cards/``; wheels carry a copy
CARDS = Path(__file__).parent / "cards"
TAGS = ["merge", "evolutionary-model-merge", "evohub"]


@dataclass(frozen=True)
class Result:
    """One result of the evolved model on a Hub dataset (an ``EvalResultEntry``), on 0-100."""

    dataset_id: str
    task_id: str
    config: str | None
    split: str
    metric: str
    metric_type: str
    value: float
    task_type: str
    notes: str
    revision: str | None = None


@dataclass
class CardMeta:
    repo_id: str
    template: str  # cards/<template>.md.j2
    pipeline_tag: str
    base_models: list[str]
    language: list[str]
    license: str | None
    datasets: list[str]
    results: list[Result] = field(default_factory=list)
    date: str | None = None
    license_name: str | None = None  # with license "other": what it is ("mixed", "unknown")
    license_link: str | None = None  # with license "other": a file of the commit that lists them
    library_name: str = "transformers"


def _eval_results(meta: CardMeta):
    """(EvalResultEntry list, legacy EvalResult list)."""
    entries, legacy = [], []
    for r in meta.results:
        entries.append(EvalResultEntry(dataset_id=r.dataset_id, task_id=r.task_id, value=r.value, date=meta.date,
                                       dataset_revision=r.revision, notes=r.notes))  # fmt: skip
        legacy.append(EvalResult(task_type=r.task_type, dataset_type=r.dataset_id, dataset_name=r.dataset_id.split("/")[-1],
                                 dataset_config=r.config, dataset_split=r.split, dataset_revision=r.revision,
                                 metric_type=r.metric_type, metric_name=r.metric, metric_value=r.value))  # fmt: skip
    return entries, legacy


def render_card(meta: CardMeta, context: dict) -> tuple[str, dict[str, str]]:
    """(card text, {".eval_results/evohub.yaml": text}) from the metadata and the template's context."""
    template = CARDS / f"{meta.template}.md.j2"
    if not template.exists():
        raise HubError(f"{template}: no such card template")
    entries, legacy = _eval_results(meta)
    card_data = ModelCardData(
        base_model=meta.base_models or None,
        tags=TAGS,
        language=meta.language,
        license=meta.license,
        license_name=meta.license_name,
        license_link=meta.license_link,
        library_name=meta.library_name,
        pipeline_tag=meta.pipeline_tag,
        datasets=meta.datasets or None,
        eval_results=legacy or None,
        model_name=meta.repo_id.split("/")[-1],
    )
    card_data.base_model_relation = "merge"
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(CARDS), keep_trailing_newline=True)
    text = env.get_template(template.name).render(card_data=card_data.to_yaml(), **context)
    files = {}
    if entries:
        files[".eval_results/evohub.yaml"] = yaml.safe_dump(
            eval_result_entries_to_yaml(entries), allow_unicode=True, sort_keys=False
        )
    return str(ModelCard(text)), files
