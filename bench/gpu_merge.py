"""Per-candidate cost of the in-memory merge on a GPU, at Mistral-7B layer shapes.

    python bench/gpu_merge.py --layers 8 --runs 5

Builds random base + 3 source tensors for a Mistral-7B-shaped model with ``--layers`` decoder
layers directly on the GPU (bf16), keeps them resident in a ResidentMerge, and times applying a
dare_ties candidate into a resident bf16 parameter set (what evolution does per candidate),
for a few chunk sizes. The per-layer time extrapolates to 32 layers. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from evohub.merging.kernels import Workspace, slots_for
from evohub.merging.methods import METHODS
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--runs", type=int, default=5)
    a = p.parse_args()
    dev = torch.device("cuda")
    sh = shapes(a.layers)
    g = torch.Generator(device=dev).manual_seed(0)
    base = {n: (0.02 * torch.randn(s, device=dev, generator=g)).bfloat16() for n, s in sh.items()}
    cfg = {"model_type": "mistral", "num_hidden_layers": a.layers}
    inputs = [Model("base", Tensors(base), cfg)]
    for k in range(3):
        inputs.append(
            Model(
                f"src{k}",
                Tensors(
                    {
                        n: (t.float() + 0.002 * torch.randn(t.shape, device=dev, generator=g)).bfloat16()
                        for n, t in base.items()
                    }
                ),
                cfg,
            )
        )
    tmp = Path(tempfile.mkdtemp())
    for d in ("b", "s0", "s1", "s2"):
        (tmp / d).mkdir()
    recipe = Recipe.model_validate({
        "evohub_recipe": 1, "dtype": "bfloat16", "seed": 0, "base_model": {"path": str(tmp / "b")},
        "parameter_space": {"method": "dare_ties", "models": [
            {"source": {"path": str(tmp / f"s{k}")}, "weight": 0.5 + 0.1 * k, "density": 0.6} for k in range(3)]},
    })  # fmt: skip
    params = {n: torch.empty_like(t) for n, t in base.items()}
    n_params = sum(t.numel() for t in base.values())
    rm = ResidentMerge(inputs, recipe, device=dev)
    results = {"device": torch.cuda.get_device_name(), "layers": a.layers, "params": n_params,
               "resident_gib": torch.cuda.memory_allocated() / 2**30, "chunks": {}}  # fmt: skip
    for chunk in (1 << 22, 1 << 24, 1 << 26, 1 << 28):
        rm.ws = Workspace(slots_for(METHODS.get("dare_ties"), False), dev, chunk)
        rm.apply(recipe, params)
        torch.cuda.synchronize()
        times = []
        for _ in range(a.runs):
            t = time.perf_counter()
            rm.apply(recipe, params)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        med = statistics.median(times)
        per_layer = (med) / (n_params / 1e9)
        results["chunks"][str(chunk)] = {
            "apply_s": med,
            "s_per_billion_params": per_layer,
            "extrapolated_7b_s": per_layer * 7.24,
            "GB_per_s_read": 4 * 2 * n_params / med / 1e9,
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
