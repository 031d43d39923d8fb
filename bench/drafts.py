"""What n-gram drafts (speculative decoding) do to a scoring call's steps, on real pretrained LMs.

A scoring call lasts as many decode steps as its longest answer takes, each a read of the weights
(docs/design.md#cost-model); on the real LMs of ``answer_loops.py`` every answer of a ja-math call
runs to the budget, mostly repeating itself. vLLM's n-gram drafts (``fitness.draft_tokens``,
docs/design.md#drafted-answers) propose the tokens that followed the answer's last few tokens
where they occurred before, and verify them in one step. One call of Japanese word problems
(answer_loops.py's), the paper's prompt and stop strings, greedy, on vLLM:

- full decoding (no drafts): every answer's tokens, texts and ja-math scores, seconds;
- the same call with ``draft_tokens`` (evohub's VLLMBackend), and with drafts and the loop stop
  (``loop_span``, as ``jobs/evollm-jp-fast.yaml`` scores): texts and scores against full decoding,
  the engine's steps (over the loop stop's rounds too), tokens decoded, seconds;
- replaying vLLM's n-gram proposer (:func:`proposed`: the longest stretch of ``low``..``high``
  tokens ending the context that occurred earlier, its earliest occurrence, up to ``k`` tokens
  after it) over full decoding's answers: each answer's steps for every ``k`` and lookup range,
  checked against the engine's steps for the measured ``k``; the cost model's figures
  (evohub/pipeline/cost.py, ``DRAFTS``) are these;
- the call's decode seconds on an H100 for a 7B model answering as these models did, step by step
  through the cost model's roofline (:func:`evohub.pipeline.cost.step_seconds`), with and without
  drafts.

    .venv-vllm/bin/python bench/drafts.py --model /tmp/lm/smollm2-135m-instruct \\
        --out bench/results/drafts_smollm2.json          # about 12 min on 2 cores; gemma-3-270m 15 min

(``answer_loops.py convert`` writes the models.)
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

#: the lookup ranges replayed: evohub's (1, 8), vLLM's default (5, 5), and two between
LOOKUPS = ((1, 8), (1, 4), (2, 5), (5, 5))
#: a 7B Mistral in bf16 on an H100: 7.24e9 parameters; KV 32 layers x (K, V) x 8 heads x 128 x 2 bytes
SEVEN_B = {"params": 7_241_732_096, "kv_bytes_per_token": 32 * 2 * 8 * 128 * 2, "prompt": 300}


def proposed(context: list[int], first: list[dict], k: int, low: int, high: int) -> list[int]:
    """vLLM's n-gram proposal (vllm/v1/spec_decode/ngram_proposer.py, read for its rule): the
    longest n in [low, high] whose last n tokens of ``context`` occurred earlier (``first[n]``:
    each n-gram's earliest start, over n-grams ending before the last token), the tokens after
    that earliest occurrence, at most ``k``, none past the context's end."""
    for n in range(min(high, len(context)), low - 1, -1):
        start = first[n].get(tuple(context[-n:]))
        if start is not None:
            return context[start + n : start + n + k]
    return []


def replay(prompt: list[int], answer: list[int], k: int, low: int, high: int) -> list[int]:
    """The tokens each engine step verifies for ``answer`` (greedy: a draft is kept up to its first
    token the model would not have chosen, then the model's own token): one entry a step."""
    context, first, indexed = list(prompt), [{} for _ in range(high + 1)], 0
    context.append(answer[0])  # the prompt's step
    pos, verified = 1, [1]
    while pos < len(answer):
        for end in range(indexed, len(context) - 1):  # n-grams ending before the last token
            for n in range(low, high + 1):
                if end - n + 1 >= 0:
                    first[n].setdefault(tuple(context[end - n + 1 : end + 1]), end - n + 1)
        indexed = max(indexed, len(context) - 1)
        draft = proposed(context, first, k, low, high) if k else []
        kept = 0
        while kept < len(draft) and pos + kept < len(answer) and draft[kept] == answer[pos + kept]:
            kept += 1
        n = min(kept + 1, len(answer) - pos)
        context += answer[pos : pos + n]
        pos += n
        verified.append(1 + len(draft))
    return verified


def call_seconds(traces: list[list[int]], answers: list[list[int]], profile, shape: dict) -> float:
    """A call's decode seconds on ``profile``, step by step: each step reads the weights and the
    running answers' KV cache and verifies their tokens (``traces``: verified tokens a step)."""
    from evohub.pipeline.cost import step_seconds

    total, kept = 0.0, sum(map(len, answers)) / sum(map(len, traces))
    for s in range(max(map(len, traces))):
        live = [t[s] for t in traces if s < len(t)]
        context = shape["prompt"] + s * kept
        total += step_seconds(profile, shape["params"], "bfloat16", len(live), shape["kv_bytes_per_token"], context,
                              sum(live))  # fmt: skip
    return total


def figures(prompts: list[list[int]], answers: list[list[int]]) -> dict:
    """Replayed steps for every k in 1..8 and lookup range, and the H100 call seconds."""
    from evohub.pipeline.cost import PROFILES

    h100, out = PROFILES["h100"], {}
    plain = call_seconds([[1] * len(a) for a in answers], answers, h100, SEVEN_B)
    for low, high in LOOKUPS:
        for k in range(1, 9):
            traces = [replay(p, a, k, low, high) for p, a in zip(prompts, answers, strict=True)]
            steps = [len(t) for t in traces]
            longest = max(range(len(answers)), key=lambda i: steps[i])
            seconds = call_seconds(traces, answers, h100, SEVEN_B)
            out[f"{low}-{high}/{k}"] = {
                "call_steps": max(steps), "call_steps_per_token": max(steps) / len(answers[longest]),
                "tokens_per_step": sum(map(len, answers)) / sum(steps),
                "verified_per_token": sum(map(sum, traces)) / sum(map(len, answers)),
                "h100_7b_call_s": round(seconds, 3), "h100_7b_call_vs_full": round(seconds / plain, 3),
            }  # fmt: skip
    out["h100_7b_call_s_full"] = round(plain, 3)
    return out


def measure(args) -> dict:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from answer_loops import questions

    from evohub.score.backends import Sampling
    from evohub.score.backends.vllm import NGRAM_LOOKUP, VLLMBackend
    from evohub.score.tasks.ja_math import STOP, JaMath

    rows = questions(args.items, args.seed)
    task, numbers = JaMath(), [r["answer_number"] for r in rows]
    prompts = task.prompts(rows)
    runs = {}
    for k in (None, args.draft):
        be = VLLMBackend(args.model, dtype=args.dtype, max_model_len=args.budget + 256, seed=0, draft_tokens=k)
        if k is None:  # the answers' token ids, for the replay
            from vllm import SamplingParams

            outs = be.llm.generate(prompts, SamplingParams(temperature=0, max_tokens=args.budget, stop=list(STOP)),
                                   use_tqdm=False)  # fmt: skip
            ids = [list(o.prompt_token_ids) for o in outs], [list(o.outputs[0].token_ids) for o in outs]
            calls = {"full": None}
        else:  # the nightly job's fitness: drafts, and drafts with its loop stop
            calls = {"drafted": None} | ({"drafted_loop_stop": args.span} if args.span else {})
        for name, span in calls.items():
            runs[name] = _call(be, prompts, Sampling(max_new_tokens=args.budget, stop=STOP, loop_span=span), task,
                               numbers)  # fmt: skip
        be.close()
        del be
        gc.collect()
    prompt_ids, answers = ids
    low, high = NGRAM_LOOKUP
    replayed = [len(replay(p, a, args.draft, low, high)) for p, a in zip(prompt_ids, answers, strict=True)]
    full = runs["full"]
    return {
        "model": Path(args.model).name, "items": args.items, "budget": args.budget, "seed": args.seed,
        "draft_tokens": args.draft, "lookup": [low, high], "loop_span": args.span,
        "answers_at_budget": sum(len(a) >= args.budget for a in answers),
        **{name: {k: v for k, v in r.items() if k not in ("texts", "items")}
           | {"same_text": sum(a == b for a, b in zip(full["texts"], r["texts"], strict=True)),
              "same_score": sum(a == b for a, b in zip(full["items"], r["items"], strict=True))}
           for name, r in runs.items()},
        "replayed_call_steps": max(replayed), "replayed_steps_sorted_top5": sorted(replayed)[-5:],
        "figures": figures(prompt_ids, answers),
    }  # fmt: skip


def _call(backend, prompts: list, sampling, task, numbers: list) -> dict:
    """One scoring call on ``backend``: its texts, item scores, seconds, engine steps and tokens."""
    backend.usage["steps"] = backend.usage["generated_tokens"] = 0
    start = time.perf_counter()
    texts = backend.generate(prompts, sampling)
    seconds = time.perf_counter() - start
    scored = task.score_outputs(texts, numbers)
    return {"texts": texts, "items": scored.items, "seconds": round(seconds, 1), "steps": backend.usage["steps"],
            "generated_tokens": backend.usage["generated_tokens"], "acc_ja": scored.metrics["acc_ja"]}  # fmt: skip


def main(argv=None) -> int:
    from answer_loops import call_args, emit

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    call_args(ap)
    ap.add_argument("--draft", type=int, default=4, help="draft_tokens of the drafted call")
    ap.add_argument("--span", type=int, default=96, help="the drafted call again with this loop_span (0: not)")
    args = ap.parse_args(argv)
    emit(measure(args), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
