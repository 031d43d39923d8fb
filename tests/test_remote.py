"""`evohub validate --strict` checks every Hub reference against the Hub, metadata only, before any
compute: each quirk of the real repos is one line at its field, in seconds, downloading no weights
and no data rows."""

from __future__ import annotations

import time
from pathlib import Path

import hubserver
import torch

hub = hubserver.hub  # the fixture


def _parquet() -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table({"question": ["q1", "q2"], "answer_number": [1, 2]}), buf)
    return buf.getvalue()


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}


def _seed(hub, tmp_path: Path) -> dict[str, str]:
    """Stand-ins with the quirks validation must catch; returns each repo's commit."""
    from safetensors.torch import load_file
    from tiny import make_mistral

    base = make_mistral(tmp_path / "base", seed=0)
    ft = make_mistral(tmp_path / "ft", seed=1, base=base)
    big = make_mistral(tmp_path / "big", seed=2, vocab=130)
    bin_only = {"config.json": (ft / "config.json").read_bytes()}
    torch.save(load_file(ft / "model.safetensors"), tmp_path / "pytorch_model.bin")
    bin_only["pytorch_model.bin"] = (tmp_path / "pytorch_model.bin").read_bytes()
    sha = {
        "base": hub.commit("org/base", _files(base)).sha,
        "ft": hub.commit("org/ft", _files(ft)).sha,
        "pickled": hub.commit("org/pickled", bin_only).sha,
        "gated": hub.commit("org/gated", _files(ft)).sha,
        "bigvocab": hub.commit("org/bigvocab", _files(big)).sha,
        "gsm": hub.commit("org/gsm-ja", {"gsm8k-ja-test_250-1319.jsonl": b'{"question": "q", "answer_number": 1}\n'},
                          repo_type="dataset").sha,
        "scripted": hub.commit("org/scripted", {"scripted.py": b"# a loading script\n"}, repo_type="dataset").sha,
        "mgsm": hub.commit("org/mgsm", {
            "README.md": b"---\nconfigs:\n- config_name: ja\n  data_files:\n  - split: test\n    path: ja/test.jsonl\n---\n",
            "ja/test.jsonl": b'{"question": "q", "answer_number": 1}\n'}, repo_type="dataset").sha,
    }  # fmt: skip
    hub.commit("org/scripted", {"ja/test/0000.parquet": _parquet()}, repo_type="dataset", branch="refs/convert/parquet")
    sha["bare-script"] = hub.commit("org/bare-script", {"bare.py": b"# a script\n"}, repo_type="dataset").sha
    hub.repo("org/gated").gated = True
    return sha


def _job(refs: str, data: str, validation: str, sha: dict[str, str]) -> str:
    text = f"""evohub_job: 1
name: remote
base_model: {{repo: org/base, revision: <base>}}
sources:
{refs}
dtype: float32
parameter_space:
  method: task_arithmetic
  optimizer: {{max_evals: 4}}
fitness:
  task: ja-math
  data: {data}
  validation: {validation}
"""
    for name, commit in sha.items():
        text = text.replace(f"<{name}>", commit)
    return text


def test_strict_validation_catches_each_quirk_in_one_line_without_downloading(hub, tmp_path, run_cli, capsys):
    sha = _seed(hub, tmp_path)
    capsys.readouterr()  # the stand-ins' progress bars
    refs = "\n".join(
        f"  - {{name: {n}, repo: org/{n}, revision: <{n}>}}" for n in ("ft", "pickled", "gated", "bigvocab")
    )
    bad = _job(refs + "\n  - {name: gone, repo: org/gone, revision: " + "a" * 40 + "}",
               "{repo: org/gsm-ja, revision: <gsm>, split: 'train[:10]'}",
               "{repo: org/scripted, revision: <scripted>, split: test}", sha)  # fmt: skip
    (tmp_path / "bad.yaml").write_text(bad)
    start = time.perf_counter()
    code, _, err = run_cli("validate", "--strict", tmp_path / "bad.yaml")
    seconds = time.perf_counter() - start
    lines = err.strip().splitlines()
    assert code == 2 and seconds < 5, (seconds, err)
    expected = {
        "sources[1]": "org/pickled@" + sha["pickled"] + " has no safetensors weights (it has pytorch_model.bin); add 'weights: pickle'",
        "sources[2]": "is gated",
        "sources[3]": "vocab_size 130 differs from the base model's 128; set parameter_space.vocab: base",
        "sources[4]": "no such model repo",
        "fitness.data.split": "'train' not in org/gsm-ja@" + sha["gsm"] + " (splits: test)",
        "fitness.validation.config": "is read from its parquet conversion; name one of its configs (ja)",
    }  # fmt: skip
    for field, text in expected.items():
        hits = [ln for ln in lines if f": {field}: " in ln and text in ln]
        assert len(hits) == 1 and hits[0].startswith(str(tmp_path / "bad.yaml") + ":"), (field, text, err)
    assert len(lines) == len(expected), err
    weights = [r for r in hub.requests if "/resolve/" in r.path and r.path.endswith((".safetensors", ".bin", ".jsonl"))]
    assert not weights  # metadata only

    good = _job(
        "  - {name: ft, repo: org/ft, revision: <ft>}\n  - {name: pickled, repo: org/pickled, revision: <pickled>, weights: pickle}",
        "{repo: org/gsm-ja, revision: <gsm>, split: 'test[:869]'}",
        "{repo: org/mgsm, revision: <mgsm>, config: ja, split: test}",
        sha,
    )
    (tmp_path / "good.yaml").write_text(good)
    code, out, err = run_cli("validate", "--strict", tmp_path / "good.yaml")
    assert code == 0 and "ok:" in out, err
    (tmp_path / "script.yaml").write_text(
        good.replace("repo: org/mgsm, revision: " + sha["mgsm"], "repo: org/scripted, revision: " + sha["scripted"])
    )
    code, out, err = run_cli("validate", "--strict", tmp_path / "script.yaml")
    assert code == 0 and "ok:" in out, err  # read from its parquet conversion: config ja, split test
    (tmp_path / "bare.yaml").write_text(
        good.replace(
            "repo: org/mgsm, revision: " + sha["mgsm"], "repo: org/bare-script, revision: " + sha["bare-script"]
        )
    )
    code, _, err = run_cli("validate", "--strict", tmp_path / "bare.yaml")
    assert code == 2 and "has no data files (it holds bare.py) and no parquet conversion" in err
    (tmp_path / "cfg.yaml").write_text(good.replace("config: ja", "config: fr"))
    code, _, err = run_cli("validate", "--strict", tmp_path / "cfg.yaml")
    assert code == 2 and "fitness.validation.config: no config 'fr' in org/mgsm" in err and "(configs: ja)" in err


def test_a_script_dataset_is_read_from_its_parquet_conversion(hub, tmp_path):
    """Never the script: the rows come from the Hub's refs/convert/parquet, by config and split."""
    from evohub.score.data import load_rows
    from evohub.spec import DataRef

    hub.commit("org/scripted", {"scripted.py": b"raise SystemExit('a script ran')\n"}, repo_type="dataset")
    hub.commit("org/scripted", {"ja/test/0000.parquet": _parquet()}, repo_type="dataset", branch="refs/convert/parquet")
    rows = load_rows(DataRef(repo="org/scripted", config="ja", split="test"))
    assert rows == [{"question": "q1", "answer_number": 1}, {"question": "q2", "answer_number": 2}]
