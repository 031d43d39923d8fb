"""Tiny models made on this machine: tokenizers over a given vocabulary, and a random world of a
base with seeded fine-tunes (``evohub wiring`` runs a job's structure on it)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast

VOCAB = 256


def save_tokenizer(
    path: str | Path,
    tokens: list[str],
    *,
    unk: str,
    eos: str,
    pad: str | None = None,
    chars: bool = False,
    extra: dict[str, str] | None = None,
):
    """Save a fast tokenizer whose ids are the positions in ``tokens``: word-level (split on white
    space), or with ``chars`` character-level (decoded by concatenation). ``extra`` names special
    tokens the processor looks up (``{"image_token": "<image>"}``). Returns the tokenizer."""
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token=unk))
    if chars:
        tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
        tok.decoder = decoders.Fuse()
    else:
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
    kwargs = {"pad_token": pad} if pad else {}
    if extra:
        kwargs["extra_special_tokens"] = extra
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=unk, eos_token=eos, **kwargs)
    if extra:
        fast.add_special_tokens({"additional_special_tokens": list(extra.values())})
    fast.save_pretrained(path)
    return fast


def word_tokens(n: int, prefix: str = "w", specials: tuple[str, ...] = ("<unk>", "</s>")) -> list[str]:
    """``prefix0 .. prefixK`` then ``specials``: ``n`` tokens in all."""
    return [f"{prefix}{i}" for i in range(n - len(specials))] + list(specials)


def build_random_world(root: Path, seed: int = 0, fine_tunes: int = 2) -> dict[str, Path]:
    """A random base (4 layers, hidden 128, head_dim 32) and fine-tunes = base + seeded noise
    (``ft-a``, ``ft-b``, ...), saved in bfloat16 with a word-level tokenizer."""
    cfg = MistralConfig(
        vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=128,
        tie_word_embeddings=False, eos_token_id=VOCAB - 1, bos_token_id=None, pad_token_id=None,
    )  # fmt: skip
    torch.manual_seed(seed)
    base = MistralForCausalLM(cfg)
    dirs = {}
    for i, name in enumerate(["base"] + [f"ft-{chr(ord('a') + k)}" for k in range(fine_tunes)]):
        model = base if i == 0 else MistralForCausalLM(cfg)
        if i:
            g = torch.Generator().manual_seed(seed * 100 + i)
            with torch.no_grad():
                for p, q in zip(model.parameters(), base.parameters(), strict=True):
                    p.copy_(q + 0.02 * torch.randn(q.shape, generator=g))
        d = root / name
        model.to(torch.bfloat16).save_pretrained(d)
        save_tokenizer(d, word_tokens(VOCAB), unk="<unk>", eos="</s>")
        dirs[name] = d
    return dirs


def random_texts(seed: int, n: int = 64) -> str:
    """JSONL rows ``{"text": ...}`` of random words of the random world's vocabulary."""
    rng = random.Random(seed)
    rows = [json.dumps({"text": " ".join(f"w{rng.randrange(VOCAB - 2)}" for _ in range(16))}) for _ in range(n)]
    return "\n".join(rows) + "\n"
