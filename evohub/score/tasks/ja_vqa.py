"""``ja-vqa``: Japanese visual question answering, the paper's EvoVLM-JP protocol (docs/design.md#vqa-scoring).

Each example is an image and a Japanese question; the model answers with the paper's
Llama-2-chat-style prompt (below; the image placeholder precedes the question), beam search
with 5 beams, repetition penalty 1.5, at most 512 new tokens; the answer is stripped. Scores are
ROUGE-1/2/L (bootstrap mid F-measure × 100, seeded) over MeCab tokens after neologdn
normalisation and emoji removal, with the strict-Japanese rule: a prediction that fastText does
not read as Japanese scores as empty against a Japanese reference. ``rougeL`` is the fitness.

Rows, in either layout:

- ``SakanaAI/JA-VG-VQA-500``: ``image`` and ``qas`` (a list of ``{question, answer}``; the
  first is used, as in the paper);
- ``SakanaAI/JA-VLM-Bench-In-the-Wild`` and local files: ``image``, ``question``, ``answer``.

``image`` is a PIL image (Hub datasets decode their Image feature), ``{"bytes": ...}`` or
``{"path": ...}``, or a file path (relative paths in a local data file are resolved against the
file's directory by :func:`evohub.score.data.load_rows`).

``ja-vqa-paper`` is the same prompt and decoding as Sakana AI's released evaluation code ran it
for EvoVLM-JP (docs/design.md#the-paper-vqa-suite): the model loaded as
``LlavaForConditionalGeneration`` in float16 with a CLIP image processor (the ``hf`` backend's
``llava`` loading), answers decoded from their new tokens alone, and ROUGE as that code reports
it: ``rougeL`` over every answer, ``rougeL_ja`` with the Japanese rule (the paper's figure).
"""

from __future__ import annotations

import io
from dataclasses import replace

from evohub.errors import ScoreError
from evohub.score.backends import Sampling, VisionPrompt
from evohub.score.metrics import ROUGE_TYPES, is_japanese, japanese_only, japanese_probability, rouge_ja, rouge_ja_each
from evohub.score.tasks.base import TASKS, Published, Scored

#: The prompt of the paper's released evaluation code (evomerge, "ja-shisa-vqa").
PROMPT = (
    "[INST] <<SYS>>\nあなたは役立つ、偏見がなく、検閲されていないアシスタントです。"
    "与えられた画像を下に、質問に答えてください。\n<</SYS>>\n\n{input} [/INST]"
)
#: The paper's generation settings.
SAMPLING = Sampling(max_new_tokens=512, temperature=0.0, num_beams=5, repetition_penalty=1.5)


def question_answer(row: dict) -> tuple[str, str]:
    """The (question, answer) of a row in either layout (JA-VG-VQA-500: the first of ``qas``)."""
    if isinstance(row.get("qas"), list) and row["qas"]:
        qa = row["qas"][0]
        return qa.get("question"), qa.get("answer")
    return row.get("question"), row.get("answer")


def open_image(value):
    """A PIL RGB image from a row's ``image`` field."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, dict):
        if value.get("bytes"):
            return Image.open(io.BytesIO(value["bytes"])).convert("RGB")
        value = value.get("path")
    if isinstance(value, str):
        with Image.open(value) as im:
            return im.convert("RGB")
    raise ScoreError(f"ja-vqa: cannot read an image from {type(value).__name__}")


def score_outputs(outputs: list[str], answers: list[str]) -> Scored:
    """Metrics and per-sample records for model outputs (fitness, evaluation and re-scoring)."""
    if not outputs:
        raise ScoreError("ja-vqa: no examples to score")
    strict = rouge_ja(answers, outputs, strict_japanese=True)
    raw = rouge_ja(answers, outputs, strict_japanese=False)
    samples = [
        {"output": o, "answer": a, "p_ja": japanese_probability(o)} for o, a in zip(outputs, answers, strict=True)
    ]
    metrics = dict(strict) | {f"{k}_any_language": v for k, v in raw.items()}
    metrics["ja_rate"] = sum(1 for s in samples if s["p_ja"] > 0.5) / len(samples)
    metrics["n"] = float(len(samples))
    # each example's ROUGE-L under the same rule: rougeL (a bootstrap "mid") estimates their mean
    ruled = ["" if is_japanese(a) and not is_japanese(o) else o for o, a in zip(outputs, answers, strict=True)]
    items = [r["rougeL"] for r in rouge_ja_each(answers, ruled)]
    return Scored(metrics, samples, items)


def paper_score_outputs(outputs: list[str], answers: list[str]) -> Scored:
    """Metrics as Sakana AI's released code computes them: ROUGE-1/2/L over every answer, and
    ``*_ja`` with :func:`~evohub.score.metrics.japanese_only` (P(ja) >= 0.5 / < 0.5). Each is the
    plain mean of the per-example F-measures × 100: that code reports rouge_score's
    BootstrapAggregator "mid", the median of 1000 resampled means: an estimate of this mean (within
    about 0.1 point on 500 examples) that depends on numpy's global random state."""
    if not outputs:
        raise ScoreError("ja-vqa-paper: no examples to score")
    p_ja = [japanese_probability(o) for o in outputs]
    raw = rouge_ja_each(answers, outputs)
    ja = rouge_ja_each(answers, japanese_only(answers, outputs))
    metrics = {t: sum(r[t] for r in raw) / len(raw) for t in ROUGE_TYPES}
    metrics |= {f"{t}_ja": sum(r[t] for r in ja) / len(ja) for t in ROUGE_TYPES}
    metrics["ja_rate"] = sum(1 for p in p_ja if p >= 0.5) / len(outputs)
    metrics["n"] = float(len(outputs))
    samples = [{"output": o, "answer": a, "p_ja": p, "rougeL": r["rougeL"], "rougeL_ja": j["rougeL"]}
               for o, a, p, r, j in zip(outputs, answers, p_ja, raw, ja, strict=True)]  # fmt: skip
    return Scored(metrics, samples, [j["rougeL"] for j in ja])


@TASKS.register
class JaVQA:
    """The task; ``prompt`` (with ``{input}``) defaults to the paper's, ``image_token`` to LLaVA's."""

    name = "ja-vqa"
    doc = "Japanese VQA: 5 beams, repetition penalty 1.5, ROUGE-L over MeCab tokens, Japanese answers only (rougeL)"
    fitness_metric = "rougeL"
    options = ("prompt",)
    backends = ("vllm", "hf")
    max_new_tokens = SAMPLING.max_new_tokens
    beams = SAMPLING.num_beams  # vLLM's beam search decodes without n-gram drafts (the spec says so)
    shown = ("rougeL", "rouge1", "rouge2")
    item_range, item_binary = (0.0, 100.0), False
    #: how the fitness metric is published (.eval_results, model-index): its scale and description
    result = Published("rouge", "image-text-to-text", 1.0,
                       "ROUGE-L F x 100 over MeCab tokens; a non-Japanese answer scores as empty; "
                       "5 beams, repetition penalty 1.5 (Akiba et al., 2024)")  # fmt: skip
    #: saved outputs can be re-scored from rows with this answer field
    answer_field, answer_kind = "answer", "string"
    score_outputs = staticmethod(score_outputs)

    @staticmethod
    def valid_answer(v) -> bool:
        return isinstance(v, str)

    def __init__(self, prompt: str | None = None, image_token: str = "<image>", sampling: Sampling = SAMPLING):
        self.prompt = prompt or PROMPT
        self.image_token = image_token
        self.sampling = sampling

    def check(self, rows: list[dict]) -> None:
        for i, r in enumerate(rows):
            q, a = question_answer(r)
            if not isinstance(q, str) or not isinstance(a, str):
                raise ScoreError(f"ja-vqa: row {i} has no 'question'/'answer' strings (or 'qas' list of them)")
            if r.get("image") is None:
                raise ScoreError(f"ja-vqa: row {i} has no 'image'")

    def prompts(self, rows: list[dict]) -> list[VisionPrompt]:
        return [
            VisionPrompt(
                self.prompt.format(input=f"{self.image_token}\n{question_answer(r)[0]}"),
                (open_image(r["image"]),),
            )
            for r in rows
        ]

    def answers(self, backend, rows: list[dict], max_new_tokens: int | None = None) -> list[str]:
        """The model's answers to ``rows``, stripped (the protocol's budget unless ``max_new_tokens``)."""
        sampling = self.sampling
        if max_new_tokens is not None:
            sampling = replace(sampling, max_new_tokens=max_new_tokens)
        return [o.strip() for o in backend.generate(self.prompts(rows), sampling)]

    def run(self, backend, rows: list[dict], max_new_tokens: int | None = None, **_) -> Scored:
        outputs = self.answers(backend, rows, max_new_tokens)
        scored = self.score_outputs(outputs, [question_answer(r)[1] for r in rows])
        for s, r in zip(scored.samples, rows, strict=True):
            s["question"] = question_answer(r)[0]
        return scored

    def score(self, backend, rows: list[dict], max_new_tokens: int | None = None, **kw) -> dict[str, float]:
        return self.run(backend, rows, max_new_tokens=max_new_tokens, **kw).metrics


@TASKS.register
class JaVQAPaper(JaVQA):
    """``ja-vqa`` as Sakana AI's released code ran it for EvoVLM-JP; the prompt is the paper's."""

    name = "ja-vqa-paper"
    doc = ("Japanese VQA as Sakana AI's released code scored EvoVLM-JP: LLaVA loading in float16, 5 beams, "
           "repetition penalty 1.5, mean ROUGE-L over MeCab tokens, Japanese answers only (rougeL_ja)")  # fmt: skip
    fitness_metric = "rougeL_ja"
    options = ()
    backends = ("hf",)
    shown = ("rougeL_ja", "rougeL", "rouge1_ja", "rouge2_ja")
    result = Published("rouge", "image-text-to-text", 1.0,
                       "ROUGE-L F x 100 over MeCab tokens (mean), a non-Japanese answer to a Japanese question "
                       "scored as empty; LlavaForConditionalGeneration in float16, 5 beams, repetition penalty 1.5 "
                       "(Sakana AI's released evaluation, Akiba et al., 2024)")  # fmt: skip
    score_outputs = staticmethod(paper_score_outputs)

    def __init__(self, sampling: Sampling = SAMPLING):
        super().__init__(sampling=sampling)

    def answers(self, backend, rows: list[dict], max_new_tokens: int | None = None) -> list[str]:
        """Generated on ``backend``'s model loaded as ``llava`` (the ``hf`` backend's loading)."""
        loaded_as = getattr(backend, "loaded_as", None)
        if loaded_as is None:
            raise ScoreError(f"ja-vqa-paper runs on the hf backend (its llava loading), not {type(backend).__name__}")
        with loaded_as("llava") as paper:
            return super().answers(paper, rows, max_new_tokens)
