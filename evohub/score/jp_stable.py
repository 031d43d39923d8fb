"""JP-LMEH as Stability AI's ``lm-evaluation-harness`` (branch ``jp-stable``) ran it — the harness
behind the paper's averages — as lm-eval 0.4 Python tasks (docs/design.md#jp-lmeh).

lm-eval 0.4's ``japanese_leaderboard`` is a port with different prompts, few-shot sampling, data
and scales; these tasks reproduce jp-stable's instead, for the nine tasks of the paper's table:

    ====================  ======  =====  ==============================  ===================
    task                  version shots  metric (average uses)           prompt versions
    ====================  ======  =====  ==============================  ===================
    jcommonsenseqa        1.1     3      acc                             0.1 0.2 0.3
    jnli                  1.3     3      acc (stratified shots)          0.2 0.3
    marc_ja               1.1     3      acc                             0.2 0.3
    jsquad                1.1     2      exact_match (0-100)             0.1 0.2 0.3
    jaqket_v2             0.2     1      exact_match (0-100)             0.1 0.2 0.3
    xlsum_ja              1.0     1      rouge2 (0-100)                  0.0 0.3
    xwinograd_ja          1.0     0      acc                             (none)
    mgsm                  1.0     5      acc                             0.0 0.3
    jcola                 0.2     3      balanced_acc (stratified)       0.0 0.3
    ====================  ======  =====  ==============================  ===================

What "as jp-stable ran it" means here, each read from its code:

- **Few-shot sampling.** One ``random.Random(42)`` first shuffles the evaluated documents, then —
  the same generator, in that shuffled order — draws every document's shots (``sample`` from the
  training split; for JNLI and JCoLA *stratified* by target: ``int(ratio * k)`` per label, the
  remainder to the smallest counts, then shuffled). Tasks that shrink the shot count until the
  prompt fits (MGSM, JAQKET) draw again on every try. The documents are evaluated in that
  shuffled order, so ``--limit n`` takes the same ``n`` documents jp-stable's did.
- **Prompt versions**: one per job (default 0.3); a task without the asked version uses its
  highest version below it (JCoLA, XLSum and MGSM have no 0.2: they use 0.0).
- **Truncation** with the model's own tokenizer and maximum length: JAQKET and MGSM drop shots,
  XLSum cuts each article sentence by sentence to an equal share of the length.
- **Metrics**: squad exact match / F1 after emoji removal, ``neologdn`` and MeCab tokens without
  punctuation, on 0-100; MGSM's last number in the output; XLSum's ROUGE-2 tokenised by the
  *model's* tokenizer (jp-stable builds a MeCab tokenizer, then the evaluator's ``set_tokenizer``
  replaces it with the LM's — so its published figures are subword ROUGE-2); ROUGE and the squad
  metrics are means over documents (jp-stable's ROUGE is rouge-score's bootstrap median of the
  mean, which estimates the same figure).

The prompts and few-shot draws are checked against requests rendered by jp-stable's own code for
fixture documents (``tests/data/jp_stable/``).
"""

from __future__ import annotations

import contextlib
import inspect
import random
import re
import string
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import datasets
import numpy as np
from lm_eval.api.instance import Instance
from lm_eval.api.metrics import mean
from lm_eval.api.task import Task

from evohub.errors import ScoreError
from evohub.score.metrics import MecabTokenizer, mecab

#: the prompt version a job gets unless it names one (docs/design.md#jp-lmeh)
DEFAULT_PROMPT = "0.3"
ALPACA = "以下は、タスクを説明する指示と、文脈のある入力の組み合わせです。要求を適切に満たす応答を書きなさい。\n\n"
SEED = 42


def alpaca(instruction: str, given: str) -> str:
    """The Japanese Alpaca layout of prompt version 0.3 (half-width colons, as jp-stable)."""
    return f"### 指示:\n{instruction}\n\n### 入力:\n{given}\n\n### 応答:\n"


@dataclass(frozen=True)
class Prompt:
    """One prompt version of a task: the description before the shots, the separator between
    shots, and how a document becomes text and target."""

    text: Callable[[dict], str]
    target: Callable[[dict], str]
    description: str = ""
    sep: str = "\n\n"
    #: multiple choice: the choice strings scored (None: the task's own requests)
    choices: tuple[str, ...] | None = None


# -- the model the tasks are run on ---------------------------------------------------------


@dataclass
class _Model:
    tokenizer: Any
    max_length: int
    max_gen_toks: int
    cap: int | None = None  # a run's cap on generated tokens (``--max-new-tokens``)


_MODEL: list[_Model] = []


@contextlib.contextmanager
def bound_to(tokenizer, max_length: int, max_gen_toks: int, cap: int | None = None) -> Iterator[None]:
    """Run the tasks for this model: jp-stable truncates prompts with the model's tokenizer and
    length, and XLSum scores with its tokenizer (``run_lmeval`` binds its HFLM). ``cap`` limits
    every generation without changing the prompts."""
    _MODEL.append(_Model(tokenizer, int(max_length), int(max_gen_toks), cap))
    try:
        yield
    finally:
        _MODEL.pop()


def _model(meta: dict) -> _Model:
    if _MODEL:
        return _MODEL[-1]
    name = meta.get("tokenizer") or meta.get("pretrained")
    if not name:
        raise ScoreError("jp-stable tasks need the model's tokenizer: run them through evohub, or pass "
                         "--metadata '{\"tokenizer\": \"<repo or dir>\"}' to lm_eval")  # fmt: skip
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name)
    return _Model(tok, int(meta.get("max_length", 2048)), int(meta.get("max_gen_toks", 256)))


def encode(tokenizer, text: str) -> list[int]:
    """Token ids without special tokens, as jp-stable's ``_tokenize``."""
    fn = tokenizer.encode
    try:
        takes = "add_special_tokens" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        takes = False
    return fn(text, add_special_tokens=False) if takes else fn(text)


# -- metrics ---------------------------------------------------------------------------------

_PUNCT = set("！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏.") | set(string.punctuation)  # fmt: skip

#: jp-stable's squad normalisation (emoji removed, ``neologdn``, white space collapsed) is the one
#: Sakana's VQA ROUGE uses too
normalize_answer = MecabTokenizer.normalize


def mecab_words(text: str) -> list[str]:
    """MeCab (``-Owakati``) words of the normalised text, punctuation dropped."""
    return [t for t in mecab().tokenize(text) if t not in _PUNCT]


def _f1(pred: str, gold: str) -> float:
    p, g = mecab_words(pred), mecab_words(gold)
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def squad(key: str, items: list[tuple[str, list[str]]]) -> float:
    """Exact match or F1 (best over the gold answers), 0-100, over (prediction, answers) pairs."""
    if key == "exact_match":
        scores = [max(float(normalize_answer(p) == normalize_answer(g)) for g in golds) for p, golds in items]
    else:
        scores = [max(_f1(p, g) for g in golds) for p, golds in items]
    return 100.0 * sum(scores) / len(scores)


def balanced_mean(items: list[tuple[float, Any]]) -> float:
    by_class: dict[Any, list[float]] = defaultdict(list)
    for acc, label in items:
        by_class[label].append(acc)
    return sum(sum(v) / len(v) for v in by_class.values()) / len(by_class)


def mcc(items: list[tuple[int, int]]) -> float:
    from sklearn.metrics import matthews_corrcoef

    golds, preds = zip(*items, strict=True)
    return float(matthews_corrcoef(golds, preds))


def macro_f1(items: list[tuple[int, int]]) -> float:
    from sklearn.metrics import f1_score

    golds, preds = zip(*items, strict=True)
    return float(f1_score(golds, preds, average="macro"))


class _Tokenize:
    """rouge-score calls ``tokenizer.tokenize(text)``: the model tokenizer's pieces."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def tokenize(self, text: str) -> list[str]:
        return self.tokenizer.tokenize(text)


def rouge2(tokenizer, items: list[tuple[str, str]]) -> float:
    """Mean ROUGE-2 F-measure (0-100) of (prediction, reference) pairs, tokenised by ``tokenizer``."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge2"], tokenizer=_Tokenize(tokenizer))
    return 100.0 * float(np.mean([scorer.score(ref, pred)["rouge2"].fmeasure for pred, ref in items]))


# -- the protocol ---------------------------------------------------------------------------


def _request_kwargs(kwargs: dict) -> dict:
    """What lm-eval passes ``construct_requests`` that an ``Instance`` takes (not the chat options:
    jp-stable's prompts are plain text)."""
    return {k: v for k, v in kwargs.items() if k not in ("apply_chat_template", "chat_template")}


class JpStableTask(Task):
    """jp-stable's task protocol on lm-eval 0.4 (see the module docstring).

    Subclasses give the splits, ``PROMPTS`` by version, how a raw row becomes a document
    (``process``), the requests and the metrics. The YAML that registers a task names its data
    (``dataset_path`` / ``dataset_name`` / ``dataset_kwargs``), its splits (``training_split``, and
    ``test_split`` or ``validation_split``: the one evaluated) and ``num_fewshot``; the prompt
    version comes from ``metadata.prompt_version`` (evohub passes the job's).
    """

    VERSION: str = "1.0"
    STRATIFIED = False
    PROMPTS: ClassVar[dict[str, Prompt]] = {}

    def __init__(self, config: dict | None = None):
        self._cfg = dict(config or {})
        super().__init__(config=self._cfg)
        for key in ("task", "num_fewshot", "metadata", "dataset_path", "dataset_name"):
            setattr(self._config, key, self._cfg.get(key))  # a dict: lm-eval reads these as attributes
        meta = self._cfg.get("metadata") or {}
        asked = str(meta.get("prompt_version") or DEFAULT_PROMPT)
        self.prompt_version = self.version_for(asked)
        self.prompt = self.PROMPTS.get(self.prompt_version) if self.PROMPTS else None
        self._meta = meta
        self._model: _Model | None = None
        self._shuffled: list[dict] | None = None
        self._contexts: list[str] = []
        self._rnd: random.Random | None = None
        self._by_target: dict[str, list[dict]] | None = None
        self._ranks: dict[int, int] | None = None

    @classmethod
    def version_for(cls, asked: str) -> str:
        """The highest prompt version the task has that is not above ``asked``."""

        def key(v: str) -> tuple[int, ...]:
            return tuple(int(p) for p in v.split("."))

        have = sorted((v for v in cls.PROMPTS if key(v) <= key(asked)), key=key)
        return have[-1] if have else (min(cls.PROMPTS, key=key) if cls.PROMPTS else "")

    # data
    def download(self, data_dir=None, cache_dir=None, download_mode=None) -> None:
        c = self._cfg
        self.dataset = datasets.load_dataset(
            c["dataset_path"], c.get("dataset_name"), **(c.get("dataset_kwargs") or {})
        )

    def process(self, row: dict) -> dict:
        return dict(row)

    def has_training_docs(self) -> bool:
        return bool(self._cfg.get("training_split"))

    def has_validation_docs(self) -> bool:
        return not self.has_test_docs() and bool(self._cfg.get("validation_split"))

    def has_test_docs(self) -> bool:
        return bool(self._cfg.get("test_split"))

    def training_docs(self):
        if self._training_docs is None:
            self._training_docs = [self.process(r) for r in self.dataset[self._cfg["training_split"]]]
        return self._training_docs

    def _ordered(self) -> list[dict]:
        """The evaluated documents in jp-stable's order: shuffled by ``Random(42)``, which then
        draws the shots."""
        if self._shuffled is None:
            split = self._cfg.get("test_split") or self._cfg["validation_split"]
            docs = [self.process(r) | {"_position": i} for i, r in enumerate(self.dataset[split])]
            self._rnd = random.Random(SEED)
            self._rnd.shuffle(docs)
            self._shuffled = docs
        return self._shuffled

    def validation_docs(self):
        return self._ordered()

    def test_docs(self):
        return self._ordered()

    # prompts
    def doc_to_text(self, doc: dict) -> str:
        return self.prompt.text(doc)

    def doc_to_target(self, doc: dict) -> str:
        return self.prompt.target(doc)

    def model(self) -> _Model:
        if self._model is None:
            self._model = _model(self._meta)
        return self._model

    def tokens(self, text: str) -> list[int]:
        return encode(self.model().tokenizer, text)

    def _stratified(self, docs: list[dict], k: int, rnd: random.Random) -> list[dict]:
        if self._by_target is None:
            self._by_target = defaultdict(list)
            for d in docs:
                self._by_target[self.doc_to_target(d)].append(d)
        counts = {t: int(len(ds) / len(docs) * k) for t, ds in self._by_target.items()}
        for _ in range(k - sum(counts.values())):
            counts[min(counts, key=counts.get)] += 1  # type: ignore[arg-type]
        out = [d for t, n in counts.items() for d in rnd.sample(self._by_target[t], n)]
        rnd.shuffle(out)
        return out

    def render(self, doc: dict, k: int, rnd: random.Random) -> str:
        """jp-stable's ``fewshot_context``: description, ``k`` shots, the document."""
        p = self.prompt
        shots = ""
        if k:
            if self.has_training_docs():
                pool = self.training_docs()
                chosen = self._stratified(pool, k, rnd) if self.STRATIFIED else rnd.sample(pool, k)
            else:  # shots from the evaluated split itself, in its own order, never the document
                pool = sorted(self._ordered(), key=lambda d: d["_position"])
                chosen = self._stratified(pool, k + 1, rnd) if self.STRATIFIED else rnd.sample(pool, k + 1)
                chosen = [d for d in chosen if d["_position"] != doc["_position"]][:k]
            shots = p.sep.join(self.doc_to_text(d) + self.doc_to_target(d) for d in chosen) + p.sep
        return p.description + shots + self.doc_to_text(doc)

    def fits(self, doc: dict, ctx: str) -> bool:
        """Tasks that shrink the shot count until the prompt fits override this."""
        return True

    def _context_of(self, doc: dict, k: int) -> str:
        ordered, rank = self._ordered(), self._rank(doc)
        while len(self._contexts) <= rank:  # in order: each document's draws follow the last's
            nxt = ordered[len(self._contexts)]
            n = k
            while True:
                ctx = self.render(nxt, n, self._rnd)  # type: ignore[arg-type]
                if n == 0 or self.fits(nxt, ctx):
                    break
                n -= 1
            self._contexts.append(ctx)
        return self._contexts[rank]

    def _rank(self, doc: dict) -> int:
        if self._ranks is None:
            self._ranks = {d["_position"]: i for i, d in enumerate(self._ordered())}
        return self._ranks[doc["_position"]]

    def fewshot_context(self, doc, num_fewshot, rnd=None, description=None, **kwargs) -> str:
        return self._context_of(doc, int(num_fewshot or 0))

    # requests and metrics
    def construct_requests(self, doc, ctx, **kwargs):
        kwargs = _request_kwargs(kwargs)
        return [
            Instance(request_type="loglikelihood", doc=doc, arguments=(ctx, c), idx=i, **kwargs)
            for i, c in enumerate(self.choices(doc))
        ]

    def choices(self, doc: dict) -> list[str]:
        return list(self.prompt.choices or doc["choices"])

    def generate(self, doc: dict, ctx: str, until: list[str], max_tokens: int, **kwargs) -> Instance:
        cap = self.model().cap
        limit = min(max_tokens, cap) if cap else max_tokens
        return Instance(request_type="generate_until", doc=doc, idx=0,
                        arguments=(ctx, {"until": until, "max_gen_toks": limit, "do_sample": False}), **kwargs)  # fmt: skip

    def higher_is_better(self) -> dict:
        return dict.fromkeys(self.aggregation(), True)


class _Choice(JpStableTask):
    """Multiple choice scored by loglikelihood: acc and acc_norm (by characters)."""

    def process_results(self, doc, results):
        lls = np.array([r[0] for r in results])
        gold = doc["gold"]
        lengths = np.array([float(len(c)) for c in self.choices(doc)])
        pred = int(np.argmax(lls))
        return {"acc": float(pred == gold), "acc_norm": float(int(np.argmax(lls / lengths)) == gold)}

    def aggregation(self):
        return {"acc": mean, "acc_norm": mean}


class _Balanced(_Choice):
    """The same choices every time: per-class accuracy, MCC and macro F1 as well."""

    def process_results(self, doc, results):
        out = super().process_results(doc, results)
        pred, gold = int(np.argmax([r[0] for r in results])), doc["gold"]
        return out | {"balanced_acc": (out["acc"], gold), "mcc": (gold, pred), "macro_f1": (gold, pred)}

    def aggregation(self):
        return super().aggregation() | {"balanced_acc": balanced_mean, "mcc": mcc, "macro_f1": macro_f1}


# -- the nine tasks --------------------------------------------------------------------------


class JCommonsenseQA(_Choice):
    VERSION = "1.1"
    PROMPTS: ClassVar[dict[str, Prompt]] = {
        "0.1": Prompt(description="[問題]に対する[答え]を[選択肢]の中から選んでください。\n\n",
                      text=lambda d: f"[問題]:{d['goal']}\n[選択肢]:[{', '.join(d['choices'])}]\n[答え]:",
                      target=lambda d: d["choices"][d["gold"]]),
        "0.2": Prompt(description="質問と回答の選択肢を入力として受け取り、選択肢から回答を選択してください。なお、回答は選択肢の番号(例:0)でするものとします。 \n\n",
                      text=lambda d: "質問:{}\n選択肢:{}\n回答:".format(d["goal"], ",".join(f"{i}.{c}" for i, c in enumerate(d["choices"]))),
                      target=lambda d: f"{d['gold']}"),
        "0.3": Prompt(description=ALPACA,
                      text=lambda d: alpaca("与えられた選択肢の中から、最適な答えを選んでください。出力は以下から選択してください：\n"
                                            + "\n".join(f"- {c}" for c in d["choices"]), d["goal"]),
                      target=lambda d: d["choices"][d["gold"]]),
    }  # fmt: skip

    def process(self, row):
        return {"goal": row["question"], "choices": [row[f"choice{i}"] for i in range(5)], "gold": int(row["label"])}


_JNLI = ("含意", "矛盾", "中立")


class JNLI(_Balanced):
    VERSION = "1.3"
    STRATIFIED = True
    PROMPTS: ClassVar[dict[str, Prompt]] = {
        "0.2": Prompt(description="前提と仮説の関係を含意、矛盾、中立の中から回答してください。\n\n制約:\n"
                                  "- 前提から仮説が、論理的知識や常識的知識を用いて導出可能である場合は含意と出力\n"
                                  "- 前提と仮説が両立しえない場合は矛盾と出力\n- そのいずれでもない場合は中立と出力\n\n",
                      text=lambda d: f"前提:{d['premise']}\n仮説:{d['hypothesis']}\n関係:",
                      target=lambda d: d["choices"][d["gold"]]),
        "0.3": Prompt(description=ALPACA,
                      text=lambda d: alpaca("与えられた前提と仮説の関係を回答してください。\n\n出力は以下から選択してください：\n"
                                            + "\n".join(_JNLI), f"前提：{d['premise']}\n仮説：{d['hypothesis']}"),
                      target=lambda d: d["choices"][d["gold"]]),
    }  # fmt: skip

    def process(self, row):
        return {
            "premise": row["sentence1"],
            "hypothesis": row["sentence2"],
            "choices": list(_JNLI),
            "gold": int(row["label"]),
        }


class MARCJa(_Balanced):
    VERSION = "1.1"
    PROMPTS: ClassVar[dict[str, Prompt]] = {
        "0.2": Prompt(description="製品レビューをnegativeかpositiveのいずれかのセンチメントに分類してください。出力は小文字化してください。 \n\n",
                      text=lambda d: f"製品レビュー:{d['query']}\nセンチメント:",
                      target=lambda d: ("positive", "negative")[d["gold"]], choices=("positive", "negative")),
        "0.3": Prompt(description=ALPACA,
                      text=lambda d: alpaca("以下の製品レビューを、ポジティブまたはネガティブの感情クラスのいずれかに分類してください。", d["query"]),
                      target=lambda d: ("ポジティブ", "ネガティブ")[d["gold"]], choices=("ポジティブ", "ネガティブ")),
    }  # fmt: skip

    def process(self, row):
        return {"query": row["sentence"], "gold": int(row["label"])}


class JCoLA(_Balanced):
    """CoLA's two requests (`` はい`` / `` いいえ``, with a space) and metrics: no acc, so the
    average uses balanced_acc (docs/design.md#jp-lmeh)."""

    VERSION = "0.2"
    STRATIFIED = True
    _SAY: ClassVar[dict[int, str]] = {1: "はい", 0: "いいえ"}
    PROMPTS: ClassVar[dict[str, Prompt]] = {
        "0.0": Prompt(text=lambda d: f"{d['sentence']}\n質問: この文は文法的ですか？\n答え:",
                      target=lambda d: " " + JCoLA._SAY[d["label"]]),
        "0.3": Prompt(description=ALPACA,
                      text=lambda d: alpaca("与えられた文が文法的であるかを回答してください。\n\n出力は以下から選択してください：\nはい\nいいえ", d["sentence"]),
                      target=lambda d: " " + JCoLA._SAY[d["label"]]),
    }  # fmt: skip

    def process(self, row):
        return {"sentence": row["sentence"], "label": int(row["label"])}

    def choices(self, doc):
        return [" はい", " いいえ"]

    def process_results(self, doc, results):
        ll_true, ll_false = results[0][0], results[1][0]
        pred, gold = int(ll_true > ll_false), doc["label"]
        acc = float(pred == gold)
        return {"balanced_acc": (acc, gold), "mcc": (gold, pred), "macro_f1": (gold, pred)}

    def aggregation(self):
        return {"balanced_acc": balanced_mean, "mcc": mcc, "macro_f1": macro_f1}


class XWinogradJa(JpStableTask):
    """Two sentences, no prompt: the more likely one must be the right one."""

    VERSION = "1.0"

    def doc_to_text(self, doc):
        return ""

    def doc_to_target(self, doc):
        return doc[f"sentence{doc['answer']}"]

    def fewshot_context(self, doc, num_fewshot, rnd=None, description=None, **kwargs) -> str:
        self._ordered()
        return ""

    def construct_requests(self, doc, ctx, **kwargs):
        kwargs = _request_kwargs(kwargs)
        return [Instance(request_type="loglikelihood", doc=doc, arguments=("", doc[f"sentence{i}"]), idx=i - 1, **kwargs)
                for i in (1, 2)]  # fmt: skip

    def process_results(self, doc, results):
        l1, l2 = results[0][0], results[1][0]
        goal = int(doc["answer"])
        return {"acc": float((goal == 1 and l1 > l2) or (goal == 2 and l2 > l1))}

    def aggregation(self):
        return {"acc": mean}


class _Extractive(JpStableTask):
    """Answer extraction (JSQuAD, JAQKET): greedy to the first newline, at most as many tokens as
    the longest gold answer; squad exact match and F1 on 0-100."""

    def doc_to_target(self, doc):
        return doc["answers"]["text"][0]

    def answer_tokens(self, doc: dict) -> int:
        return max(len(self.tokens(a)) for a in doc["answers"]["text"])

    def construct_requests(self, doc, ctx, **kwargs):
        kwargs = _request_kwargs(kwargs)
        return self.generate(doc, ctx, ["\n"], self.answer_tokens(doc), **kwargs)

    def process_results(self, doc, results):
        pair = (results[0], list(doc["answers"]["text"]))
        return {"exact_match": pair, "f1": pair}

    def aggregation(self):
        return {"exact_match": partial(squad, "exact_match"), "f1": partial(squad, "f1")}


def _squad_context(d: dict) -> str:
    return d["context"].split("[SEP]")[-1].strip()


class JSQuAD(_Extractive):
    VERSION = "1.1"
    PROMPTS: ClassVar[dict[str, Prompt]] = {
        "0.1": Prompt(description="[題名]と[問題]から[質問]に対する[答え]を抜き出しなさい\n\n",
                      text=lambda d: f"[題名]:{d['title']}\n[問題]:{_squad_context(d)}\n[質問]:{d['question']}\n[答え]:",
                      target=lambda d: d["answers"]["text"][0]),
        "0.2": Prompt(description="質問に対する回答を文章から一言で抽出してください。回答は名詞で答えてください。\n\n",
                      text=lambda d: f"文章:{_squad_context(d)}\n質問:{d['question']}\n回答:",
                      target=lambda d: d["answers"]["text"][0]),
        "0.3": Prompt(description=ALPACA,
                      text=lambda d: alpaca("与えられた文脈から、質問に対する答えを抜き出してください。",
                                            f"文脈：{_squad_context(d)}\n質問：{d['question']}"),
                      target=lambda d: d["answers"]["text"][0]),
    }  # fmt: skip


#: jp-stable loads JAQKET v2 with the five top-ranked contexts of each question
JAQKET_CONTEXTS = 5


class JAQKETv2(_Extractive):
    """Reads the repository's JSON files (its loading script is not run): keeps the first five
    contexts of a question and drops questions none of whose five holds the answer, as that
    script does with ``num_contexts=5``."""

    VERSION = "0.2"
    PROMPTS: ClassVar[dict[str, Prompt]] = {
        "0.1": Prompt(description="[題名]と[問題]から[質問]に対する[答え]を抜き出しなさい\n\n",
                      text=lambda d: "\n".join(f"[題名]:{t}\n[問題]:{x}" for t, x in zip(d["ctxs"]["title"], d["ctxs"]["text"], strict=True))
                      + f"\n[質問]:{d['question']}\n[答え]:",
                      target=lambda d: d["answers"]["text"][0]),
        "0.2": Prompt(description="質問に対する回答を文章から一言で抽出してください。回答は名詞で答えてください。\n\n",
                      text=lambda d: "文章:" + "\n".join(d["ctxs"]["text"]) + f"\n質問:{d['question']}\n回答:",
                      target=lambda d: d["answers"]["text"][0]),
        "0.3": Prompt(description=ALPACA,
                      text=lambda d: alpaca("与えられた文脈から、質問に対する答えを抜き出してください。",
                                            "文脈：" + "\n".join(d["ctxs"]["text"]) + f"\n質問：{d['question']}"),
                      target=lambda d: d["answers"]["text"][0]),
    }  # fmt: skip

    def download(self, data_dir=None, cache_dir=None, download_mode=None) -> None:
        super().download()
        self.dataset = {split: [r for r in (_jaqket_row(x) for x in rows) if r is not None]
                        for split, rows in self.dataset.items()}  # fmt: skip

    def fits(self, doc, ctx):
        return len(self.tokens(ctx)) <= self.model().max_length - self.answer_tokens(doc)


def _jaqket_row(raw: dict) -> dict | None:
    """A JAQKET v2 JSON record as the dataset script's ``v2.0`` config yields it (or None)."""
    if "ctxs" in raw and isinstance(raw["ctxs"], dict):  # already columnar (a conversion)
        return dict(raw)
    ctxs = list(raw["ctxs"])[:JAQKET_CONTEXTS]
    if not any(c["has_answer"] for c in ctxs):
        return None
    answers = (
        raw["answers"]
        if isinstance(raw["answers"], dict)
        else {"text": list(raw["answers"]), "answer_start": [-1] * len(raw["answers"])}
    )
    columns = {
        k: [c[k] if k != "score" else float(c[k]) for c in ctxs] for k in ("id", "title", "text", "score", "has_answer")
    }
    return {"qid": raw["qid"], "question": raw["question"], "answers": answers, "ctxs": columns}


class XLSumJa(JpStableTask):
    """Summaries: greedy to the first newline, the reference's length + 10 tokens; the article
    cut sentence by sentence when the prompt is too long; ROUGE-2 by the model's tokenizer."""

    VERSION = "1.0"
    _INSTRUCTION = "与えられたニュース記事を要約してください。"
    PROMPTS: ClassVar[dict[str, Prompt]] = {
        "0.0": Prompt(description="与えられたニュース記事を要約してください。\n\n",
                      text=lambda d: f"ニュース記事:{d['text']}\n要約:", target=lambda d: d["summary"]),
        "0.3": Prompt(description=ALPACA, text=lambda d: alpaca(XLSumJa._INSTRUCTION, f"ニュース記事:{d['text']}"),
                      target=lambda d: d["summary"]),
    }  # fmt: skip

    def markers(self) -> tuple[str, str]:
        if self.prompt_version == "0.3":
            return f"### 指示:\n{self._INSTRUCTION}\n\n### 入力:\n", "### 応答:\n"
        return "ニュース記事:", "要約:"

    def truncate(self, ctx: str, max_length: int) -> str:
        """jp-stable's ``preprocess_ctx``: each shot's article (and the document's) keeps whole
        sentences up to an equal share of ``max_length`` tokens."""
        if len(self.tokens(ctx)) <= max_length:
            return ctx
        head, tail = self.markers()
        parts = [head + c for c in ctx.split(head)]
        out = ""
        if tail not in parts[0]:
            out, parts = parts[0].replace(head, ""), parts[1:]
        share = max_length // len(parts)
        for part in parts:
            text, summary = part.split(tail)
            kept: list[str] = []
            for s in text.split("。"):
                if len(self.tokens("。".join([*kept, s]))) > share:
                    if kept:
                        kept[-1] += "。\n"
                    else:
                        kept.append(
                            self.model().tokenizer.decode(self.tokens(s)[:share], skip_special_tokens=True) + "\n"
                        )
                    break
                kept.append(s)
            out += "。".join(kept) + tail + summary
        return out

    def construct_requests(self, doc, ctx, **kwargs):
        kwargs = _request_kwargs(kwargs)
        budget = len(self.tokens(doc["summary"])) + 10
        ctx = self.truncate(ctx, self.model().max_length - budget)
        return self.generate(doc, ctx, ["\n"], budget, **kwargs)

    def process_results(self, doc, results):
        return {"rouge2": (results[0], doc["summary"])}

    def aggregation(self):
        return {"rouge2": self._rouge2}

    def _rouge2(self, items):
        return rouge2(self.model().tokenizer, items)


_NUMBER = re.compile(r"(\-?[0-9\.\,]+)")
INVALID = "[invalid]"


def mgsm_answer(completion: str) -> int | str:
    """jp-stable's MGSM extraction: the last number of the output, as an integer (else invalid)."""
    found = _NUMBER.findall(completion)
    if not found:
        return INVALID
    try:
        value = float(found[-1].strip(".").replace(",", ""))
    except ValueError:
        return INVALID
    return int(value) if value.is_integer() else INVALID


class MGSM(JpStableTask):
    """Grade-school math, chain of thought: greedy to a newline or end of text; the shot count
    shrinks until the prompt leaves ``max_gen_toks`` free."""

    VERSION = "1.0"
    PROMPTS: ClassVar[dict[str, Prompt]] = {
        "0.0": Prompt(description="", sep="\n\n",
                      text=lambda d: f"問題：{d['question'].replace('問題：', '')}\nステップごとの答え：",
                      target=lambda d: d["answer"].replace("ステップごとの答え：", "")),
        "0.3": Prompt(description=ALPACA,
                      text=lambda d: alpaca("与えられた問題に対して、ステップごとに答えを導き出してください。", d["question"].replace("問題：", "")),
                      target=lambda d: d["answer"].replace("ステップごとの答え：", "")),
    }  # fmt: skip

    def fits(self, doc, ctx):
        m = self.model()
        return len(self.tokens(ctx)) <= m.max_length - m.max_gen_toks

    def construct_requests(self, doc, ctx, **kwargs):
        kwargs = _request_kwargs(kwargs)
        m = self.model()
        return self.generate(doc, ctx, [m.tokenizer.eos_token or "</s>", "\n"], m.max_gen_toks, **kwargs)

    def process_results(self, doc, results):
        return {"acc": float(mgsm_answer(results[0]) == doc["answer_number"])}

    def aggregation(self):
        return {"acc": mean}
