"""``linear``: Σ w_k θ_k over whole weights (the base is not read)."""

from evohub.merging.methods.base import METHODS, MergeMethod

METHODS.register(
    MergeMethod(
        name="linear",
        doc="weighted sum of the models' weights, Σ w_k θ_k (no base model)",
        kernel="linear",
        base=False,
        models=(2, None),
        mergekit="linear",
        url="https://arxiv.org/abs/2203.05482",
    )
)
