"""Tensors in, tensors out: merge methods, parameter-space and data-flow-space merges.

Nothing here talks to the Hub or scores a model (docs/design.md#layout).
"""
