"""Per-candidate cost of a parameter-space candidate merged into a vLLM engine's own weights,
at Mistral-7B layer shapes, beside the old path (merged tensors handed to ``reload_weights``).

    python bench/vllm_swap.py --layers 8 --runs 5 --peak-gbs 3350          # an H100 (H200: 4800)
    .venv-vllm/bin/python bench/vllm_swap.py --small --runs 3                # a CPU smoke run

Writes a base and 3 sources (hidden 4096, intermediate 14336, 32 heads, 8 KV heads, head_dim 128,
vocab 32000, ``--layers`` decoder layers, bf16; ``--small``: tiny shapes) as checkpoints, starts
vLLM on the base (eager: compiling and capturing CUDA graphs would take most of the time budget
and does not change the swap), puts the base and the sources resident in the engine's worker
(``VLLMBackend.resident``), and times, medians of ``--runs``:

- new: one dare_ties candidate merged into the engine's weights (``VLLMBackend.merge``: the RPC,
  the merge, ``reset_prefix_cache``); ``merge_s`` is the worker's time in the merge's writes,
  ``swap_s`` everything else (the mapping lookups, vLLM's rebuild and post-processing on the
  reload way, ``reset_prefix_cache``);
- old: the same candidate merged into new tensors (``ResidentMerge.tensors``) and handed to the
  model runner's ``reload_weights``, as the worker did before, run inside the worker with its
  resident merge (in one process the RPC passes references, as it did).

The two paths' prompt log-probabilities for one candidate are compared (the same weights: equal;
another candidate merged in between must differ). Seconds
extrapolate to 32 layers by parameter count (7.24B parameters; null with ``--small``); GB/s counts the bytes a
candidate must move (base + 3 sources read, the output written, bf16) over its seconds, against
``--peak-gbs``. Prints JSON. Budget: under 3 minutes on an H100 at ``--layers 8``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

FULL = {"hidden": 4096, "inter": 14336, "heads": 32, "kv_heads": 8, "head_dim": 128, "vocab": 32000}
SMALL = {"hidden": 256, "inter": 512, "heads": 4, "kv_heads": 2, "head_dim": 64, "vocab": 512}
SOURCES = 3


def shapes(s: dict, layers: int) -> dict[str, tuple[int, ...]]:
    """Checkpoint names and shapes of a Mistral with ``layers`` decoder layers."""
    h, kv = s["hidden"], s["kv_heads"] * s["head_dim"]
    out = {"model.embed_tokens.weight": (s["vocab"], h)}
    for i in range(layers):
        p = f"model.layers.{i}."
        out |= {
            p + "self_attn.q_proj.weight": (s["heads"] * s["head_dim"], h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, s["heads"] * s["head_dim"]),
            p + "mlp.gate_proj.weight": (s["inter"], h),
            p + "mlp.up_proj.weight": (s["inter"], h),
            p + "mlp.down_proj.weight": (h, s["inter"]),
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
        }
    return out | {"model.norm.weight": (h,), "lm_head.weight": (s["vocab"], h)}


def write_models(root: Path, s: dict, layers: int, dev: torch.device) -> list[Path]:
    """A random base (N(0, 0.02)) and sources (base + N(0, 0.002)), bf16, with a config and a
    word-level tokenizer: the directories a search's worker gets."""
    from safetensors.torch import save_file
    from transformers import MistralConfig

    from evohub.local.tiny import save_tokenizer, word_tokens

    config = MistralConfig(
        vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["inter"], num_hidden_layers=layers,
        num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"], head_dim=s["head_dim"],
        max_position_embeddings=4096, tie_word_embeddings=False, eos_token_id=s["vocab"] - 1, dtype="bfloat16",
    )  # fmt: skip
    g = torch.Generator(device=dev).manual_seed(0)
    dirs = [root / "base"] + [root / f"src{k}" for k in range(SOURCES)]
    base: dict[str, torch.Tensor] = {}
    for k, d in enumerate(dirs):
        d.mkdir(parents=True)
        config.save_pretrained(d)
        out = {}
        for n, shape in shapes(s, layers).items():
            if k == 0:
                base[n] = (0.02 * torch.randn(shape, device=dev, generator=g)).bfloat16()
                t = base[n]
            else:
                t = (base[n].float() + 0.002 * torch.randn(shape, device=dev, generator=g)).bfloat16()
            out[n] = t.cpu()
        save_file(out, str(d / "model.safetensors"), metadata={"format": "pt"})
        del out
    save_tokenizer(dirs[0], word_tokens(s["vocab"], "t"), unk="<unk>", eos="</s>")
    return dirs


def recipe_for(dirs: list[Path], k: int):
    """The k-th candidate: dare_ties over the base and the sources, weights and densities moved a little."""
    from evohub.spec import Recipe

    return Recipe.model_validate({
        "evohub_recipe": 1, "dtype": "bfloat16", "seed": 0, "base_model": {"path": str(dirs[0])},
        "parameter_space": {"method": "dare_ties", "models": [
            {"source": {"path": str(d)}, "weight": 0.4 + 0.1 * j + 0.01 * k, "density": 0.5 + 0.1 * j}
            for j, d in enumerate(dirs[1:])]},
    })  # fmt: skip


def _old_path(worker, recipe: dict) -> dict:
    """In the engine's worker: the candidate as new tensors, handed to ``reload_weights``."""
    from evohub.spec import Recipe

    merge = worker.evohub_engine_merge.merge
    start = time.perf_counter()
    named = list(merge.tensors(Recipe.model_validate(recipe)))
    _sync(merge.device)
    made = time.perf_counter()
    worker.model_runner.reload_weights(weights_iterator=iter(named))
    _sync(merge.device)
    return {"materialise_s": made - start, "reload_s": time.perf_counter() - made}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _logprobs(llm, vocab: int) -> list[list[float]]:
    from vllm import SamplingParams

    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, vocab - 2, (24,), generator=g).tolist() for _ in range(4)]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0), use_tqdm=False)  # fmt: skip
    return [[o.prompt_logprobs[i][p[i]].logprob for i in range(1, len(p))] for o, p in zip(outs, prompts, strict=True)]


def main() -> int:
    """Set up, time the new and the old path side by side, check their outputs agree, print JSON
    (over 60 lines: one measured sequence, kept in order so the timings read as they were taken)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--small", action="store_true", help="tiny shapes, for a CPU smoke run")
    p.add_argument(
        "--peak-gbs", type=float, default=3350.0, help="the device's memory bandwidth (H100 3350, H200 4800)"
    )
    p.add_argument("--dir", help="where the checkpoints go (default: a temporary directory, in /dev/shm if it fits)")
    a = p.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from evohub.merging.methods import METHODS
    from evohub.merging.ps import workspace_bytes
    from evohub.score.backends.vllm import VLLMBackend, free_utilization

    s = SMALL if a.small else FULL
    dev = torch.device("cuda" if cuda else "cpu")
    n_params = sum(torch.Size(x).numel() for x in shapes(s, a.layers).values())
    n_32 = sum(torch.Size(x).numel() for x in shapes(FULL, 32).values())
    model_bytes = 2 * n_params
    shm = Path("/dev/shm")
    parent = a.dir or (str(shm) if shm.is_dir() and shutil.disk_usage(shm).free > 5 * model_bytes else None)
    root = Path(tempfile.mkdtemp(prefix="evohub-vllm-swap-", dir=parent))
    report: dict = {"device": torch.cuda.get_device_name(dev) if cuda else "cpu", "layers": a.layers,
                    "small": a.small, "params": n_params, "params_32_layers": n_32, "runs": a.runs}  # fmt: skip
    try:
        t = time.perf_counter()
        dirs = write_models(root, s, a.layers, dev)
        report["write_models_s"] = round(time.perf_counter() - t, 2)
        gpu = {}
        if cuda:
            torch.cuda.empty_cache()  # the generator's blocks go back before the engine measures what is free
            # the sources (4 models), the old path's merged copy (1) and the workspace load after the engine
            reserve = 5 * model_bytes + workspace_bytes(METHODS.get("dare_ties"), False)
            gpu = {"gpu_memory_utilization": free_utilization(str(dev), reserve=reserve)}
            report["gpu_memory_utilization"] = gpu["gpu_memory_utilization"]
        t = time.perf_counter()
        be = VLLMBackend(dirs[0], dtype="bfloat16", max_model_len=256, enforce_eager=True, **gpu)
        report["engine_start_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        info = be.resident(dirs, recipe_for(dirs, 0))
        report |= {"resident_s": round(time.perf_counter() - t, 2), "mode": info["mode"], "why": info["why"]}
        be.merge(recipe_for(dirs, 0))  # the first candidate compiles the fused kernels (and maps, on the reload way)
        be.llm.collective_rpc(_old_path, args=(recipe_for(dirs, 0).model_dump(mode="json", exclude_none=True),))
        new, old = [], []
        for k in range(a.runs):  # alternating, so a busy machine slows both alike
            recipe = recipe_for(dirs, k + 1)
            start = time.perf_counter()
            out = be.merge(recipe)
            new.append((time.perf_counter() - start, out["merge_s"]))
            start = time.perf_counter()
            parts = be.llm.collective_rpc(_old_path, args=(recipe.model_dump(mode="json", exclude_none=True),))[0]
            be.reset_prefix_cache()
            old.append((time.perf_counter() - start, parts))
        total = statistics.median(x for x, _ in new)
        merge_s = statistics.median(x for _, x in new)
        old_total = statistics.median(x for x, _ in old)
        old_lp = _logprobs(be.llm, s["vocab"])  # the old path's last candidate ...
        be.merge(recipe_for(dirs, 0))
        other_lp = _logprobs(be.llm, s["vocab"])  # (another one in between) ...
        be.merge(recipe_for(dirs, a.runs))
        new_lp = _logprobs(be.llm, s["vocab"])  # ... and the same candidate merged in place
        moved = (1 + SOURCES + 1) * model_bytes  # base and sources read, the output written

        def at_32(seconds: float) -> float | None:  # tiny shapes say nothing of 7B ones
            return None if a.small else round(seconds * n_32 / n_params, 3)

        report["new"] = {
            "candidate_s": round(total, 4), "merge_s": round(merge_s, 4), "swap_s": round(total - merge_s, 4),
            "swap_share": round((total - merge_s) / total, 3), "candidate_s_32_layers": at_32(total),
            "achieved_gbs": round(moved / total / 1e9, 1), "share_of_peak": round(moved / total / 1e9 / a.peak_gbs, 3),
        }  # fmt: skip
        report["old"] = {
            "candidate_s": round(old_total, 4),
            "materialise_s": round(statistics.median(x["materialise_s"] for _, x in old), 4),
            "reload_s": round(statistics.median(x["reload_s"] for _, x in old), 4),
            "candidate_s_32_layers": at_32(old_total),
            "achieved_gbs": round(moved / old_total / 1e9, 1),
        }
        report |= {
            "speedup": round(old_total / total, 2),
            "peak_gbs": a.peak_gbs,
            "same_outputs": new_lp == old_lp,
            "candidates_differ": other_lp != old_lp,
        }
        be.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return 0 if report["same_outputs"] and report["candidates_differ"] else 1


if __name__ == "__main__":
    sys.exit(main())
