"""Build the merge benchmark's models: a Mistral-architecture base and two fine-tunes.

About 58M parameters each (hidden 512, 8 layers, intermediate 1536, 8 heads / 4 KV heads,
vocab 32000), stored in bfloat16; a fine-tune is the base plus small Gaussian noise.

    python bench/make_models.py bench/out/models            # 8 layers
    python bench/make_models.py bench/out/models16 --layers 16
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file


def save_tokenizer(path: Path, vocab: int) -> None:
    """A word-level tokenizer: w0 .. w{vocab-3}, <unk>, </s>."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {f"w{i}": i for i in range(vocab - 2)} | {"<unk>": vocab - 2, "</s>": vocab - 1}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>").save_pretrained(path)


def build(out: Path, layers: int, seed: int = 0, noise: float = 0.01) -> None:
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(
        vocab_size=32000,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        architectures=["MistralForCausalLM"],
        dtype="bfloat16",
    )
    torch.manual_seed(seed)
    base = MistralForCausalLM(cfg).to(torch.bfloat16)
    state = {k: v.contiguous() for k, v in base.state_dict().items()}
    for i, name in enumerate(["base", "ft1", "ft2"]):
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        g = torch.Generator().manual_seed(1000 + i)
        tensors = (
            state
            if name == "base"
            else {
                k: (v.float() + noise * torch.randn(v.shape, generator=g)).to(torch.bfloat16) for k, v in state.items()
            }
        )
        save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
        base.config.to_json_file(d / "config.json")
        save_tokenizer(d, cfg.vocab_size)
    n = sum(v.numel() for v in state.values())
    (out / "info.json").write_text(json.dumps({"params": n, "layers": layers}))
    print(f"{out}: 3 models x {n / 1e6:.1f}M params (bf16)")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--layers", type=int, default=8)
    a = p.parse_args()
    build(a.out, a.layers)
