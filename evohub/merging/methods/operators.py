"""Newer merge operators: DELLA, Model Breadcrumbs, Model Stock, TSV-Merge (docs/design.md#merge-methods).

Their kernels are :mod:`evohub.merging.operators`, named as ``"module:function"`` and imported when
a tensor is merged (this package stays light: the schema and ``--help`` read it).

- ``della`` / ``della_linear`` (DELLA-Merging, arXiv 2406.11617): per task vector, entries ranked
  by |δ| are kept with probabilities spread linearly over density ± ``epsilon`` (the largest
  most likely), survivors rescaled by 1/p; ``della`` then elects signs. The draws are keyed like
  DARE's masks, in their own domain, so a recipe rebuilds the same model.
- ``breadcrumbs`` / ``breadcrumbs_ties`` (Model Breadcrumbs, arXiv 2312.06795): per task vector the
  largest ``gamma`` fraction by |δ| is dropped, then the smallest, so that ``density`` remains.
- ``model_stock`` (Model Stock, arXiv 2403.19522): θ_b + t·mean δ_k with t = K·cosθ / (1 + (K−1)·cosθ)
  from the mean pairwise cosine of the task vectors; no per-model values.
- ``tsv`` (TSV-Merge, Task Singular Vectors, arXiv 2412.00081): per weight matrix, each task's
  top singular components (``rank`` of min(m, n) each, 1/T by default) are concatenated and their
  U and V bases decorrelated by orthogonal Procrustes; other tensors take the task-vector mean.
"""

from evohub.merging.methods.base import METHODS, MergeMethod, Option

EPSILON = Option("epsilon", 0.15, (0.0, 0.5), "DELLA: keep probabilities span density ± epsilon")
GAMMA = Option("gamma", 0.01, (0.0, 1.0), "Breadcrumbs: the fraction of largest-|δ| entries dropped")
RANK = Option("rank", 0.0, (0.0, 1.0), "TSV: fraction of min(m, n) singular components kept per task (0: 1/T)")


for method in (
    MergeMethod(
        name="della",
        doc="DELLA: keep entries with probability density ± epsilon by magnitude rank (rescaled), elect signs, add",
        kernel="evohub.merging.operators:della",
        density=True,
        consensus=True,
        options=(EPSILON,),
        key_domain="della",
        mergekit="della",
        url="https://arxiv.org/abs/2406.11617",
    ),
    MergeMethod(
        name="della_linear",
        doc="DELLA without sign election: keep entries with probability density ± epsilon by magnitude rank, add",
        kernel="evohub.merging.operators:della",
        density=True,
        options=(EPSILON,),
        key_domain="della",
        mergekit="della_linear",
        url="https://arxiv.org/abs/2406.11617",
    ),
    MergeMethod(
        name="breadcrumbs",
        doc="Model Breadcrumbs: drop each task vector's largest gamma and smallest entries, keep density, add",
        kernel="evohub.merging.operators:breadcrumbs",
        density=True,
        options=(GAMMA,),
        mergekit="breadcrumbs",
        url="https://arxiv.org/abs/2312.06795",
    ),
    MergeMethod(
        name="breadcrumbs_ties",
        doc="Model Breadcrumbs with sign election: drop largest gamma and smallest, keep density, elect, add",
        kernel="evohub.merging.operators:breadcrumbs",
        density=True,
        consensus=True,
        options=(GAMMA,),
        mergekit="breadcrumbs_ties",
        url="https://arxiv.org/abs/2312.06795",
    ),
    MergeMethod(
        name="model_stock",
        doc="Model Stock: base + t·mean task vector, t from the angle between the task vectors (no weights)",
        kernel="evohub.merging.operators:model_stock",
        weights=False,
        models=(2, None),
        mergekit="model_stock",
        url="https://arxiv.org/abs/2403.19522",
    ),
    MergeMethod(
        name="tsv",
        doc="TSV-Merge: per matrix, each task's top singular vectors (σ·weight), bases decorrelated (Procrustes)",
        kernel="evohub.merging.operators:tsv",
        models=(2, None),
        options=(RANK,),
        url="https://arxiv.org/abs/2412.00081",
    ),
):
    METHODS.register(method)
