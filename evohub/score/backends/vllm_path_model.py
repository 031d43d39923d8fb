"""The vLLM model class that runs data-flow paths (docs/design.md#data-flow-paths-on-vllm).

vLLM imports this module itself, through the lazy ``"module:Class"`` string that
:func:`evohub.score.backends.vllm_path.register` (the ``vllm.general_plugins`` entry point) gives
its model registry: it imports vLLM at the top, so nothing in evohub imports it, and vLLM has read
its environment before it is loaded.

The model holds the decoder-layer weights of two models A and B once (``model.a.<i>``,
``model.b.<i>``), A's embeddings, final norm and LM head, and T hops (``model.hops.<k>``), each
a vLLM :class:`Attention` of its own: one KV-cache slot per hop, as the transformers path
executor (:mod:`evohub.merging.path`) gives every hop its own cache slot, so a layer visited twice
keeps two caches. The weight layers have no attention module (no KV cache); a hop borrows the
projections of the layer its path names. :meth:`EvohubPathForCausalLM.set_path` picks the layer
and scale of each hop, a Python-level setting read by every forward: the engine must run eager
(``enforce_eager=True``: no torch.compile, no CUDA graphs, which would freeze one path), and the
model refuses to be built otherwise.

Pre-norm blocks only (Llama, Mistral, Qwen2): the hidden state entering hop k is multiplied by
its scale; in vLLM's fused residual convention a layer passes ``(hidden_states, residual)`` and
the stream is their sum, so both are scaled.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from vllm.config import CompilationMode, VllmConfig
from vllm.config.compilation import CUDAGraphMode
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import QKVParallelLinear, RowParallelLinear
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.quantization import QuantizationConfig
from vllm.model_executor.layers.rotary_embedding import get_rope
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from vllm.model_executor.models.llama import LlamaMLP, LlamaModel
from vllm.model_executor.models.utils import AutoWeightsLoader, WeightsMapper

from evohub.score.backends.vllm_path import SECTION, SUPPORTED

#: checkpoint names, prefixed "a." / "b." by the loader, to this model's parameters: A's and B's
#: layers to their own lists, A's other tensors as they are, B's other tensors dropped (A's are
#: used); then vLLM's own fusing of q/k/v and gate/up into stacked parameters
_MAPPER = WeightsMapper(
    orig_to_new_regex={
        re.compile(r"^a\.model\.layers\.(\d+)\."): r"model.a.\1.",
        re.compile(r"^b\.model\.layers\.(\d+)\."): r"model.b.\1.",
        re.compile(r"^b\."): None,
        re.compile(r"^a\."): "",
    },
    orig_to_new_stacked=LlamaModel.hf_to_vllm_mapper.orig_to_new_stacked,
)


class SelfAttentionWeights(nn.Module):
    """A layer's attention projections and rotary embedding, without an :class:`Attention`."""

    def __init__(self, config, quant_config: QuantizationConfig | None, prefix: str):
        super().__init__()
        qwen2 = config.model_type == "qwen2"  # q/k/v with biases, o_proj without
        bias = bool(getattr(config, "attention_bias", False))
        heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        self.q_size, self.kv_size = heads * self.head_dim, kv_heads * self.head_dim
        self.qkv_proj = QKVParallelLinear(
            config.hidden_size, self.head_dim, heads, kv_heads, bias=qwen2 or bias, quant_config=quant_config,
            prefix=f"{prefix}.qkv_proj",
        )  # fmt: skip
        self.o_proj = RowParallelLinear(
            heads * self.head_dim, config.hidden_size, bias=bias and not qwen2, quant_config=quant_config,
            prefix=f"{prefix}.o_proj",
        )  # fmt: skip
        self.rotary_emb = get_rope(
            self.head_dim,
            max_position=getattr(config, "max_position_embeddings", 8192),
            rope_parameters=getattr(config, "rope_parameters", None),
            is_neox_style=True,
        )

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor, attn: Attention) -> torch.Tensor:
        qkv, _ = self.qkv_proj(hidden_states)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k = self.rotary_emb(positions, q, k)
        out, _ = self.o_proj(attn(q, k, v))
        return out


class DecoderLayerWeights(nn.Module):
    """One pre-norm decoder layer of A or B, named as in the checkpoint; its hop's attention
    (and so its KV-cache slot) is passed in."""

    def __init__(self, config, quant_config: QuantizationConfig | None, prefix: str):
        super().__init__()
        self.self_attn = SelfAttentionWeights(config, quant_config, f"{prefix}.self_attn")
        self.mlp = LlamaMLP(
            config.hidden_size, config.intermediate_size, config.hidden_act, quant_config=quant_config,
            bias=bool(getattr(config, "mlp_bias", False)), prefix=f"{prefix}.mlp",
        )  # fmt: skip
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self, positions: torch.Tensor, hidden_states: torch.Tensor, residual: torch.Tensor | None, attn: Attention
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual = hidden_states
            hidden_states = self.input_layernorm(hidden_states)
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual)
        hidden_states = self.self_attn(positions, hidden_states, attn)
        hidden_states, residual = self.post_attention_layernorm(hidden_states, residual)
        return self.mlp(hidden_states), residual


class PathModel(nn.Module):
    """A's embeddings and final norm, A's and B's layers, and the hops' attention modules."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        quant = vllm_config.quant_config
        section = getattr(config, SECTION)
        layers, self.hops_count = section["layers"], int(section["hops"])
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, quant_config=quant)
        self.a = nn.ModuleList(DecoderLayerWeights(config, quant, f"{prefix}.a.{i}") for i in range(int(layers["a"])))
        self.b = nn.ModuleList(DecoderLayerWeights(config, quant, f"{prefix}.b.{i}") for i in range(int(layers["b"])))
        head_dim = self.a[0].self_attn.head_dim
        self.hops = nn.ModuleList(
            Attention(
                config.num_attention_heads,
                head_dim,
                head_dim**-0.5,
                num_kv_heads=config.num_key_value_heads,
                cache_config=vllm_config.cache_config,
                quant_config=quant,
                prefix=f"{prefix}.hops.{k}",
            )
            for k in range(self.hops_count)
        )
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        # until a path is set: model A itself (as far as the hops reach), scale 1
        self.route: list[tuple[DecoderLayerWeights, float]] = [(layer, 1.0) for layer in self.a][: self.hops_count]

    def forward(
        self, input_ids: torch.Tensor | None, positions: torch.Tensor, inputs_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        hidden = inputs_embeds if inputs_embeds is not None else self.embed_tokens(input_ids)
        residual: torch.Tensor | None = None
        for (layer, scale), attn in zip(self.route, self.hops, strict=False):  # hops past the path: unused
            if scale != 1.0:  # the stream is hidden + residual: scale both
                hidden = hidden * scale
                residual = None if residual is None else residual * scale
            hidden, residual = layer(positions, hidden, residual, attn)
        if residual is None:
            return self.norm(hidden)
        hidden, _ = self.norm(hidden, residual)
        return hidden


class EvohubPathForCausalLM(nn.Module):
    """Data-flow paths through two resident models (docs/design.md#data-flow-paths-on-vllm)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        if config.model_type not in SUPPORTED:
            raise ValueError(f"the data-flow path model runs {', '.join(SUPPORTED)} layers, not {config.model_type!r}")
        if not hasattr(config, SECTION):
            raise ValueError(f"config.json has no {SECTION!r} section (written by evohub.score.backends.vllm_path)")
        cc = vllm_config.compilation_config
        if cc.mode != CompilationMode.NONE or cc.cudagraph_mode != CUDAGraphMode.NONE:
            raise ValueError(
                "the data-flow path model switches its path between forwards: start the engine with "
                "enforce_eager=True (a compiled or captured forward would keep one path)"
            )
        self.config = config
        self.model = PathModel(vllm_config=vllm_config, prefix=f"{prefix}.model" if prefix else "model")
        self.lm_head = ParallelLMHead(
            config.vocab_size,
            config.hidden_size,
            quant_config=vllm_config.quant_config,
            prefix=f"{prefix}.lm_head" if prefix else "lm_head",
        )
        if getattr(config, "tie_word_embeddings", False):
            self.lm_head = self.lm_head.tie_weights(self.model.embed_tokens)
        self.logits_processor = LogitsProcessor(config.vocab_size)

    def set_path(self, path: Sequence[tuple[str, int]], scales: Sequence[float]) -> None:
        """Run ``path`` with ``scales`` from the next forward on (no weights move)."""
        layers = {"a": self.model.a, "b": self.model.b}
        if not 0 < len(path) <= self.model.hops_count or len(scales) != len(path):
            raise ValueError(
                f"a path of {len(path)} hops with {len(scales)} scales: this engine runs 1 to "
                f"{self.model.hops_count} hops, one scale each"
            )
        for k, ((who, layer), s) in enumerate(zip(path, scales, strict=True)):
            if who not in layers or not 0 <= layer < len(layers[who]) or not s > 0:
                raise ValueError(
                    f"hop {k}: ({who!r}, {layer}) with scale {s} is not a layer of a or b with a scale > 0"
                )
        self.model.route = [(layers[who][layer], float(s)) for (who, layer), s in zip(path, scales, strict=True)]

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors=None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.model(input_ids, positions, inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load A's and B's checkpoint tensors, named ``a.<name>`` and ``b.<name>``, with vLLM's
        loaders (stacked q/k/v and gate/up shards, each parameter's ``weight_loader``)."""
        return AutoWeightsLoader(self).load_weights(weights, mapper=_MAPPER)
