"""``ja-math``: the paper's MGSM-JA protocol (Akiba et al., 2024; DESIGN.md).

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

from dataclasses import dataclass, field

from evohub.errors import EvohubError
from evohub.score.backends import Sampling
from evohub.score.metrics import extract_number, japanese_probability

#: The prompt of the paper's released evaluation code (evomerge, "ja-alpaca-cot").
PROMPT = (
    "以下に、あるタスクを説明する指示があります。リクエストを適切に完了するための回答を日本語で記述してください。"
    "一歩一歩考えましょう。\n\n### 指示:\n{input}\n\n### 応答:"
)
STOP = ("Instruction:", "Instruction", "Response:", "Response")
MAX_NEW_TOKENS = 1024


@dataclass
class Scored:
    metrics: dict[str, float]
    samples: list[dict] = field(default_factory=list)


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
        raise EvohubError("ja-math: no examples to score")

    def rate(key: str, ja: bool) -> float:
        return sum(1 for s in samples if s[key] and (not ja or s["p_ja"] > 0.5)) / n

    metrics = {
        "acc": rate("correct", False),
        "acc_ja": rate("correct", True),
        "acc_strict": rate("correct_strict", False),
        "acc_ja_strict": rate("correct_strict", True),
        "ja_rate": sum(1 for s in samples if s["p_ja"] > 0.5) / n,
        "n": float(n),
    }
    return Scored(metrics, samples)


class JaMath:
    """The task; ``prompt`` (with ``{input}``) and ``stop`` default to the paper's."""

    name = "ja-math"
    fitness_metric = "acc_ja"

    def __init__(self, prompt: str | None = None, stop: tuple[str, ...] | None = None):
        self.prompt = prompt or PROMPT
        self.stop = STOP if stop is None else tuple(stop)

    def check(self, rows: list[dict]) -> None:
        for i, r in enumerate(rows):
            if not isinstance(r.get("question"), str):
                raise EvohubError(f"ja-math: row {i} has no 'question' string")
            a = r.get("answer_number")
            if isinstance(a, bool) or not isinstance(a, int | float):
                raise EvohubError(f"ja-math: row {i} has no numeric 'answer_number' (got {a!r})")

    def prompts(self, rows: list[dict]) -> list[str]:
        return [self.prompt.format(input=r["question"]) for r in rows]

    def run(self, backend, rows: list[dict], max_new_tokens: int | None = None, **_) -> Scored:
        sampling = Sampling(max_new_tokens=max_new_tokens or MAX_NEW_TOKENS, temperature=0.0, stop=self.stop)
        outputs = backend.generate(self.prompts(rows), sampling)
        scored = score_outputs(outputs, [r["answer_number"] for r in rows])
        for s, r in zip(scored.samples, rows, strict=True):
            s["question"] = r["question"]
        return scored

    def score(self, backend, rows: list[dict], max_new_tokens: int | None = None, **kw) -> dict[str, float]:
        return self.run(backend, rows, max_new_tokens=max_new_tokens, **kw).metrics
