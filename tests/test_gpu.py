"""Checks that need a CUDA device: DARE masks and merges agree between CPU and GPU.

Skipped without CUDA. Run on a GPU machine with ``pytest -m gpu``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from evohub.merge import methods

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_dare_mask_identical_on_cpu_and_gpu():
    n = 3_000_017
    key = methods.dare_key(5, 2, "model.layers.7.mlp.down_proj.weight")
    masks = []
    for dev in ("cpu", "cuda"):
        x = torch.ones(n, device=dev)
        ws = methods.Workspace(0, dev, chunk=1 << 20)
        for s, e in ws.spans(n):
            methods.dare_(x[s:e], s, 0.37, key, ws)
        masks.append((x != 0).cpu())
    assert torch.equal(masks[0], masks[1])


def test_merge_on_gpu_matches_cpu_and_resident(tmp_path):
    from test_merge import load_dir, recipe_for
    from tiny import make_mistral
    from transformers import AutoModelForCausalLM

    from evohub.merge.build import input_refs, merge_to_disk, open_inputs
    from evohub.merge.ps import ResidentMerge

    base = make_mistral(tmp_path / "base", seed=0, layers=3, dtype=torch.bfloat16, tokenizer=True)
    make_mistral(tmp_path / "ft1", seed=1, base=base, dtype=torch.bfloat16, noise=0.05)
    make_mistral(tmp_path / "ft2", seed=2, base=base, dtype=torch.bfloat16, noise=0.05)
    for method in ("dare_ties", "ties", "dare_linear"):
        recipe = recipe_for(tmp_path, method, dtype="bfloat16")
        dirs = [Path(r.path) for r in input_refs(recipe)]
        cpu = load_dir(merge_to_disk(recipe, dirs, tmp_path / f"cpu-{method}"))
        gpu = load_dir(merge_to_disk(recipe, dirs, tmp_path / f"gpu-{method}", device="cuda"))
        for name in cpu:
            # the same entries survive (masks are device-independent) ...
            base_t = load_dir(base)[name]
            assert torch.equal(cpu[name] == base_t, gpu[name] == base_t), name
            # ... and the values agree to bfloat16 rounding
            assert ((cpu[name].float() - gpu[name].float()).abs() <= cpu[name].float().abs() * 2**-7 + 1e-6).all(), name
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16).cuda()
        resident = ResidentMerge(open_inputs(recipe, dirs), recipe, device="cuda")
        resident.apply(recipe, dict(model.named_parameters()))
        for name, p in model.named_parameters():
            assert torch.equal(p.data.cpu(), gpu[name]), name  # in memory == on disk, same device
