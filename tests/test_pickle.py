"""Pickle-only sources, opted in with `weights: pickle`: read with torch.load(weights_only=True),
converted once to safetensors (provenance in the lock), merged exactly like the safetensors model;
refused without the opt-in, and a pickle that would run code is refused without running it."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import hubserver
import pytest
import torch
import yaml
from safetensors.torch import load_file

hub = hubserver.hub  # the fixture

JOB = """\
evohub_job: 1
name: pickled
base_model: {path: base}
sources:
  - {name: one, path: ft1}
  - {name: two, path: ft2-bin, weights: pickle}
dtype: float32
parameter_space:
  method: task_arithmetic
  optimizer: {popsize: 4, max_evals: 4}
fitness:
  task: lm-loss
  backend: hf
  data: {path: data.jsonl}
"""


def _as_pickle(src: Path, dst: Path) -> Path:
    """The same model with pickle weights only (the legacy ``pytorch_model.bin`` of older repos)."""
    dst.mkdir()
    torch.save(load_file(src / "model.safetensors"), dst / "pytorch_model.bin")
    for f in src.glob("*.json"):
        (dst / f.name).write_bytes(f.read_bytes())
    assert not list(dst.glob("*.safetensors")) and list(dst.glob("*.bin"))
    return dst


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    from tiny import make_mistral

    root = tmp_path_factory.mktemp("pickled")
    base = make_mistral(root / "base", seed=0, tokenizer=True)
    for i, name in enumerate(("ft1", "ft2"), start=1):
        make_mistral(root / name, seed=i, base=base, tokenizer=True)
    return root


@pytest.fixture
def world(models: Path, tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("EVOHUB_CACHE", str(tmp_path / "evohub-cache"))
    root = tmp_path / "w"
    root.mkdir()
    for name in ("base", "ft1", "ft2"):
        (root / name).symlink_to(models / name)
    _as_pickle(models / "ft2", root / "ft2-bin")
    (root / "data.jsonl").write_text('{"text": "t1 t2 t3"}\n')
    return root


def test_a_pickle_source_is_converted_once_and_merges_like_its_safetensors(world: Path, tmp_path, run_cli):
    job = world / "job.yaml"
    job.write_text(JOB)
    code, _, err = run_cli("run", job, "--run-dir", tmp_path / "r", "--device", "cpu", "-q")
    assert code == 0, err
    from evohub.pipeline.rundir import RunDir

    raw = yaml.safe_load((tmp_path / "r" / "job.lock.yaml").read_text())["models"]
    assert all(not Path(e["local"]).is_absolute() for e in raw if e.get("path"))  # relative to the run
    (two,) = [e for e in RunDir(tmp_path / "r").lock() if e["name"] == "two"]
    conv = two["converted"]
    assert list(conv["from"]) == ["pytorch_model.bin"] and all(len(h) == 64 for h in conv["from"].values())
    assert conv["to"] and all(len(h) == 64 for h in conv["to"].values())
    assert Path(two["local"]).is_dir() and Path(two["local"]) != world / "ft2-bin"
    converted = {}
    for f in Path(two["local"]).glob("*.safetensors"):
        converted |= load_file(f)
    original = load_file(world / "ft2" / "model.safetensors")
    assert converted.keys() == original.keys() and all(torch.equal(converted[k], original[k]) for k in original)
    # the same job on the safetensors copy gives the same candidates and recipe, bit for bit
    (world / "job2.yaml").write_text(JOB.replace("ft2-bin, weights: pickle", "ft2"))
    code, _, err = run_cli("run", world / "job2.yaml", "--run-dir", tmp_path / "s", "--device", "cpu", "-q")
    assert code == 0, err

    def fits(d: Path) -> list:
        return [json.loads(x)["fitness"] for x in (d / "candidates.jsonl").read_text().splitlines()]

    assert fits(tmp_path / "r") == fits(tmp_path / "s")
    a, b = (load_file(next((tmp_path / d / "model").glob("*.safetensors"))) for d in ("r", "s"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_without_the_opt_in_a_pickle_source_is_refused_in_one_line(world: Path, tmp_path, run_cli):
    job = world / "job.yaml"
    job.write_text(JOB.replace(", weights: pickle", ""))
    code, _, err = run_cli("run", job, "--run-dir", tmp_path / "r", "--device", "cpu", "-q")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "add 'weights: pickle'" in err, err


class _Boom:
    def __reduce__(self):
        import os

        return (os.system, ("touch BOOM",))


def test_a_pickle_that_runs_code_is_refused_and_never_runs(world: Path, tmp_path, run_cli, monkeypatch):
    evil = world / "evil"
    evil.mkdir()
    (evil / "config.json").write_text((world / "ft2-bin" / "config.json").read_text())
    (evil / "pytorch_model.bin").write_bytes(pickle.dumps({"model.embed_tokens.weight": _Boom()}))
    monkeypatch.chdir(tmp_path)
    job = world / "job.yaml"
    job.write_text(JOB.replace("ft2-bin", "evil"))
    code, _, err = run_cli("run", job, "--run-dir", tmp_path / "r", "--device", "cpu", "-q")
    assert code == 2 and "refused by torch.load(weights_only=True)" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "BOOM").exists() and not (world / "BOOM").exists()


def test_a_pickle_only_hub_repo_is_fetched_and_converted_when_opted_in(hub, world: Path, tmp_path, monkeypatch):
    from evohub.errors import EvohubError
    from evohub.pipeline.pull import lock_entries
    from evohub.spec import ModelRef

    files = {p.name: p.read_bytes() for p in (world / "ft2-bin").iterdir() if p.is_file()}
    hub.create_repo("org/bin-only")
    hub.commit("org/bin-only", files, branch="main")
    with pytest.raises(
        EvohubError, match=r"has no safetensors weights \(it has pytorch_model.bin\); add 'weights: pickle'"
    ):
        lock_entries([("m", ModelRef(repo="org/bin-only"))])
    (entry,) = lock_entries([("m", ModelRef(repo="org/bin-only", weights="pickle"))])
    assert len(entry["revision"]) == 40 and list(entry["converted"]["from"]) == ["pytorch_model.bin"]
    local = Path(entry["local"])
    assert local.name == entry["revision"] and list(local.glob("*.safetensors"))
    again = lock_entries([("m", ModelRef(repo="org/bin-only", weights="pickle"))])  # cached: not converted twice
    assert again[0]["converted"] == entry["converted"]
