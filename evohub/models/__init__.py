"""Model kinds: what a model directory is and how evohub treats it (docs/design.md#model-kinds).

A kind says how to recognise a model from its ``config.json``, which of its tensors form the
language model that merges operate on (and what they are called in a plain LLM), how to load it
for scoring, which card template and pipeline tag its published model gets, and whether it sees
images (vision suites run only for such kinds).

    >>> kind_of({"model_type": "mistral"}).name
    'llm'
    >>> kind_of({"vision_config": {}, "text_config": {}}).name
    'vlm'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from evohub.registry import Registry


@dataclass(frozen=True)
class ModelKind:
    name: str
    doc: str
    detect: Callable[[dict], bool]
    #: transformers auto class that loads it for scoring (by name, imported when loading)
    auto_class: str
    pipeline_tag: str
    #: card template in cards/ (``<card>.md.j2``)
    card: str
    vision: bool = False
    #: checkpoint prefixes of the language model's tensors -> their names in a plain LLM; empty:
    #: every tensor is a language-model tensor and keeps its name
    lm_prefixes: tuple[tuple[str, str], ...] = ()
    #: kinds are tried in this order (higher first); the plain LLM is the fallback
    priority: int = 0
    processor: bool = False
    #: the library that loads it (the card's ``library_name``)
    library: str = "transformers"

    def lm_name(self, name: str) -> str | None:
        """The LLM-style name of a language-model tensor, or None for a tensor outside it."""
        if not self.lm_prefixes:
            return name
        for prefix, replacement in self.lm_prefixes:
            if name.startswith(prefix):
                return replacement + name[len(prefix) :]
        return None


KINDS: Registry[ModelKind] = Registry("model kind", package="evohub.models")


def kind_of(config: dict) -> ModelKind:
    """The kind of a model from its config.json (the highest-priority kind that recognises it)."""
    for kind in sorted(KINDS, key=lambda k: -k.priority):
        if kind.detect(config):
            return kind
    return KINDS.get("llm")


def is_vlm(config: dict) -> bool:
    """True for a model that takes images (a LLaVA-style VLM)."""
    return kind_of(config).vision
