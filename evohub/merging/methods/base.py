"""The entry every merge method registers (:class:`MergeMethod`) and the registry of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from evohub.registry import Registry

#: A sanity limit on weights: task vectors scaled beyond this are noise.
WEIGHT_DOMAIN = (-10.0, 10.0)
DENSITY_DOMAIN = (0.0, 1.0)


@dataclass(frozen=True)
class MergeMethod:
    """One merge method: its name in recipes, what it takes, and how it is computed.

    ``kernel`` names a kernel of :mod:`evohub.merging.kernels` (``deltas``, ``linear``, ``slerp``)
    or is a callable with the signature of :func:`evohub.merging.kernels.merge_deltas` (a plug-in's
    own arithmetic).
    """

    name: str
    doc: str
    kernel: str | Callable = "deltas"
    #: works on task vectors θ_k − θ_base, so a recipe needs a ``base_model``
    base: bool = True
    #: takes a ``density`` per model (the fraction of each task vector kept)
    density: bool = False
    #: how each task vector is sparsified before it is added (the ``deltas`` kernel)
    sparsify: Literal["none", "magnitude", "random"] = "none"
    #: TIES sign election: per entry, only deltas agreeing with the sign of their sum are added
    consensus: bool = False
    #: the weights are interpolation shares of exactly two models (slerp), not scales
    shares: bool = False
    models: tuple[int, int | None] = (1, None)  # (at least, at most)
    weight_domain: tuple[float, float] = WEIGHT_DOMAIN
    #: mergekit's name for the same method (None: mergekit has no equivalent)
    mergekit: str | None = None
    url: str | None = None

    @property
    def params(self) -> tuple[str, ...]:
        """The per-model values a recipe gives: ``weight`` and, for sparsifying methods, ``density``."""
        return ("weight", "density") if self.density else ("weight",)


METHODS: Registry[MergeMethod] = Registry("merge method", package="evohub.merging.methods")
