"""``slerp``: spherical interpolation of two models, t = w₁ / (w₀ + w₁) per tensor."""

from evohub.merging.methods.base import METHODS, MergeMethod

METHODS.register(
    MergeMethod(
        name="slerp",
        doc="spherical interpolation of two models with t = w₁ / (w₀ + w₁)",
        kernel="slerp",
        base=False,
        shares=True,
        models=(2, 2),
        weight_domain=(0.0, 1.0),
        mergekit="slerp",
    )
)
