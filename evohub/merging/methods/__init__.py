"""Merge methods, one registry entry each (docs/design.md#merge-methods).

A method is data: which kernel computes it and how (:class:`MergeMethod`). The four task-vector
methods are rows of one generalised task arithmetic (sparsify each delta, optionally elect signs,
add), like mergekit's table; ``linear`` and ``slerp`` have kernels of their own. The kernels are in
:mod:`evohub.merging.kernels`; this package is light, because the schema, ``--help`` and the README
read it.

    >>> METHODS.get("dare_ties").density, METHODS.get("dare_ties").base
    (True, True)
"""

from evohub.merging.methods.base import METHODS, MergeMethod

__all__ = ["METHODS", "MergeMethod"]
