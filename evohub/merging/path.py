"""Run data-flow paths over resident layers, for fitness evaluation without materialising models.

    >>> ex = PathExecutor(model_a, model_b)            # both loaded once     # doctest: +SKIP
    >>> ex.set_path([("a", 0), ("b", 3), ("a", 1)], [1.0, 0.8, 1.25])
    >>> ex.model.generate(input_ids, max_new_tokens=32)  # a stock HF model: generate, cache, masks

``ex.model`` is a ``*ForCausalLM`` of A's class whose decoder layers are hops: each hop wraps one
of A's or B's own layer objects (shared, never copied), multiplies the incoming hidden state by
its scale, and uses its own KV-cache slot (a layer used by several hops keeps one cache entry per
hop). Switching to another candidate path rebuilds the list of hops only. The folded model of
:mod:`evohub.merging.dfs` computes the same function (tests compare their logits).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from evohub.errors import MergeError
from evohub.merging.dfs import check_pair, check_path, layer_types_of


class Hop(nn.Module):
    """One hop of a path: a shared decoder layer, the scale entering it, its cache slot."""

    def __init__(self, layer: nn.Module, scale: float, index: int):
        super().__init__()
        self.layer = layer
        self.scale = float(scale)
        self.index = index
        if hasattr(layer, "attention_type"):
            self.attention_type = layer.attention_type

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        attn = self.layer.self_attn
        own = attn.layer_idx
        attn.layer_idx = self.index  # this hop's KV-cache slot
        try:
            x = hidden_states if self.scale == 1.0 else hidden_states * self.scale
            return self.layer(x, *args, **kwargs)
        finally:
            attn.layer_idx = own


class PathExecutor:
    """Paths through the layers of two resident models of one architecture (A and B)."""

    def __init__(self, model_a: nn.Module, model_b: nn.Module):
        cfg_a, cfg_b = model_a.config.to_dict(), model_b.config.to_dict()
        check_pair(cfg_a, cfg_b, "model a", "model b")
        self.layers = {"a": model_a.model.layers, "b": model_b.model.layers}
        self._types = {"a": layer_types_of(cfg_a), "b": layer_types_of(cfg_b)}
        config = type(model_a.config).from_dict(cfg_a)
        with torch.device("meta"):
            shell = type(model_a)(config)
        for name, child in model_a.named_children():
            if name != "model":
                setattr(shell, name, child)  # lm_head
        for name, child in model_a.model.named_children():
            if name != "layers":
                setattr(shell.model, name, child)  # embeddings, final norm, rotary embedding
        shell.generation_config = model_a.generation_config
        shell.model.layers = nn.ModuleList()
        left = [n for n, p in shell.named_parameters() if p.is_meta]
        if left:
            raise MergeError(f"the path executor could not share {left[0]!r} from model a")
        self.model = shell.eval()
        self.path: list[tuple[str, int]] = []

    def set_path(self, path: Sequence[tuple[str, int]], scales: Sequence[float]) -> None:
        """Make ``self.model`` run ``path`` with ``scales`` (no weights are copied)."""
        check_path(path, scales, {who: len(layers) for who, layers in self.layers.items()})
        self.model.model.layers = nn.ModuleList(
            Hop(self.layers[who][layer], s, k) for k, ((who, layer), s) in enumerate(zip(path, scales, strict=True))
        )
        self.model.config.num_hidden_layers = len(path)
        if self._types["a"] is not None and self._types["b"] is not None:
            self.model.config.layer_types = [self._types[who][layer] for who, layer in path]
        self.path = list(path)
