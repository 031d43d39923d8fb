"""JP-LMEH as jp-stable ran it (docs/design.md#jp-lmeh): the rendered requests equal those
jp-stable's own code renders for fixture documents (tests/data/jp_stable/), every task runs on a
tiny model, the nine scores land on 0-100 with their average, and the card and .eval_results
label each with its Hub dataset (docs/design.md#reported-results)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import hubserver
import pytest

pytest.importorskip("lm_eval")

hub = hubserver.hub  # the fixture
DATA = Path(__file__).parent / "data" / "jp_stable"
TASKS = ("jcommonsenseqa", "jnli", "marc_ja", "jsquad", "jaqket_v2", "xlsum_ja", "xwinograd_ja", "mgsm", "jcola")


def _rows(task: str, n: int = 6) -> list[dict]:
    """Rows in the column layout of each task's dataset, with words the tiny model knows."""

    def ctx(i):
        return [{"id": f"c{i}{j}", "title": f"t{j}", "text": f"t{i} t{j} 。", "score": 1.0, "has_answer": j == 1}
                for j in range(6)]  # fmt: skip

    make = {
        "jcommonsenseqa": lambda i: {"q_id": i, "question": f"t{i}", **{f"choice{c}": f"t{c + 1}" for c in range(5)},
                                     "label": i % 5},
        "jnli": lambda i: {"sentence_pair_id": str(i), "yjcaptions_id": "x", "sentence1": f"t{i}", "sentence2": f"t{i + 1}",
                           "label": i % 3},
        "marc_ja": lambda i: {"sentence": f"t{i} t{i + 2}", "label": i % 2, "review_id": str(i)},
        "jsquad": lambda i: {"id": f"a{i}", "title": f"t{i}", "context": f"t{i} [SEP] t{i} t{i + 1}", "question": f"t{i + 2}",
                             "answers": {"text": [f"t{i + 1}"], "answer_start": [3]}, "is_impossible": False},
        "jaqket_v2": lambda i: {"qid": f"q{i}", "question": f"t{i}", "answers": [f"t{i + 1}"], "ctxs": ctx(i)},
        "xlsum_ja": lambda i: {"id": str(i), "url": "u", "title": "t", "text": f"t{i} t{i + 1}。t{i + 2}", "summary": f"t{i}"},
        "xwinograd_ja": lambda i: {"sentence1": f"t{i} t1", "sentence2": f"t{i} t2", "answer": str(1 + i % 2)},
        "mgsm": lambda i: {"question": f"t{i}", "answer": f"ステップごとの答え：t{i} {i}", "answer_number": i,
                           "equation_solution": ""},
        "jcola": lambda i: {"uid": i, "source": "s", "label": i % 2, "diacritic": "", "sentence": f"t{i} t{i + 3}",
                            "original": "", "translation": "", "gloss": False},
    }  # fmt: skip
    return [make[task](i) for i in range(n)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from tiny import make_mistral

    return make_mistral(tmp_path_factory.mktemp("jps") / "m", seed=0, tokenizer=True)


def _local_data(root: Path) -> dict[str, str]:
    data = {}
    for task in TASKS:
        path = root / f"{task}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _rows(task)))
        data[f"jp_stable_{task}"] = str(path)
    return data


def test_the_nine_tasks_run_and_report_on_0_to_100_with_their_average(model_dir, tmp_path):
    from evohub.pipeline.publish import _results_table
    from evohub.score.evaluate import evaluate
    from evohub.score.suites import find_suite

    out = evaluate(model_dir, ["jp-lmeh"], data=_local_data(tmp_path), out_dir=tmp_path / "eval", max_new_tokens=4)
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    m = saved["suites"]["jp-lmeh"]["metrics"]
    assert saved == json.loads(json.dumps(out)) and m["prompt_version"] == "0.3" and "not_run" not in m
    raw = m["lm_eval"]
    suite = find_suite("jp-lmeh")
    names = [r.name for r in suite.reports]
    assert [s["name"] for s in m["scores"]] == names == ["JComQA", "JNLI", "MARC", "JSQuAD", "JAQKET", "XLSum",
                                                         "XWino", "MGSM", "JCoLA"]  # fmt: skip
    for s, r in zip(m["scores"], suite.reports, strict=True):
        value = raw[r.task][r.metric]
        assert s["value"] == round(r.scale * value, 2) and 0 <= s["value"] <= 100 and s["local"] is True
    # exact match and ROUGE-2 come on 0-100 already (jp-stable's scale); accuracies on 0-1
    assert raw["jp_stable_jsquad"]["exact_match,none"] >= 0 and 0 <= raw["jp_stable_jnli"]["acc,none"] <= 1
    assert {"balanced_acc,none", "mcc,none", "macro_f1,none"} <= set(raw["jp_stable_jcola"])
    unrounded = [r.scale * raw[r.task][r.metric] for r in suite.reports]
    assert m["average"] == round(sum(unrounded) / 9, 2)

    # the card: one row per task on 0-100, the average, and the paper's figure beside it
    results = {
        "suites": ["jp-lmeh"],
        "models": {"evolved": saved, "shisa": saved | {"model": "augmxnt/shisa-gamma-7b-v1@49bf"}},
    }
    table = _results_table(results, "EvoLLM-JP-v1-7B")
    rows = {r["metric"]: r["values"] for r in table["rows"]["jp-lmeh"]}
    assert rows["JP-LMEH average (9 tasks)"] == [f"{m['average']:.2f}"] * 2
    assert rows["JP-LMEH average (9 tasks), published (arXiv 2403.13187, Table 2)"] == ["70.5", "66.1"]
    assert rows["JSQuAD exact_match (local data)"] == [f"{m['scores'][3]['value']:.1f}"] * 2
    assert table["notes"]["jp-lmeh"] == ["jp-stable prompt version 0.3."]


def test_prompt_version_is_the_jobs_and_falls_back_per_task(model_dir, tmp_path):
    from evohub.score.jp_stable import JNLI, MGSM, JCoLA, XLSumJa

    assert JNLI.version_for("0.2") == "0.2" and JNLI.version_for("0.3") == "0.3"
    assert JCoLA.version_for("0.2") == MGSM.version_for("0.2") == XLSumJa.version_for("0.1") == "0.0"


def _parquet(rows: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


def _csv(rows: list[dict]) -> bytes:
    import csv

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode()


def _seed_hub(hub) -> None:
    """The nine datasets as their repos hold them: JGLUE and MGSM behind loading scripts with a
    parquet conversion, JAQKET's JSON beside its script, XL-Sum's CSV, XWinograd's JSON."""
    convert = "refs/convert/parquet"
    jglue = {
        "jcommonsenseqa": "JCommonsenseQA",
        "jnli": "JNLI",
        "marc_ja": "MARC-ja",
        "jsquad": "JSQuAD",
        "jcola": "JCoLA",
    }
    hub.commit("shunk031/JGLUE", {"JGLUE.py": b"# a loading script\n"}, repo_type="dataset")
    hub.commit("shunk031/JGLUE", {f"{cfg}/{split}/0000.parquet": _parquet(_rows(t)) for t, cfg in jglue.items()
                                  for split in ("train", "validation")}, repo_type="dataset", branch=convert)  # fmt: skip
    hub.commit("juletxara/mgsm", {"mgsm.py": b"# a loading script\n"}, repo_type="dataset")
    hub.commit("juletxara/mgsm", {f"ja/{s}/0000.parquet": _parquet(_rows("mgsm")) for s in ("train", "test")},
               repo_type="dataset", branch=convert)  # fmt: skip
    jaqket = json.dumps(_rows("jaqket_v2"), ensure_ascii=False).encode()
    hub.commit("kumapo/JAQKET", {"JAQKET.py": b"# a loading script\n", "train_jaqket_59.350.json": jaqket,
                                 "dev_jaqket_59.350.json": jaqket}, repo_type="dataset")  # fmt: skip
    hub.commit("mkshing/xlsum_ja", {f"data/{s}.csv": _csv(_rows("xlsum_ja")) for s in ("train", "validation", "test")},
               repo_type="dataset")  # fmt: skip
    wino = "".join(json.dumps(r) + "\n" for r in _rows("xwinograd_ja")).encode()
    hub.commit("polm-stability/xwinograd-ja", {"test/xwinograd-ja.json": wino}, repo_type="dataset")


def test_from_the_hub_each_task_is_one_well_formed_eval_result(hub, model_dir, tmp_path):
    import yaml
    from huggingface_hub import eval_result_entries_to_yaml, parse_eval_result_entries

    from evohub.hub.card import CardMeta, _eval_results
    from evohub.models import KINDS
    from evohub.pipeline.publish import _results
    from evohub.score.evaluate import evaluate
    from evohub.score.suites import find_suite

    _seed_hub(hub)
    out = evaluate(model_dir, ["jp-lmeh"], limit=2, max_new_tokens=4)
    m = out["suites"]["jp-lmeh"]["metrics"]
    assert "not_run" not in m and len(m["scores"]) == 9 and "average" in m
    assert all("local" not in s and s["dataset"] for s in m["scores"])
    # each names the dataset commit it was read at (the Hub's main, as nothing is pinned here)
    served = {
        r: hub.repo(r, "dataset").branches["main"] for r in {x.dataset.repo for x in find_suite("jp-lmeh").reports}
    }
    assert [s["revision"] for s in m["scores"]] == [served[r.dataset.repo] for r in find_suite("jp-lmeh").reports]
    assert m["scores"][0]["dataset"] == f"shunk031/JGLUE:JCommonsenseQA[validation]@{served['shunk031/JGLUE'][:12]}"

    entries = _results({"models": {"evolved": out}}, KINDS.get("llm"))
    meta = CardMeta(repo_id="me/evo", template="llm", pipeline_tag="text-generation", base_models=[], language=["ja"],
                    license="apache-2.0", datasets=[], results=entries, date="2026-12-02T00:00:00Z")  # fmt: skip
    new, legacy = _eval_results(meta)
    parsed = parse_eval_result_entries(yaml.safe_load(yaml.safe_dump(eval_result_entries_to_yaml(new))))
    assert [(e.dataset_id, e.task_id) for e in parsed] == [
        ("shunk031/JGLUE", "jp_stable_jcommonsenseqa"), ("shunk031/JGLUE", "jp_stable_jnli"),
        ("shunk031/JGLUE", "jp_stable_marc_ja"), ("shunk031/JGLUE", "jp_stable_jsquad"),
        ("kumapo/JAQKET", "jp_stable_jaqket_v2"), ("mkshing/xlsum_ja", "jp_stable_xlsum_ja"),
        ("polm-stability/xwinograd-ja", "jp_stable_xwinograd_ja"), ("juletxara/mgsm", "jp_stable_mgsm"),
        ("shunk031/JGLUE", "jp_stable_jcola"),
    ]  # fmt: skip
    assert [e.value for e in parsed] == [s["value"] for s in m["scores"]]
    assert [e.dataset_revision for e in parsed] == [s["revision"] for s in m["scores"]]
    assert all("prompt version 0.3" in e.notes for e in parsed)
    # model-index: the same nine, keyed by the Hub dataset and its config, not by lm-eval task names
    assert [(r.dataset_type, r.dataset_config, r.metric_value) for r in legacy] == [
        (e.dataset_id, c, e.value) for e, c in zip(parsed, ["JCommonsenseQA", "JNLI", "MARC-ja", "JSQuAD", "v2.0", None,
                                                            None, "ja", "JCoLA"], strict=True)]  # fmt: skip


# -- against jp-stable's own requests ---------------------------------------------------------

CASES = sorted(p.name for p in DATA.glob("*.json"))


def _build(case: dict, tmp_path: Path):
    """Our task for a reference file, as its registration YAML makes it, reading the file's
    fixture rows (local JSONL splits) with its prompt version."""
    import datasets
    import yaml

    from evohub.score import jp_stable
    from evohub.score.lmeval import OUR_TASKS

    files = {}
    for split, rows in case["rows"].items():
        files[split] = str(tmp_path / f"{split}.jsonl")
        Path(files[split]).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    text = (OUR_TASKS / "jp_stable" / f"jp_stable_{case['task']}.yaml").read_text()
    cfg = yaml.safe_load(text.replace("!function ", ""))
    cls = getattr(jp_stable, cfg.pop("class").rpartition(".")[2])
    # one schema for every split (MGSM's test rows have no worked answer: null there)
    features = datasets.Dataset.from_list([r for rows in case["rows"].values() for r in rows]).features
    cfg |= {"dataset_path": "json", "dataset_name": None, "dataset_kwargs": {"data_files": files, "features": features},
            "metadata": {"prompt_version": case.get("prompt_version") or "0.3"}}  # fmt: skip
    return cls(config=cfg)


def _tokenizer(case: dict, tmp_path: Path):
    from evohub.local.tiny import save_tokenizer

    tok = case.get("tokenizer") or {}
    chars = tok.get("tokens") or ["<unk>", "</s>", *sorted(set(json.dumps(case["rows"], ensure_ascii=False)))]
    fast = save_tokenizer(tmp_path / "tok", chars, unk="<unk>", eos="</s>", chars=True)
    return fast, tok.get("max_length", 2048), tok.get("max_gen_toks", 256)


@pytest.mark.parametrize("name", CASES)
def test_requests_and_scores_equal_jp_stables(name, tmp_path):
    from evohub.score import jp_stable

    case = json.loads((DATA / name).read_text())
    tokenizer, max_length, max_gen_toks = _tokenizer(case, tmp_path)
    with jp_stable.bound_to(tokenizer, max_length, max_gen_toks):
        task = _build(case, tmp_path)
        assert task.prompt_version == (case.get("prompt_version") or "")
        task.build_all_requests(limit=None, rank=0, world_size=1)
        ours: dict[int, list] = {}
        for inst in task.instances:
            ours.setdefault(inst.doc["_position"], []).append(inst)
        for want in case["requests"]:
            got = sorted(ours[want["eval_row"]], key=lambda i: i.idx)
            if want["type"] == "loglikelihood":
                assert [list(i.arguments) for i in got] == want["args"], f"row {want['eval_row']}"
            else:
                ((ctx, gen),) = [i.arguments for i in got]
                assert ctx == want["args"][0], f"row {want['eval_row']}"
                assert (gen["until"], gen["max_gen_toks"]) == (
                    want["args"][1]["until"],
                    want["args"][1]["max_gen_toks"],
                )
        # jp-stable's scoring of scripted model outputs: the same per-document values and totals
        fake = case["fake_lm_check"]
        per_metric: dict[str, list] = {}
        for row, response in fake["responses"].items():
            doc = next(i.doc for i in task.instances if i.doc["_position"] == int(row))
            results = [(ll, False) for ll in response] if isinstance(response, list) else [response]
            for k, v in task.process_results(doc, results).items():
                per_metric.setdefault(k, []).append(v)
        got = {k: task.aggregation()[k](v) for k, v in per_metric.items()}
    want = fake["aggregate"]
    if case["task"] == "xlsum_ja":  # ROUGE-2 by the model's tokenizer, as jp-stable's evaluator leaves it
        want = {
            "rouge2": next(v["plain_mean"] for k, v in fake["rouge2_by_tokenizer"].items() if k.startswith("task_"))
        }
    assert set(got) == set(want) and all(got[k] == pytest.approx(want[k], abs=1e-9) for k in want), (got, want)


def test_a_misspelt_data_name_fails_before_any_model_loads(tmp_path):
    from evohub.errors import ScoreError
    from evohub.score.evaluate import evaluate

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")  # never loaded: the name is checked first
    with pytest.raises(ScoreError, match="lm-eval has no task or group 'jp_stable_jnil'"):
        evaluate(tmp_path / "m", ["jp-lmeh"], data={"jp_stable_jnil": str(tmp_path / "x.jsonl")})


def test_jaqket_json_keeps_five_contexts_and_drops_questions_they_do_not_answer():
    from evohub.score.jp_stable import _jaqket_row

    def raw(answer_at: int) -> dict:
        ctxs = [
            {"id": str(j), "title": "t", "text": f"x{j}", "score": 1, "has_answer": j == answer_at} for j in range(7)
        ]
        return {"qid": "q", "question": "?", "answers": ["a", "b"], "ctxs": ctxs}

    row = _jaqket_row(raw(4))
    assert row["ctxs"]["text"] == ["x0", "x1", "x2", "x3", "x4"] and row["ctxs"]["score"] == [1.0] * 5
    assert row["answers"] == {"text": ["a", "b"], "answer_start": [-1, -1]}
    assert _jaqket_row(raw(5)) is None  # its answer is only in the sixth context: the script drops it
