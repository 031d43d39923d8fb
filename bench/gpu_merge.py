"""Per-candidate cost of the in-memory merge on a GPU, at Mistral-7B layer shapes: the fused
kernels against the reference kernels, side by side in one run.

    python bench/gpu_merge.py --layers 8 --runs 5 --peak-gbs 3350     # H100 SXM (H200: 4800)
    python bench/gpu_merge.py --device cpu --layers 1 --runs 3        # smoke run, no GPU

Builds random base + 3 source tensors for a Mistral-7B-shaped model with ``--layers`` decoder
layers directly on the device (bf16), keeps them resident in a ResidentMerge, and times applying
a candidate into a resident bf16 parameter set (what evolution does per candidate) for
dare_ties and ties, with fusion on and off (medians of ``--runs``). Checks the two give the same
bits. Reports seconds per candidate, the extrapolation to a 7.24B model, and achieved GB/s
(base + 3 sources read, the output written: 5 × 2 bytes per parameter) against ``--peak-gbs``.
Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from evohub.merging import fused
from evohub.merging.ps import Model, ResidentMerge
from evohub.spec import Recipe

HIDDEN, INTER, VOCAB, KV = 4096, 14336, 32000, 1024


def shapes(layers: int) -> dict[str, tuple[int, ...]]:
    out = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(layers):
        p = f"model.layers.{i}."
        out |= {
            p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
            p + "self_attn.k_proj.weight": (KV, HIDDEN),
            p + "self_attn.v_proj.weight": (KV, HIDDEN),
            p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
            p + "mlp.gate_proj.weight": (INTER, HIDDEN),
            p + "mlp.up_proj.weight": (INTER, HIDDEN),
            p + "mlp.down_proj.weight": (HIDDEN, INTER),
            p + "input_layernorm.weight": (HIDDEN,),
            p + "post_attention_layernorm.weight": (HIDDEN,),
        }
    return out | {"model.norm.weight": (HIDDEN,), "lm_head.weight": (VOCAB, HIDDEN)}


class Tensors:
    def __init__(self, t: dict[str, torch.Tensor]):
        self.t = t

    def names(self):
        return list(self.t)

    def shape(self, n):
        return tuple(self.t[n].shape)

    def dtype(self, n):
        return self.t[n].dtype

    def get(self, n):
        return self.t[n]


def _time(rm: ResidentMerge, recipe: Recipe, params: dict, runs: int, dev: torch.device) -> float:
    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    rm.apply(recipe, params)  # warm-up (and compilation)
    sync()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        rm.apply(recipe, params)
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--device", default="cuda")
    p.add_argument("--peak-gbs", type=float, default=None, help="the device's memory bandwidth, GB/s")
    a = p.parse_args()
    dev = torch.device(a.device)
    sh = shapes(a.layers)
    g = torch.Generator(device=dev).manual_seed(0)
    base = {n: (0.02 * torch.randn(s, device=dev, generator=g)).bfloat16() for n, s in sh.items()}
    cfg = {"model_type": "mistral", "num_hidden_layers": a.layers}
    inputs = [Model("base", Tensors(base), cfg)]
    for k in range(3):
        noisy = {
            n: (t.float() + 0.002 * torch.randn(t.shape, device=dev, generator=g)).bfloat16() for n, t in base.items()
        }
        inputs.append(Model(f"src{k}", Tensors(noisy), cfg))
    tmp = Path(tempfile.mkdtemp())
    for d in ("b", "s0", "s1", "s2"):
        (tmp / d).mkdir()
    n_params = sum(t.numel() for t in base.values())
    results = {"device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "layers": a.layers,
               "params": n_params, "torch": torch.__version__, "methods": {}}  # fmt: skip
    for method in ("dare_ties", "ties"):
        recipe = Recipe.model_validate({
            "evohub_recipe": 1, "dtype": "bfloat16", "seed": 0, "base_model": {"path": str(tmp / "b")},
            "parameter_space": {"method": method, "models": [
                {"source": {"path": str(tmp / f"s{k}")}, "weight": 0.5 + 0.1 * k, "density": 0.6} for k in range(3)]},
        })  # fmt: skip
        rm = ResidentMerge(inputs, recipe, device=dev, mask_tables=False)
        row: dict = {}
        outs = {}
        for label, on in (("fused", True), ("reference", False)):
            fused._state["enabled"] = on
            params = {n: torch.empty_like(t) for n, t in base.items()}
            med = _time(rm, recipe, params, a.runs, dev)
            outs[label] = params
            gbs = 5 * 2 * n_params / med / 1e9
            row[label] = {"apply_s": med, "s_per_billion_params": med / (n_params / 1e9),
                          "extrapolated_7b_s": med / (n_params / 1e9) * 7.24, "GB_per_s": gbs,
                          "share_of_peak": gbs / a.peak_gbs if a.peak_gbs else None}  # fmt: skip
        fused._state["enabled"] = True
        row["speedup"] = row["reference"]["apply_s"] / row["fused"]["apply_s"]
        row["bit_identical"] = all(torch.equal(outs["fused"][n], outs["reference"][n]) for n in base)
        results["methods"][method] = row
        del rm, outs
    if dev.type == "cuda":
        results["resident_gib"] = torch.cuda.memory_allocated() / 2**30
    print(json.dumps(results, indent=2))
    if not all(r["bit_identical"] for r in results["methods"].values()):
        raise SystemExit("fused and reference merges differ")


if __name__ == "__main__":
    main()
