"""Data-flow-space merges folded into plain transformers models (docs/design.md#the-dfs-fold).

A DFS recipe routes the hidden state through a path of (model, layer) hops, multiplying it by a
scale s_k > 0 before hop k. For pre-norm residual blocks that is the same as running the
unscaled path on y = x / P_k, P_k = s_1·…·s_k, with each hop's residual contributions divided
by P_k: the norms at the block inputs (and the final norm) do not see a positive factor. So the
path becomes an ordinary ``*ForCausalLM`` with one decoder layer per hop:

- pre-norm blocks (Llama, Mistral, Qwen2/3, Gemma 1): ``o_proj`` and ``down_proj`` (weights and
  biases) of hop k are divided by P_k;
- sandwich-norm blocks (Gemma 2/3): the residual contributions are the outputs of
  ``post_attention_layernorm`` and ``post_feedforward_layernorm``, whose gains (1 + w) are
  divided by P_k instead.

A's embeddings, final norm and LM head are used; per-layer config arrays (``layer_types``) are
re-indexed by hop. The one deviation is RMSNorm's ε, which acts like ε·P_k² would on the
unfolded path: negligible where activations are much larger than ε.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from evohub.errors import MergeError
from evohub.merging.arch import decoder_layer_index, num_decoder_layers
from evohub.merging.ps import TensorSource
from evohub.models import is_vlm


@dataclass(frozen=True)
class FoldRule:
    """Which tensors of a decoder layer carry its residual contributions, and how to scale them."""

    residual: tuple[str, ...]  # layer-relative tensor names
    one_plus_gain: bool = False  # the tensors are (1 + w) norm gains (Gemma), not linear maps


_PRE_NORM = FoldRule(
    residual=(
        "self_attn.o_proj.weight",
        "self_attn.o_proj.bias",
        "mlp.down_proj.weight",
        "mlp.down_proj.bias",
    )
)
_SANDWICH = FoldRule(
    residual=("post_attention_layernorm.weight", "post_feedforward_layernorm.weight"),
    one_plus_gain=True,
)
FOLD_RULES = {
    "llama": _PRE_NORM,
    "mistral": _PRE_NORM,
    "qwen2": _PRE_NORM,
    "qwen3": _PRE_NORM,
    "gemma": _PRE_NORM,
    "gemma2": _SANDWICH,
    "gemma3_text": _SANDWICH,
}
#: Config keys that must agree between A and B for B's layers to run inside A.
_SAME = ("model_type", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
         "head_dim", "hidden_act", "rope_theta", "rope_parameters", "rope_scaling", "attention_bias", "mlp_bias")  # fmt: skip


def fold_rule(config: dict, label: str) -> FoldRule:
    if is_vlm(config):
        raise MergeError(f"{label}: data-flow-space merging of a VLM's language model is not supported yet")
    rule = FOLD_RULES.get(config.get("model_type", ""))
    if rule is None:
        raise MergeError(
            f"{label}: cannot fold a data-flow path through model_type {config.get('model_type')!r} into a plain "
            f"model (supported: {', '.join(FOLD_RULES)})"
        )
    return rule


def _normalised(cfg: dict) -> dict:
    """The config as transformers reads it: defaults filled in for keys the file leaves out, old
    spellings (``rope_theta``) in today's form, so configs written by different versions compare."""
    from transformers import AutoConfig

    try:
        loaded = AutoConfig.for_model(**cfg).to_dict()
    except (ValueError, TypeError, KeyError):  # a model type this transformers does not know
        return cfg
    return {key: loaded.get(key) for key in _SAME}


def check_pair(cfg_a: dict, cfg_b: dict, label_a: str, label_b: str) -> FoldRule:
    """The fold rule for A and B, which must share an architecture and its dimensions."""
    rule = fold_rule(cfg_a, label_a)
    fold_rule(cfg_b, label_b)
    a, b = _normalised(cfg_a), _normalised(cfg_b)
    for key in _SAME:
        if a.get(key) != b.get(key):
            raise MergeError(
                f"{label_a} and {label_b} differ in {key} ({a.get(key)!r} vs {b.get(key)!r}); "
                "a data-flow path can only mix layers of one architecture"
            )
    return rule


def check_path(path: Sequence[tuple[str, int]], scales: Sequence[float], layers: dict[str, int]) -> None:
    if len(path) != len(scales):
        raise MergeError(f"data_flow_space: {len(scales)} scales for {len(path)} hops")
    for k, ((who, layer), s) in enumerate(zip(path, scales, strict=True)):
        if not 0 <= layer < layers[who]:
            raise MergeError(
                f"data_flow_space.path[{k}]: layer {layer} of model {who!r} does not exist (it has {layers[who]})"
            )
        if not s > 0:
            raise MergeError(f"data_flow_space.scales[{k}]: {s} is not > 0")


def cumulative(scales: Sequence[float]) -> list[float]:
    """P_k = s_1·…·s_k for every hop, in float64."""
    out, p = [], 1.0
    for s in scales:
        p *= float(s)
        out.append(p)
    return out


def layer_types_of(config: dict) -> list[str] | None:
    """The per-layer attention types transformers derives for a config (None if it has none)."""
    from transformers import AutoConfig

    cfg = dict(config)
    model_type = cfg.pop("model_type")
    try:
        obj = AutoConfig.for_model(model_type, **cfg)
    except (ValueError, KeyError, TypeError):
        return config.get("layer_types")
    types = getattr(obj, "layer_types", None)
    return list(types) if types else None


def path_config(cfg_a: dict, cfg_b: dict, path: Sequence[tuple[str, int]], dtype: str | None = None) -> dict:
    """A's config with one layer per hop and per-layer arrays re-indexed by hop."""
    out = dict(cfg_a)
    out["num_hidden_layers"] = len(path)
    types = {"a": layer_types_of(cfg_a), "b": layer_types_of(cfg_b)}
    if types["a"] is not None and types["b"] is not None:
        out["layer_types"] = [types[who][layer] for who, layer in path]
        out.pop("max_window_layers", None)  # Qwen2 derives layer_types from it: now explicit
    if dtype is not None:
        out["dtype"] = dtype
        if "torch_dtype" in out:
            out["torch_dtype"] = dtype
    return out


def folded_tensors(
    path: Sequence[tuple[str, int]],
    scales: Sequence[float],
    a: TensorSource,
    b: TensorSource,
    rule: FoldRule,
    dtype: torch.dtype,
) -> Iterator[tuple[str, torch.Tensor]]:
    """The folded model's tensors: A's non-layer tensors, then one renamed layer per hop."""
    sources = {"a": a, "b": b}
    by_layer: dict[str, dict[int, list[str]]] = {"a": {}, "b": {}}
    for who, src in sources.items():
        for name in src.names():
            i = decoder_layer_index(name)
            if i is not None:
                by_layer[who].setdefault(i, []).append(name)
            elif who == "a":
                t = src.get(name)
                yield name, t.to(dtype) if t.is_floating_point() else t
    for k, ((who, layer), p) in enumerate(zip(path, cumulative(scales), strict=True)):
        prefix = f"model.layers.{layer}."
        for name in by_layer[who].get(layer, []):
            rel = name[len(prefix) :] if name.startswith(prefix) else name.split(f".{layer}.", 1)[1]
            t = sources[who].get(name)
            if rel in rule.residual and p != 1.0:
                x = t.to(torch.float32)
                t = ((1.0 + x) / p - 1.0) if rule.one_plus_gain else x / p
            yield f"model.layers.{k}.{rel}", t.to(dtype) if t.is_floating_point() else t


def layer_counts(cfg_a: dict, cfg_b: dict) -> dict[str, int]:
    return {"a": num_decoder_layers(cfg_a) or 0, "b": num_decoder_layers(cfg_b) or 0}
