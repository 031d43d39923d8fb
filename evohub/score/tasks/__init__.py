"""Fitness and evaluation tasks, one registry entry each (docs/design.md#tasks).

A task turns a backend's outputs on some examples into metrics: ``check(rows)`` gives one-line
errors for rows it cannot score, ``score(backend, rows, ...)`` the metrics (``run`` also the
per-example records). ``get_task(name, prompt=..., stop=...)`` builds the one a job spec names.
"""

from evohub.score.tasks.base import TASKS, Scored, Task, get_task

__all__ = ["TASKS", "Scored", "Task", "get_task"]
