"""The entry every merge method registers (:class:`MergeMethod`) and the registry of them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Literal

from evohub.registry import Registry

#: A sanity limit on weights: task vectors scaled beyond this are noise.
WEIGHT_DOMAIN = (-10.0, 10.0)
DENSITY_DOMAIN = (0.0, 1.0)


@dataclass(frozen=True)
class Option:
    """A method-wide scalar a recipe may set under ``parameter_space.options`` (DELLA's ``epsilon``,
    Breadcrumbs' ``gamma``): fixed for the whole merge, not a searched gene."""

    name: str
    default: float
    domain: tuple[float, float]
    doc: str


@dataclass(frozen=True)
class MergeMethod:
    """One merge method: its name in recipes, what it takes, and how it is computed.

    ``kernel`` names a kernel of :mod:`evohub.merging.kernels` (``deltas``, ``linear``, ``slerp``)
    or is a callable with the signature of :func:`evohub.merging.kernels.merge_deltas` (a plug-in's
    own arithmetic), or names one as ``"module:function"``, imported when first used (so the
    entry stays light: :mod:`evohub.merging.methods.operators`).
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
    #: takes a ``weight`` per model (False: the method derives its own coefficients, model_stock)
    weights: bool = True
    #: method-wide scalars a recipe may set (``parameter_space.options``), with their defaults
    options: tuple[Option, ...] = ()
    #: the domain separating this method's keyed masks from other methods' (``kernels.dare_key``)
    key_domain: str = "dare"
    #: option values bound by a recipe (:meth:`bind`); unset options take their defaults
    bound: tuple[tuple[str, float], ...] = ()

    @property
    def params(self) -> tuple[str, ...]:
        """The per-model values a recipe gives (the genes a search evolves): ``weight`` and, for
        sparsifying methods, ``density``; none for a method that derives its own coefficients."""
        if not self.weights:
            return ()
        return ("weight", "density") if self.density else ("weight",)

    @property
    def option_list(self) -> tuple[str, ...]:
        """The options with their defaults, as ``--help`` and ``evohub list`` show them."""
        return tuple(f"{o.name}={o.default:g}" for o in self.options)

    def option(self, name: str) -> float:
        """The value of option ``name``: the recipe's, else its default."""
        given = dict(self.bound)
        if name in given:
            return given[name]
        for o in self.options:
            if o.name == name:
                return o.default
        raise KeyError(f"merge method {self.name!r} has no option {name!r}")

    def bind(self, values: Mapping[str, float]) -> MergeMethod:
        """This method with a recipe's option values bound (the kernel reads them by :meth:`option`)."""
        if not values:
            return self
        return replace(self, bound=tuple(sorted(values.items())))


METHODS: Registry[MergeMethod] = Registry("merge method", package="evohub.merging.methods")
