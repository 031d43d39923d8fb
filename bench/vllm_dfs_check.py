"""Does the vLLM data-flow path model say what the transformers path executor says, on this device?

    .venv-vllm/bin/python bench/vllm_dfs_check.py              # cuda when there is one, else cpu
    python bench/vllm_dfs_check.py --device cuda --out check.json   # a GPU runner's vLLM environment

Two tiny random Mistrals (A and B; float32, head_dim 64) are built in a temporary directory; one
vLLM engine of the path model (docs/design.md#data-flow-paths-on-vllm) is started on them, and for
two paths — each with a repeated layer, hops into B, a skipped layer and scales other than 1 —
its greedy text is compared with :class:`~evohub.merging.path.PathExecutor`'s on the same device,
switching paths without a restart. Also timed: the engine's start (writing its model directory,
the engine, the weights' load) and a path switch (``set_path``: the worker's hops re-pointed and
the prefix cache reset). Prints JSON as the last line of stdout (vLLM logs there too; ``--out``
writes it to a file); exit 1 when a text differs, 2 when the set-up is wrong
(vLLM missing, or evohub's vLLM plugin entry point not installed in this environment:
``pip install --no-deps -e .``). Under two minutes on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from importlib.metadata import entry_points
from pathlib import Path

import torch
from transformers import MistralConfig, MistralForCausalLM

from evohub.local.tiny import save_tokenizer, word_tokens
from evohub.merging.path import PathExecutor
from evohub.score.backends import Sampling
from evohub.score.backends.hf import HFBackend, load_model
from evohub.score.backends.vllm_path import VLLMPathBackend

PATHS = [
    ([("a", 0), ("b", 1), ("a", 1), ("a", 1), ("b", 3), ("a", 3)], [1.0, 0.7, 1.6, 1.1, 0.9, 1.3]),
    ([("a", 0), ("b", 0), ("b", 2), ("a", 0), ("a", 2), ("a", 3)], [1.0, 1.25, 0.8, 1.5, 0.6, 1.1]),
]
HOPS = 8
PROMPTS = ["t1 t2 t3", "t40 t41", "t7 t8 t9 t10 t11", "t200", " ".join(f"t{(7 * i) % 250}" for i in range(150))]


def make_mistral(path: Path, seed: int) -> Path:
    """A random 4-layer Mistral (hidden 256, 4 heads of 64, 2 KV heads) with a word-level tokenizer."""
    torch.manual_seed(seed)
    config = MistralConfig(vocab_size=256, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=512,
                           tie_word_embeddings=False, eos_token_id=255, initializer_range=0.2)  # fmt: skip
    MistralForCausalLM(config).save_pretrained(path)
    save_tokenizer(path, word_tokens(256, "t"), unk="<unk>", eos="</s>")
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--switches", type=int, default=20, help="path switches timed (default 20)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args()
    report: dict = {"device": args.device, "torch": torch.__version__}
    if args.device.startswith("cuda"):
        report["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    else:
        os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    plugins = [e.value for e in entry_points(group="vllm.general_plugins")]
    report["plugin"] = "evohub.score.backends.vllm_path:register" in plugins
    try:
        import vllm  # here: after the environment it reads at import is set

        report["vllm"] = vllm.__version__
    except ImportError as e:
        report["error"] = f"vLLM is not installed here: {e}"
    if not report["plugin"]:
        report.setdefault("error", "evohub's vllm.general_plugins entry point is missing: pip install --no-deps -e .")
    if "error" in report:
        print(json.dumps(report))
        return 2

    greedy = Sampling(max_new_tokens=args.new_tokens)
    with tempfile.TemporaryDirectory(prefix="vllm-dfs-check-") as tmp:
        a, b = make_mistral(Path(tmp) / "a", 0), make_mistral(Path(tmp) / "b", 1)
        (model_a, tokenizer, _), (model_b, _, _) = (load_model(d, args.device, torch.float32) for d in (a, b))
        executor = PathExecutor(model_a, model_b)
        hf = HFBackend(executor.model, tokenizer)
        gpu = {"gpu_memory_utilization": args.gpu_memory_utilization} if args.device.startswith("cuda") else {}
        start = time.perf_counter()
        engine = VLLMPathBackend(a, b, hops=HOPS, dtype="float32", max_model_len=256, **gpu)
        report["engine_start_s"] = round(time.perf_counter() - start, 2)
        report["paths"], texts = [], []
        for path, scales in PATHS:
            executor.set_path(path, scales)
            want = hf.generate(PROMPTS, greedy)
            engine.set_path(path, scales)
            start = time.perf_counter()
            got = engine.generate(PROMPTS, greedy)
            report["paths"].append({"path": path, "scales": scales, "generate_s": round(time.perf_counter() - start, 3),
                                    "equal": [g == w for g, w in zip(got, want, strict=True)],
                                    "vllm": got, "hf": want})  # fmt: skip
            texts.append(got)
        times = []
        for i in range(args.switches):
            start = time.perf_counter()
            engine.set_path(*PATHS[i % 2])
            times.append(time.perf_counter() - start)
        report["switch_ms"] = {"median": round(1e3 * statistics.median(times), 3), "max": round(1e3 * max(times), 3)}
        report["switch_changes_text"] = texts[0] != texts[1]
        engine.close()
    report["ok"] = all(all(p["equal"]) for p in report["paths"]) and report["switch_changes_text"]
    print(json.dumps(report))  # one line, the last: vLLM logs to stdout too
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
