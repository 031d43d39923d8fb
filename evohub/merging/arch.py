"""Architecture knowledge: layer counts and sizes from a config, the decoder-layer index of a
tensor name, the language-model tensors of a model (as its kind says: :mod:`evohub.models`).

Light at import (torch and transformers are imported by :func:`count_parameters` only), because
the spec loader checks layer counts with it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from evohub.errors import MergeError
from evohub.models import kind_of

__all__ = [
    "ParamCount",
    "count_parameters",
    "decoder_layer_index",
    "dtype_bytes",
    "lm_parameters",
    "num_decoder_layers",
    "stored_dtype",
]

#: A decoder layer of an LLM (``model.layers.N.``) or of the LM inside a LLaVA-style VLM, in the
#: checkpoint layout (``language_model.model.layers.N.``) and in transformers 5's module layout
#: (``model.language_model.layers.N.``). Vision-tower layers do not match.
_DECODER_LAYER = re.compile(r"^(?:model\.)?(?:language_model\.)?(?:model\.)?layers\.(\d+)\.")


def read_config(directory: str | Path, label: str | None = None) -> dict:
    """A model directory's config.json (a diffusers pipeline's: its model_index.json, a UNet
    alone's: unet/config.json); a missing or broken one is a one-line MergeError."""
    path = Path(directory) / "config.json"
    for alt in ("model_index.json", "unet/config.json"):
        if not path.is_file() and (Path(directory) / alt).is_file():
            path = Path(directory) / alt
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise MergeError(f"{directory}: no config.json; is {label or directory} a transformers model?") from None
    except ValueError as e:
        raise MergeError(f"{path}: not valid JSON: {e}") from e


def num_decoder_layers(config: dict) -> int | None:
    """Decoder layers of an LLM config or of the language model inside a VLM config."""
    for cfg in (config, config.get("text_config") or {}, config.get("llm_config") or {}):
        n = cfg.get("num_hidden_layers") or cfg.get("n_layer") or cfg.get("num_layers")
        if isinstance(n, int) and n > 0:
            return n
    return None


def lm_parameters(model) -> dict:
    """A resident transformers model's language-model parameters by LLM-style name (for
    :meth:`~evohub.merging.ps.ResidentMerge.apply`); a VLM's vision tower and projector are left out."""
    kind = kind_of(model.config.to_dict())
    out = {}
    for name, p in model.named_parameters():
        key = kind.lm_name(name)
        if key is not None:
            out[key] = p
    return out


def is_embedding(name: str) -> bool:
    """Input embeddings (they take layer group 0's values)."""
    return "embed_tokens" in name or ".wte." in name or "word_embeddings" in name


def decoder_layer_index(name: str) -> int | None:
    """Decoder layer of a tensor name, or None for embeddings, norms, heads, vision towers."""
    m = _DECODER_LAYER.match(name)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class ParamCount:
    total: int
    per_layer: int  # parameters of decoder layer 0
    layers: int


_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "float8_e4m3fn": 1}


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of a dtype name as written in configs ('bfloat16', 'torch.float16')."""
    name = dtype.removeprefix("torch.")
    if name not in _DTYPE_BYTES:
        raise MergeError(f"unknown dtype {dtype!r} (known: {', '.join(_DTYPE_BYTES)})")
    return _DTYPE_BYTES[name]


def stored_dtype(config: dict) -> str:
    """The dtype a checkpoint's weights are stored in, as its config says (float32 if silent)."""
    for cfg in (config, config.get("text_config") or {}):
        d = cfg.get("dtype") or cfg.get("torch_dtype")
        if isinstance(d, str):
            return d.removeprefix("torch.")
    return "float32"


def count_parameters(config: dict) -> ParamCount:
    """Exact parameter counts (tied weights once) by building the model on the meta device."""
    import torch
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
    )

    cfg_dict = dict(config)
    model_type = cfg_dict.pop("model_type", None)
    if model_type is None:
        raise MergeError("config.json has no 'model_type'; is this a transformers model?")
    try:
        cfg = AutoConfig.for_model(model_type, **cfg_dict)
    except (ValueError, KeyError) as e:
        raise MergeError(f"transformers does not know model_type {model_type!r}: {e}") from e
    with torch.device("meta"):
        for auto in (AutoModelForCausalLM, AutoModelForImageTextToText, AutoModel):
            try:
                model = auto.from_config(cfg)
                break
            except ValueError:
                continue
        else:
            raise MergeError(f"cannot build a {model_type!r} model from its config")
    total = per_layer = 0
    for name, p in model.named_parameters():
        total += p.numel()
        if decoder_layer_index(name) == 0:
            per_layer += p.numel()
    return ParamCount(total=total, per_layer=per_layer, layers=num_decoder_layers(config) or 0)
