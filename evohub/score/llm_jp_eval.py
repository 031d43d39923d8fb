"""JMMLU as the Swallow LLM Leaderboard reports it: llm-jp-eval 1.3.0's JMMLU, 5-shot, as an
lm-eval 0.4 task (docs/design.md#jmmlu).

The leaderboard's "JMMLU" column (pre-trained models, Japanese) comes from swallow-evaluation
(Ver. 202411), whose ``scripts/evaluate_ja_llmjp.sh`` runs llm-jp-eval 1.3.0 on ``jmmlu`` with
``num_few_shots=5``, every test case and greedy decoding (``configs/config_no-sample.yaml``), then
``jmmlu_statistics.py``: accuracy over all test questions (a micro average). What is reproduced,
each read from llm-jp-eval's code:

- **The split** (``datasets/jmmlu.py``): 53 subjects (JMMLU without its three CC BY-NC-ND
  Japanese subjects) in llm-jp-eval's order; ``random.seed(42)``; each subject's rows, in file
  order, are shuffled and halved (the first ``n // 2`` to dev, the rest to test); dev and test
  are shuffled; train = dev[:16] + test[:16], the evaluated set = test[16:] (3,541 questions).
- **The prompt** (``utils.get_evaluation_prompt``): the Japanese Alpaca header, the task's
  instruction, the first five train examples, then the question, as ``質問：…\\n選択肢：A.…,B.…,C.…,D.…``;
  the same five shots for every question.
- **The answer**: greedy generation of at most one new token (``output_length`` 1), the text
  before the first blank line, stripped and NFKC-normalised, equal to the gold letter
  (``exact_match``); the score is the mean over the evaluated questions.

The rows are read as llm-jp-eval reads its CSVs (``csv.reader``, BOM stripped, newlines in
quoted fields as Python's text mode gives them); a header row, which the Hub's copies of the
files may have and GitHub's do not, is dropped.
"""

from __future__ import annotations

import random
import unicodedata
from collections.abc import Iterable
from typing import Any

import datasets
from lm_eval.api.task import ConfigurableTask

from evohub.errors import ScoreError

#: llm-jp-eval 1.3.0's JMMLU subjects, in the order it reads (and so shuffles) them
SUBJECTS = (
    "econometrics", "human_aging", "high_school_psychology", "professional_medicine", "electrical_engineering",
    "college_mathematics", "medical_genetics", "formal_logic", "nutrition", "prehistory", "world_religions",
    "japanese_history", "high_school_geography", "international_law", "logical_fallacies", "human_sexuality",
    "philosophy", "college_medicine", "professional_accounting", "high_school_mathematics", "global_facts",
    "business_ethics", "high_school_chemistry", "college_physics", "high_school_statistics", "moral_disputes",
    "high_school_biology", "miscellaneous", "high_school_macroeconomics", "high_school_computer_science",
    "abstract_algebra", "elementary_mathematics", "jurisprudence", "security_studies", "high_school_physics",
    "college_computer_science", "public_relations", "management", "computer_security", "college_chemistry",
    "anatomy", "high_school_european_history", "machine_learning", "virology", "high_school_microeconomics",
    "astronomy", "world_history", "college_biology", "clinical_knowledge", "conceptual_physics",
    "professional_psychology", "sociology", "marketing",
)  # fmt: skip
COLUMNS = ("question", "A", "B", "C", "D", "answer")
#: the CSV files' columns, every one a string as written (no number or NA inference)
CSV_FEATURES = datasets.Features({c: datasets.Value("string") for c in COLUMNS})
SEED = 42
TRAIN = 32  # llm-jp-eval's NUM_TRAIN_EXAMPLES: half from dev, half from test
SHOTS = 5  # swallow-evaluation's JMMLU_NUM_FEWSHOT
ANSWER_TOKENS = 1  # the task's output_length: max_new_tokens of the generation
HEADER = "以下は、タスクを説明する指示と、文脈のある入力の組み合わせです。要求を適切に満たす応答を書きなさい。"
INSTRUCTION = (
    "与えられた質問と選択肢から、最も適切な回答を選択してください。"
    "なお、回答には選択肢のアルファベット（例：A）のみを含め、他には何も含めないことを厳守してください。"
)


def sample_input(row: dict) -> str:
    """A question as llm-jp-eval writes it (choices as they are in the file, spaces kept)."""
    return f"質問：{row['question']}\n選択肢：A.{row['A']},B.{row['B']},C.{row['C']},D.{row['D']}"


def prompt(shots: Iterable[dict], given: str) -> str:
    """llm-jp-eval's evaluation prompt (no custom template): header, instruction, shots, input."""
    text = f"{HEADER}\n\n### 指示:\n{INSTRUCTION}"
    for s in shots:
        text += f"\n\n### 入力:\n{s['input']}\n\n### 応答:\n{s['output']}"
    return text + f"\n\n### 入力:\n{given}\n\n### 応答:\n"


def _text(value: Any) -> str:
    """A cell as Python's text mode reads it: universal newlines."""
    return "" if value is None else str(value).replace("\r\n", "\n").replace("\r", "\n")


def split(rows: Iterable[dict]) -> tuple[list[dict], list[dict]]:
    """(the five shots, the evaluated samples) of llm-jp-eval's JMMLU from ``rows`` (each with a
    ``subject``, in file order within a subject); samples are ``{input, output, subject}``."""
    by_subject: dict[str, list[dict]] = {}
    for row in rows:
        subject = row.get("subject")
        if subject not in SUBJECTS:
            raise ScoreError(f"JMMLU row with subject {subject!r}: llm-jp-eval's JMMLU has these 53: "
                             f"{', '.join(sorted(SUBJECTS))}")  # fmt: skip
        cells = {c: _text(row.get(c)) for c in COLUMNS}
        if tuple(cells.values()) == COLUMNS:
            continue  # a header row
        by_subject.setdefault(subject, []).append(
            {"input": sample_input(cells), "output": cells["answer"], "subject": subject}
        )
    rng = random.Random(SEED)  # random.seed(42) then the module's functions: the same stream
    dev: list[dict] = []
    test: list[dict] = []
    for subject in SUBJECTS:
        samples = by_subject.get(subject)
        if not samples:
            continue
        rng.shuffle(samples)
        dev += samples[: len(samples) // 2]
        test += samples[len(samples) // 2 :]
    rng.shuffle(dev)
    rng.shuffle(test)
    train = dev[: TRAIN // 2] + test[: TRAIN // 2]
    if len(train) < SHOTS:
        raise ScoreError(f"JMMLU needs {SHOTS} few-shot examples; these rows give {len(train)}")
    return train[:SHOTS], test[TRAIN // 2 :]


def process_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """The evaluated documents, in llm-jp-eval's order, each with its whole prompt."""
    if "subject" not in dataset.column_names:
        raise ScoreError("JMMLU rows need a 'subject' column (one of llm-jp-eval's 53 subjects)")
    shots, test = split(dataset.to_list())
    docs = [{"subject": s["subject"], "prompt": prompt(shots, s["input"]), "answer": s["output"]} for s in test]
    features = datasets.Features({k: datasets.Value("string") for k in ("subject", "prompt", "answer")})
    return datasets.Dataset.from_list(docs, features=features)


def doc_to_text(doc: dict) -> str:
    return doc["prompt"]


def doc_to_target(doc: dict) -> str:
    return doc["answer"]


def normalize(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


def answer(generated: str) -> str:
    """llm-jp-eval's prediction from a generation: before the first blank line, stripped, NFKC."""
    return normalize(generated.split("\n\n")[0].strip())


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    return {"exact_match": float(answer(results[0]) == normalize(doc["answer"]))}


class JMMLU(ConfigurableTask):
    """The task: YAML-configured, reading one data file per subject (a split each, from the Hub)
    or one local file whose rows name their subject, and never generating more than the one
    token llm-jp-eval allows, whatever cap a run sets."""

    def __init__(self, config: dict | None = None, **kwargs) -> None:
        super().__init__(config={k: v for k, v in (config or {}).items() if k != "class"}, **kwargs)

    def download(self, dataset_kwargs: dict[str, Any] | None = None, **kwargs) -> None:
        super().download(dataset_kwargs, **kwargs)
        split_name = self.config.test_split
        if split_name in self.dataset:
            return
        subjects = [s for s in SUBJECTS if s in self.dataset]
        if not subjects:
            raise ScoreError(f"JMMLU data has neither a {split_name!r} split nor one per subject "
                             f"(it has {', '.join(self.dataset)})")  # fmt: skip
        columns: dict[str, list] = {"subject": []}
        for s in subjects:
            part = self.dataset[s].to_dict()
            for name, values in part.items():
                columns.setdefault(name, []).extend(values)
            columns["subject"] += [s] * self.dataset[s].num_rows
        self.dataset = datasets.DatasetDict({split_name: datasets.Dataset.from_dict(columns)})

    def test_docs(self) -> datasets.Dataset:
        """The evaluated documents, split once (lm-eval asks for them several times)."""
        if getattr(self, "_docs", None) is None:
            self._docs = super().test_docs()
        return self._docs

    def construct_requests(self, doc: dict, ctx: Any, **kwargs):
        out = super().construct_requests(doc, ctx, **kwargs)
        for inst in out if isinstance(out, list) else [out]:
            context, gen = inst.arguments
            gen = dict(gen or {})
            gen["max_gen_toks"] = min(int(gen.get("max_gen_toks") or ANSWER_TOKENS), ANSWER_TOKENS)
            inst.arguments = (context, gen)
        return out
