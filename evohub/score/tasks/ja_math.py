"""``ja-math``: the paper's MGSM-JA protocol (Akiba et al., 2024; docs/design.md#mgsm-ja-scoring).

Zero-shot, the Japanese Alpaca-style chain-of-thought prompt below, greedy decoding, at most
1024 new tokens, stopping at "Instruction"/"Response". The answer is the last match of
``\\d*\\.?\\d+`` in the output, read as a float and compared with ``answer_number``; a response
counts for ``acc_ja`` (the paper's metric and the fitness) only if it is correct *and* fastText
lid.176 gives P(ja) > 0.5 for it. ``acc_strict`` / ``acc_ja_strict`` use the strict extraction
(thousands separators, minus signs, full-width digits) beside it.

Rows: ``question`` (str) and ``answer_number`` (number), as in ``juletxara/mgsm`` (config ja)
and ``SakanaAI/gsm8k-ja-test_250-1319``.
"""

from __future__ import annotations

from evohub.errors import ScoreError
from evohub.score.backends import Sampling
from evohub.score.metrics import extract_number, japanese_probability
from evohub.score.tasks.base import TASKS, Published, Scored

#: The prompt of the paper's released evaluation code (evomerge, "ja-alpaca-cot").
PROMPT = (
    "以下に、あるタスクを説明する指示があります。リクエストを適切に完了するための回答を日本語で記述してください。"
    "一歩一歩考えましょう。\n\n### 指示:\n{input}\n\n### 応答:"
)
STOP = ("Instruction:", "Instruction", "Response:", "Response")
MAX_NEW_TOKENS = 1024


def _equal(pred: float | None, answer: float) -> bool:
    return pred is not None and float(pred) == float(answer)


def score_outputs(outputs: list[str], answers: list[float]) -> Scored:
    """Metrics and per-sample records for model outputs (used for fitness and re-scoring)."""
    samples = []
    for out, ans in zip(outputs, answers, strict=True):
        pred, strict = extract_number(out), extract_number(out, strict=True)
        p_ja = japanese_probability(out)
        samples.append({
            "output": out, "answer_number": ans, "prediction": pred, "prediction_strict": strict,
            "p_ja": p_ja, "correct": _equal(pred, ans), "correct_strict": _equal(strict, ans),
        })  # fmt: skip
    n = len(samples)
    if n == 0:
        raise ScoreError("ja-math: no examples to score")

    def rate(key: str, ja: bool) -> float:
        return sum(1 for s in samples if s[key] and (not ja or s["p_ja"] > 0.5)) / n

    metrics = {
        "acc": rate("correct", False),
        "acc_ja": rate("correct", True),
        "acc_strict": rate("correct_strict", False),
        "acc_ja_strict": rate("correct_strict", True),
        "ja_rate": sum(1 for s in samples if s["p_ja"] > 0.5) / n,
        "mean_chars": sum(len(s["output"]) for s in samples) / n,  # answer length: a descriptor or objective
        "n": float(n),
    }
    items = [1.0 if s["correct"] and s["p_ja"] > 0.5 else 0.0 for s in samples]  # acc_ja is their mean
    return Scored(metrics, samples, items)


@TASKS.register
class JaMath:
    """The task; ``prompt`` (with ``{input}``) and ``stop`` default to the paper's."""

    name = "ja-math"
    doc = "MGSM-JA protocol: greedy CoT, last number, right and answered in Japanese (acc_ja)"
    fitness_metric = "acc_ja"
    options = ("prompt", "stop", "loop_span")
    backends = ("vllm", "hf")
    max_new_tokens = MAX_NEW_TOKENS
    shown = ("acc_ja", "acc", "acc_ja_strict", "acc_strict")
    metrics = ("acc", "acc_ja", "acc_strict", "acc_ja_strict", "ja_rate", "mean_chars", "n")
    item_range, item_binary = (0.0, 1.0), True
    #: how the fitness metric is published (.eval_results, model-index): its scale and description
    result = Published("accuracy", "text-generation", 100.0,
                       "acc_ja (%): correct and Japanese (fastText lid.176 P(ja) > 0.5); zero-shot CoT, greedy (Akiba et al., 2024)")  # fmt: skip
    #: saved outputs can be re-scored from rows with this answer field
    answer_field, answer_kind = "answer_number", "number"
    score_outputs = staticmethod(score_outputs)

    @staticmethod
    def valid_answer(v) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    def __init__(self, prompt: str | None = None, stop: tuple[str, ...] | None = None, loop_span: int | None = None):
        self.prompt = prompt or PROMPT
        self.stop = STOP if stop is None else tuple(stop)
        self.loop_span = loop_span  # fitness only: the evaluation keeps the paper's protocol

    def check(self, rows: list[dict]) -> None:
        for i, r in enumerate(rows):
            if not isinstance(r.get("question"), str):
                raise ScoreError(f"ja-math: row {i} has no 'question' string")
            a = r.get("answer_number")
            if isinstance(a, bool) or not isinstance(a, int | float):
                raise ScoreError(f"ja-math: row {i} has no numeric 'answer_number' (got {a!r})")

    def prompts(self, rows: list[dict]) -> list[str]:
        return [self.prompt.format(input=r["question"]) for r in rows]

    def run(self, backend, rows: list[dict], max_new_tokens: int | None = None, **_) -> Scored:
        sampling = Sampling(max_new_tokens=max_new_tokens or MAX_NEW_TOKENS, temperature=0.0, stop=self.stop,
                            loop_span=self.loop_span)  # fmt: skip
        outputs = backend.generate(self.prompts(rows), sampling)
        scored = score_outputs(outputs, [r["answer_number"] for r in rows])
        for s, r in zip(scored.samples, rows, strict=True):
            s["question"] = r["question"]
        return scored

    def score(self, backend, rows: list[dict], max_new_tokens: int | None = None, **kw) -> dict[str, float]:
        return self.run(backend, rows, max_new_tokens=max_new_tokens, **kw).metrics
