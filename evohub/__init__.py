"""evohub: Evolutionary Model Merge as a Hugging Face Hub batch job and model publisher.

The public API (docs in README.md, "Python API"); names are imported on first use, so
``import evohub`` stays fast::

    import evohub

    job = evohub.load_job("jobs/demo.yaml")
    summary = evohub.run("jobs/demo.yaml", run_dir="runs/demo")
    evohub.merge("runs/demo/recipe.yaml", "merged/")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: public name -> module that defines it
_API = {
    "load_job": "evohub.api",
    "load_recipe": "evohub.api",
    "plan": "evohub.api",
    "merge": "evohub.api",
    "run": "evohub.api",
    "evaluate": "evohub.api",
    "publish": "evohub.api",
    "JobSpec": "evohub.spec",
    "Recipe": "evohub.spec",
    "EvohubError": "evohub.errors",
    "SpecError": "evohub.errors",
}
__all__ = ["EvohubError", "JobSpec", "Recipe", "SpecError", "__version__", "evaluate", "load_job", "load_recipe",
           "merge", "plan", "publish", "run"]  # fmt: skip

if TYPE_CHECKING:
    from evohub.api import evaluate, load_job, load_recipe, merge, plan, publish, run
    from evohub.errors import EvohubError, SpecError
    from evohub.spec import JobSpec, Recipe


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'evohub' has no attribute {name!r}")
