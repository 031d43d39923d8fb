"""Tiny SDXL-shaped pipelines made on this machine, for tests and rehearsals of diffusion jobs.

The shape rules SDXL's UNet checks are kept: its cross-attention width is the two text encoders'
hidden sizes together (32 + 32), and its added-condition projection takes 6 time embeddings of
``addition_time_embed_dim`` (8) plus the second encoder's projection (32). The tokenizer is CLIP's
byte-level BPE over the 256 byte symbols (each also with CLIP's end-of-word mark) and no merges, so
it needs no download and reads any text, Japanese included. A 4-step 32x32 generation takes a
fraction of a second on a CPU.

    >>> base = make_sdxl("w/base", seed=0)                        # doctest: +SKIP
    >>> make_sdxl("w/dpo", seed=1, base=base, noise=0.05)          # the base's UNet, perturbed
"""

from __future__ import annotations

from pathlib import Path

import torch

HIDDEN, TIME_DIM = 32, 8


def clip_tokenizer(shuffle: int | None = None, max_length: int = 32):
    """CLIP's tokenizer class over bytes: 256 symbols, 256 end-of-word forms, start and end marks;
    with ``shuffle`` the symbols' ids permuted by that seed (a tokenizer of its own)."""
    import random

    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    if shuffle is not None:
        random.Random(shuffle).shuffle(chars)
    vocab = [*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=[], model_max_length=max_length)


def _text_config(vocab: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=1, max_position_embeddings=32, projection_dim=HIDDEN,
                          bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1)  # fmt: skip


def _new_pipeline(seed: int, tokenizer):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = _text_config(len(tokenizer))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=2 * HIDDEN, attention_head_dim=(2, 4), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=TIME_DIM, transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * TIME_DIM + HIDDEN, norm_num_groups=8,
    )  # fmt: skip
    vae = AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        norm_num_groups=8, sample_size=32)  # fmt: skip
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1)  # fmt: skip
    return StableDiffusionXLPipeline(vae=vae, text_encoder=CLIPTextModel(cfg), text_encoder_2=CLIPTextModelWithProjection(cfg),
                                     tokenizer=tokenizer, tokenizer_2=clip_tokenizer(), unet=unet, scheduler=scheduler)  # fmt: skip


def make_sdxl(path: str | Path, seed: int, base: str | Path | None = None, noise: float = 0.05,
              text_encoder_seed: int | None = None, unet_dtype: torch.dtype | None = None,
              variant: str | None = None, unet_only: bool = False,
              text_encoder_class: str = "CLIPTextModel") -> Path:  # fmt: skip
    """Save a tiny SDXL pipeline in ``path``: a new one from ``seed``, or with ``base`` that
    pipeline with its UNet perturbed by ``noise``·N(0, 1) (seeded) — a fine-tune of it. With
    ``text_encoder_seed`` the first text encoder is a new one and its tokenizer a distinct one
    (its byte ids permuted), of ``text_encoder_class``: JSDXL's case (a
    ``CLIPTextModelWithProjection``), which replaces slot 1 only. Every component is saved with
    ``variant`` when given (``fp16``: in float16, files named ``*.fp16.safetensors``), else in
    float32; the UNet in ``unet_dtype`` when given. ``unet_only`` saves ``unet/`` alone (SDXL-DPO's
    repository: no model_index.json, no other component)."""
    import transformers
    from diffusers import StableDiffusionXLPipeline

    path = Path(path)
    if base is None:
        pipe = _new_pipeline(seed, clip_tokenizer())
    else:
        pipe = StableDiffusionXLPipeline.from_pretrained(base, torch_dtype=torch.float32)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in pipe.unet.parameters():
                p.add_(noise * torch.randn(p.shape, generator=g))
    if text_encoder_seed is not None:
        torch.manual_seed(text_encoder_seed)
        tok = clip_tokenizer(shuffle=text_encoder_seed)
        pipe.text_encoder, pipe.tokenizer = getattr(transformers, text_encoder_class)(_text_config(len(tok))), tok
        pipe.register_modules(text_encoder=pipe.text_encoder, tokenizer=tok)
    if variant == "fp16":
        pipe.to(torch.float16)
    if unet_dtype is not None:
        pipe.unet.to(unet_dtype)
    if unet_only:
        pipe.unet.save_pretrained(path / "unet", variant=variant, safe_serialization=True)
    else:
        pipe.save_pretrained(path, variant=variant, safe_serialization=True)
    return path


def make_siglip(path: str | Path, seed: int = 0) -> Path:
    """A tiny SigLIP (image 32x32, patches of 8, width 32) with a character tokenizer over hiragana
    and a few Latin letters, saved with its processor: a deterministic image judge that loads as
    the real ones do (``AutoModel``, ``AutoProcessor``)."""
    import tempfile

    from transformers import SiglipConfig, SiglipModel, SiglipProcessor, SiglipTextConfig, SiglipVisionConfig
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    from evohub.local.tiny import save_tokenizer

    path = Path(path)
    chars = [chr(0x3041 + i) for i in range(83)] + list("abcdefghijklmnopqrstuvwxyz ")
    tokens = [*chars, "<unk>", "</s>", "<pad>"]
    with tempfile.TemporaryDirectory() as tmp:
        tok = save_tokenizer(tmp, tokens, unk="<unk>", eos="</s>", pad="<pad>", chars=True)
    tok.model_max_length = 16
    n = len(tokens)
    text = SiglipTextConfig(vocab_size=n, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=16, bos_token_id=None,
                            eos_token_id=n - 2, pad_token_id=n - 1)  # fmt: skip
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                                image_size=32, patch_size=8)  # fmt: skip
    torch.manual_seed(seed)
    SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).save_pretrained(path)
    processor = SiglipProcessor(
        image_processor=SiglipImageProcessorPil(size={"height": 32, "width": 32}), tokenizer=tok
    )
    processor.save_pretrained(path)
    return path


def make_lora(unet_dir: str | Path, path: str | Path, seed: int, rank: int = 4, alpha: float = 2.0,
              scale: float = 0.1) -> Path:  # fmt: skip
    """A LoRA file in kohya's layout (SDXL-Lightning's ``*_lora.safetensors``): ``lora_unet_<module
    path with underscores>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha`` for every attention
    projection (``to_q``, ``to_k``, ``to_v``, ``to_out.0``) and the feed-forward output of the UNet in
    ``unet_dir``, seeded random factors."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    unet = UNet2DConditionModel.from_pretrained(unet_dir)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, mod in unet.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.endswith(("to_q", "to_k", "to_v", "to_out.0", "ff.net.2")):
            key = "lora_unet_" + name.replace(".", "_")
            out[f"{key}.lora_down.weight"] = scale * torch.randn(rank, mod.in_features, generator=g)
            out[f"{key}.lora_up.weight"] = scale * torch.randn(mod.out_features, rank, generator=g)
            out[f"{key}.alpha"] = torch.tensor(alpha)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path))
    return Path(path)
