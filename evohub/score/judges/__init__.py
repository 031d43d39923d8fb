"""Image judges: how a text-to-image fitness task scores an image against its prompt
(docs/design.md#image-fitness).

A judge is one registry entry: its name in job specs (``fitness.judge``), the range of its
scores, and ``load(device, model)``, named as ``"module:function"`` and imported when first used (so the
entry stays light: no torch at import), which returns a scorer; ``model`` is the directory a run
pulled and pinned (``fitness.judge_model``, else the entry's ``repo``)::

    scorer.score(images: list[PIL.Image], prompts: list[str]) -> list[float]   # one per pair

A test or a plug-in registers its own with :meth:`Registry.register` (a deterministic judge for
tiny worlds; an aesthetic model).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from evohub.registry import Registry


class Scorer(Protocol):
    def score(self, images: Sequence, prompts: Sequence[str]) -> list[float]: ...


@dataclass(frozen=True)
class Judge:
    name: str
    doc: str
    #: ``"module:function"`` or a callable: (device, model directory or repo or None) -> Scorer
    load: str | Callable[[str, str | None], Scorer]
    #: the range of one score (what the cheaper fitness estimators and m2n2 need)
    item_range: tuple[float, float]
    #: the Hub repository of its model, when it has one (for the plan and the card)
    repo: str | None = None

    def scorer(self, device: str = "cpu", model: str | None = None) -> Scorer:
        """The judge on ``device``, its model from ``model`` (a directory or a repo; default ``repo``)."""
        load = self.load
        if isinstance(load, str):
            module, _, fn = load.partition(":")
            load = getattr(importlib.import_module(module), fn)
        return load(device, model or self.repo)


JUDGES: Registry[Judge] = Registry("image judge", package="evohub.score.judges")
