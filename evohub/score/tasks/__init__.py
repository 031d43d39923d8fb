"""Fitness and evaluation tasks. ``get_task(name)`` returns the task a job spec names.

A task has ``name``, ``fitness_metric``, ``check(rows)`` (one-line errors for bad rows) and
``score(backend, rows, max_new_tokens=..., batch_size=...) -> metrics``.
"""

from __future__ import annotations

from evohub.errors import EvohubError


def get_task(name: str, prompt: str | None = None, stop: tuple[str, ...] | None = None):
    """The task object for a job spec's ``fitness.task`` (``prompt``: ja-math's and ja-vqa's; ``stop``: ja-math's)."""
    if name == "lm-loss":
        from evohub.score.tasks.lm_loss import LMLoss

        return LMLoss()
    if name == "ja-math":
        from evohub.score.tasks.ja_math import JaMath

        return JaMath(prompt, stop)
    if name == "ja-vqa":
        from evohub.score.tasks.ja_vqa import JaVQA

        return JaVQA(prompt)
    raise EvohubError(f"unknown fitness task {name!r} (available: lm-loss, ja-math, ja-vqa)")
