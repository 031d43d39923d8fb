"""The `jmmlu` suite: JMMLU as the Swallow LLM Leaderboard reports it, llm-jp-eval 1.3.0's split,
prompt and exact match (docs/design.md#jmmlu).

The expected documents, shots and prompt below are what llm-jp-eval 1.3.0's own
``JMMLUDatasetProcessor`` (its FILENAMES cut to these three subjects) and
``get_evaluation_prompt`` give for the fixture rows, written down as data.
"""

from __future__ import annotations

import json
from pathlib import Path

import hubserver
import pytest

pytest.importorskip("lm_eval")

hub = hubserver.hub  # the fixture

SUBJECTS = {"anatomy": "解剖学", "econometrics": "計量経済学", "japanese_history": "日本史"}
#: econometrics' fifth question has a line break as a CSV's quoted field holds it (CR LF)
BROKEN = ("econometrics", 4)


def _rows() -> list[dict]:
    """14 questions per subject, in file order; subjects not in llm-jp-eval's order (it reads
    econometrics, then japanese_history, then anatomy), spaces around choices kept."""
    rows = []
    for subject, ja in SUBJECTS.items():
        for i in range(14):
            q = f"{ja}の問{i}は？" + ("\r\n下線部を選べ。" if (subject, i) == BROKEN else "")
            rows.append({"subject": subject, "question": q, "A": f"{ja}{i}a", "B": f" {ja}{i}b", "C": f"{ja}{i}c ",
                         "D": f"{ja}{i}d", "answer": "ABCD"[(i * 7 + len(subject)) % 4]})  # fmt: skip
    return rows


#: llm-jp-eval's evaluated questions (test[16:]) in its order, and its five shots (train[:5])
EVALUATED = [("anatomy", 12, "D"), ("japanese_history", 8, "A"), ("japanese_history", 13, "D"),
             ("econometrics", 4, "A"), ("japanese_history", 12, "A")]  # fmt: skip
SHOTS = [("econometrics", 7, "B"), ("japanese_history", 7, "B"), ("japanese_history", 2, "C"),
         ("anatomy", 10, "B"), ("japanese_history", 11, "B")]  # fmt: skip

#: the first evaluated question's prompt, character for character
FIRST_PROMPT = "\n".join([
    "以下は、タスクを説明する指示と、文脈のある入力の組み合わせです。要求を適切に満たす応答を書きなさい。",
    "",
    "### 指示:",
    "与えられた質問と選択肢から、最も適切な回答を選択してください。なお、回答には選択肢のアルファベット（例：A）"
    "のみを含め、他には何も含めないことを厳守してください。",
    "",
    "### 入力:",
    "質問：計量経済学の問7は？",
    "選択肢：A.計量経済学7a,B. 計量経済学7b,C.計量経済学7c ,D.計量経済学7d",
    "",
    "### 応答:",
    "B",
    "",
    "### 入力:",
    "質問：日本史の問7は？",
    "選択肢：A.日本史7a,B. 日本史7b,C.日本史7c ,D.日本史7d",
    "",
    "### 応答:",
    "B",
    "",
    "### 入力:",
    "質問：日本史の問2は？",
    "選択肢：A.日本史2a,B. 日本史2b,C.日本史2c ,D.日本史2d",
    "",
    "### 応答:",
    "C",
    "",
    "### 入力:",
    "質問：解剖学の問10は？",
    "選択肢：A.解剖学10a,B. 解剖学10b,C.解剖学10c ,D.解剖学10d",
    "",
    "### 応答:",
    "B",
    "",
    "### 入力:",
    "質問：日本史の問11は？",
    "選択肢：A.日本史11a,B. 日本史11b,C.日本史11c ,D.日本史11d",
    "",
    "### 応答:",
    "B",
    "",
    "### 入力:",
    "質問：解剖学の問12は？",
    "選択肢：A.解剖学12a,B. 解剖学12b,C.解剖学12c ,D.解剖学12d",
    "",
    "### 応答:",
    "",
])  # fmt: skip


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


def _task(data: str, tmp_path: Path):
    """swallow_jmmlu as evohub runs it on a local file: its YAML included by a generated one."""
    from evohub.score.lmeval import _manager, _new_manager, local_overrides

    names = local_overrides({"swallow_jmmlu": data}, _manager(False), tmp_path)
    (task,) = _new_manager(False, str(tmp_path)).load([names["swallow_jmmlu"]])["tasks"].values()
    return task


def _question(subject: str, i: int) -> str:
    ja = SUBJECTS[subject]
    broken = "\n下線部を選べ。" if (subject, i) == BROKEN else ""
    return f"質問：{ja}の問{i}は？{broken}\n選択肢：A.{ja}{i}a,B. {ja}{i}b,C.{ja}{i}c ,D.{ja}{i}d"


def test_documents_shots_and_prompt_are_llm_jp_evals(tmp_path):
    from evohub.score.llm_jp_eval import split

    shots, _ = split(_rows())
    assert [(s["input"], s["output"]) for s in shots] == [(_question(s, i), a) for s, i, a in SHOTS]

    task = _task(_jsonl(tmp_path / "jmmlu.jsonl", _rows()), tmp_path)
    task.set_config("generation_kwargs", {"max_gen_toks": 8}, update=True)  # a run's cap, as run_lmeval sets it
    task.build_all_requests(limit=None, rank=0, world_size=1)
    insts = sorted(task.instances, key=lambda i: i.doc_id)
    assert [(i.doc["subject"], i.doc["answer"]) for i in insts] == [(s, a) for s, _, a in EVALUATED]
    contexts = [i.arguments[0] for i in insts]
    assert contexts[0] == FIRST_PROMPT
    head = FIRST_PROMPT.rsplit("### 入力:\n", 1)[0]  # the same header and shots before every question
    assert contexts == [f"{head}### 入力:\n{_question(s, i)}\n\n### 応答:\n" for s, i, _ in EVALUATED]
    gen = insts[0].arguments[1]
    assert gen["max_gen_toks"] == 1 and gen["until"] == ["\n\n"] and not gen["do_sample"]  # one token, greedy

    # llm-jp-eval's answer: before the first blank line, stripped, NFKC; exact match with the letter
    doc = insts[0].doc  # gold D
    scored = {out: task.process_results(doc, [out])["exact_match"] for out in ["D", " Ｄ\n\n### 入力", "D.", "d", ""]}
    assert scored == {"D": 1.0, " Ｄ\n\n### 入力": 1.0, "D.": 0.0, "d": 0.0, "": 0.0}


def test_rows_outside_llm_jp_evals_53_subjects_are_refused(tmp_path):
    from evohub.errors import ScoreError
    from evohub.score.llm_jp_eval import SUBJECTS as OURS
    from evohub.score.llm_jp_eval import split

    assert len(OURS) == 53 and "japanese_civics" not in OURS  # JMMLU's CC BY-NC-ND subjects are not in it
    with pytest.raises(ScoreError, match="japanese_civics"):
        split([dict(_rows()[0], subject="japanese_civics")])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from tiny import make_mistral

    return make_mistral(tmp_path_factory.mktemp("jmmlu") / "m", seed=0, tokenizer=True, initializer_range=0.3)


def test_the_suite_runs_on_a_tiny_model_and_reports_exact_match(model_dir, tmp_path):
    from evohub.score.evaluate import evaluate

    data = _jsonl(tmp_path / "jmmlu.jsonl", _rows())
    out = evaluate(model_dir, ["jmmlu"], data={"swallow_jmmlu": data}, max_new_tokens=8)
    m = out["suites"]["jmmlu"]["metrics"]
    res = m["lm_eval"]["swallow_jmmlu"]
    assert res["sample_len"] == len(EVALUATED) and 0 <= res["exact_match,none"] <= 1
    assert m["scores"] == [{"name": "JMMLU", "metric": "exact_match", "value": round(100 * res["exact_match,none"], 2),
                            "local": True}]  # fmt: skip


def test_from_the_hub_it_reads_the_pinned_csv_commit_beside_a_script_on_main(hub, model_dir):
    """The stand-in of the recorded snapshot (CSV files with a header row, at the pinned commit),
    then main as the Hub has it now: a loading script and no CSV folder."""
    from evohub.local import standins
    from evohub.local.snapshot import load_snapshot
    from evohub.score.evaluate import evaluate
    from evohub.score.suites import find_suite

    snap = load_snapshot("nlp-waseda/JMMLU", "dataset")
    pin = find_suite("jmmlu").reports[0].dataset.revision
    assert snap.revision == pin
    standins.publish(hub, snap)
    hub.commit(snap.repo, {"JMMLU.py": b"# a loading script\n", **{f: None for f in snap.configs["subject-files"].files}},
               repo_type="dataset")  # fmt: skip
    from evohub.score.lmeval import _new_manager

    (task,) = _new_manager(False).load(["swallow_jmmlu"])["tasks"].values()  # the real row counts, headers dropped
    docs = task.test_docs()
    assert len(docs) == 3541 and not any("質問：question" in p for p in docs["prompt"])
    out = evaluate(model_dir, ["jmmlu"], limit=2, max_new_tokens=4)
    m = out["suites"]["jmmlu"]["metrics"]
    assert "not_run" not in m and m["lm_eval"]["swallow_jmmlu"]["sample_len"] == 2
    (score,) = m["scores"]
    assert score["dataset"] == f"nlp-waseda/JMMLU[test]@{pin[:12]}" and score["revision"] == pin
