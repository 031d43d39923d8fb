"""The two YAML documents of evohub: the job spec and the recipe (docs/design.md#two-documents).

A **job spec** (``jobs/*.yaml``) says what may be merged and how to judge it; a **recipe** is one
concrete merge that ``evohub merge`` rebuilds bit-for-bit. Both are frozen pydantic v2 models with
``extra="forbid"`` that round-trip to YAML; the schema modules are pure, and
:mod:`~evohub.spec.load` reads files and checks what they reference.
"""

from evohub.spec.job import DFSSearch, Evaluation, Fitness, JobSpec, Optimizer, PSSearch, Publish, Source
from evohub.spec.load import load, load_job, load_recipe, local_config, unpinned, walk_refs, warnings_for
from evohub.spec.recipe import DFSRecipe, PSRecipe, Recipe, RecipeModel
from evohub.spec.refs import DataRef, ModelRef, Range, is_pinned

__all__ = [
    "DFSRecipe",
    "DFSSearch",
    "DataRef",
    "Evaluation",
    "Fitness",
    "JobSpec",
    "ModelRef",
    "Optimizer",
    "PSRecipe",
    "PSSearch",
    "Publish",
    "Range",
    "Recipe",
    "RecipeModel",
    "Source",
    "is_pinned",
    "load",
    "load_job",
    "load_recipe",
    "local_config",
    "unpinned",
    "walk_refs",
    "warnings_for",
]
