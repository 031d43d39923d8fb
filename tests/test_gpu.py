"""Checks that need a CUDA device: DARE masks and merges agree between CPU and GPU.

Skipped without CUDA. Run on a GPU machine with ``pytest -m gpu``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from evohub.merging import kernels as methods
from evohub.models import KINDS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

VLM, LLM = KINDS.get("vlm"), KINDS.get("llm")


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

    from evohub.merging.build import merge_to_disk, open_inputs
    from evohub.merging.ps import ResidentMerge

    base = make_mistral(tmp_path / "base", seed=0, layers=3, dtype=torch.bfloat16, tokenizer=True)
    make_mistral(tmp_path / "ft1", seed=1, base=base, dtype=torch.bfloat16, noise=0.05)
    make_mistral(tmp_path / "ft2", seed=2, base=base, dtype=torch.bfloat16, noise=0.05)
    for method in ("dare_ties", "ties", "dare_linear"):
        recipe = recipe_for(tmp_path, method, dtype="bfloat16")
        dirs = [Path(r.path) for r in recipe.inputs()]
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
        # sources kept in pinned host memory and streamed through give the same bits
        streamed = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16).cuda()
        ResidentMerge(open_inputs(recipe, dirs), recipe, device="cuda", resident_device="cpu").apply(
            recipe, dict(streamed.named_parameters())
        )
        assert all(torch.equal(a, b) for a, b in zip(model.parameters(), streamed.parameters(), strict=True))
        for name, p in model.named_parameters():
            assert torch.equal(p.data.cpu(), gpu[name]), name  # in memory == on disk, same device


def test_vlm_merged_in_memory_on_gpu_matches_disk_and_answers_about_images(tmp_path):
    """A LLaVA-NeXT resident on the GPU: the in-memory merge of its language model equals the
    GPU disk merge, the vision tower is untouched, and it answers image prompts in batches."""
    from test_merge import load_dir
    from test_vlm import _recipe
    from tiny import make_llava, make_mistral, synthetic_image
    from transformers import AutoModelForImageTextToText

    from evohub.merging.arch import lm_parameters
    from evohub.merging.build import merge_to_disk, open_inputs
    from evohub.merging.ps import ResidentMerge
    from evohub.score.backends import Sampling, VisionPrompt
    from evohub.score.backends.hf import HFBackend

    VLM = KINDS.get("vlm")
    base = make_mistral(tmp_path / "base", seed=0, vocab=130, tokenizer=True)
    make_mistral(tmp_path / "ja", seed=1, base=base, noise=0.05, tokenizer=True)
    make_llava(tmp_path / "llava-next", lm=base, seed=2, noise=0.05, next=True)
    recipe = _recipe(tmp_path, vlm="llava-next")
    dirs = [Path(r.path) for r in recipe.inputs()]
    disk = load_dir(merge_to_disk(recipe, dirs, tmp_path / "gpu", device="cuda"))
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "llava-next", dtype=torch.float32).cuda().eval()
    ResidentMerge(open_inputs(recipe, dirs), recipe, device="cuda").apply(recipe, lm_parameters(model))
    source = load_dir(tmp_path / "llava-next")
    assert all(torch.equal(t, source[n]) for n, t in disk.items() if VLM.lm_name(n) is None)
    by_key = {VLM.lm_name(n): t for n, t in disk.items()}
    for name, p in model.named_parameters():
        key = VLM.lm_name(name)
        if key is not None:
            assert torch.equal(p.data.cpu(), by_key[key]), name
    be = HFBackend.load(tmp_path / "gpu", device="cuda", batch_size=2)
    prompts = [VisionPrompt(f"<image> t{i}", (synthetic_image(i, size=(30 + 25 * i, 48)),)) for i in range(3)]
    beams = Sampling(max_new_tokens=4, num_beams=5, repetition_penalty=1.5)
    assert be.generate(prompts, beams) == [be.generate([p], beams)[0] for p in prompts]


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "dare_ties", "dare_linear", "linear"])
@pytest.mark.parametrize("normalize", [False, True])
def test_fused_kernels_on_gpu_equal_the_reference(monkeypatch, method, normalize):
    """Triton's fused kernels (docs/design.md#fused-merge-kernels) against the reference kernels
    on the same GPU, bit for bit; TIES with bf16 deltas tied in thousands at the threshold."""
    from evohub.merging import fused
    from evohub.merging.methods import METHODS

    if not fused.enabled(torch.device("cuda")):
        pytest.skip("no Triton: the fused kernels are off on this GPU")
    m = METHODS.get(method)
    n = fused.MIN_NUMEL * 4 + 77
    g = torch.Generator(device="cuda").manual_seed(1)
    base = torch.randn(n, device="cuda", generator=g).bfloat16()
    xs = [(base.float() + torch.randint(-3, 4, (n,), device="cuda", generator=g) / 64).bfloat16() for _ in range(3)]
    weights, densities = [0.7, -0.4, 0.5], [0.35, 1.0, 0.6]
    keys = [methods.dare_key(3, i, "model.layers.0.mlp.up_proj.weight") for i in range(3)]
    outs = []
    for on in (True, False):
        monkeypatch.setitem(fused._state, "enabled", on)
        ws = methods.Workspace(methods.slots_for(m, normalize), "cuda")
        out = torch.empty(n, dtype=torch.bfloat16, device="cuda")
        if method == "linear":
            outs.append(methods.linear(xs, weights, normalize, out, ws))
        else:
            outs.append(methods.merge_deltas(m, base, xs, weights, densities, keys, normalize, out, ws))
        if method == "ties":
            cut = methods.trim_threshold(xs[0], base, 0.35, ws, slot=1)
            outs[-1] = (outs[-1], cut)
        assert fused._state["enabled"] == on, "the fused kernel failed and fell back to the reference"
    if method == "ties":
        assert outs[0][1] == outs[1][1]
        outs = [o[0] for o in outs]
    assert torch.equal(outs[0], outs[1])
