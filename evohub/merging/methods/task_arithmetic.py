"""The task-vector methods: rows of one generalised task arithmetic (the ``deltas`` kernel).

Each delta δ_k = θ_k − θ_base is sparsified (``none``; ``magnitude``: TIES's top-k by |δ|;
``random``: DARE's keyed Bernoulli mask, rescaled by 1/density), weighted, optionally sign-elected
(``consensus``), summed and added to the base.
"""

from evohub.merging.methods.base import METHODS, MergeMethod

for method in (
    MergeMethod(
        name="task_arithmetic",
        doc="base + Σ w_k δ_k over task vectors δ_k = θ_k − θ_base",
        mergekit="task_arithmetic",
        url="https://arxiv.org/abs/2212.04089",
    ),
    MergeMethod(
        name="ties",
        doc="TIES: keep each task vector's top `density` by magnitude, elect signs, add",
        density=True,
        sparsify="magnitude",
        consensus=True,
        mergekit="ties",
        url="https://arxiv.org/abs/2306.01708",
    ),
    MergeMethod(
        name="dare_ties",
        doc="DARE-TIES: keep each entry with probability `density` (rescaled), elect signs, add",
        density=True,
        sparsify="random",
        consensus=True,
        mergekit="dare_ties",
        url="https://arxiv.org/abs/2311.03099",
    ),
    MergeMethod(
        name="dare_linear",
        doc="DARE: keep each entry with probability `density` (rescaled), add",
        density=True,
        sparsify="random",
        mergekit="dare_linear",
        url="https://arxiv.org/abs/2311.03099",
    ),
):
    METHODS.register(method)
