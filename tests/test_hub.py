"""Pulls and publishes against the loopback Hub (tests/hubserver.py), through the real client."""

from __future__ import annotations

import json
from pathlib import Path

import hubserver
import pytest
import yaml

from evohub.errors import EvohubError
from evohub.spec import ModelRef

hub = hubserver.hub  # the fixture

JOB = """\
evohub_job: 1
name: pub
seed: 0
base_model: {path: base}
sources:
  - {name: one, path: ft1}
  - {name: two, path: ft2}
dtype: float32
tokenizer_source: base
parameter_space:
  method: linear
  weight: {bounds: [0, 1]}
  optimizer: {popsize: 4, max_evals: 4}
fitness:
  task: lm-loss
  data: {path: fit.jsonl}
  backend: hf
evaluation:
  suites: [mgsm-ja]
  backend: hf
  compare_sources: false
  data: {mgsm-ja: mgsm.jsonl}
  limit: 2
  max_new_tokens: 2
publish:
  repo: me/evo-tiny
  card: llm
"""


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished run (evolve, merge, evaluate) of a tiny job, not yet published."""
    from tiny import make_mistral

    from evohub.pipeline.job import run_job

    root = tmp_path_factory.mktemp("pubworld")
    base = make_mistral(root / "base", seed=0, tokenizer=True)
    make_mistral(root / "ft1", seed=1, base=base, tokenizer=True)
    make_mistral(root / "ft2", seed=2, base=base, tokenizer=True)
    (root / "fit.jsonl").write_text("".join(json.dumps({"text": f"t{i} t{i + 1} t{i + 2}"}) + "\n" for i in range(6)))
    (root / "mgsm.jsonl").write_text(
        "".join(json.dumps({"question": f"t{i}", "answer_number": i}) + "\n" for i in range(3))
    )
    (root / "job.yaml").write_text(JOB)
    run_job(root / "job.yaml", root / "run", device="cpu", progress=False, publish=False)
    return root / "run"


def _seed_model(hub, repo_id: str, files: dict[str, bytes]) -> str:
    hub.create_repo(repo_id)
    return hub.commit(repo_id, files, branch="main").sha


def test_pull_pins_branch_tag_and_commit(hub, tmp_path):
    from tiny import make_mistral

    from evohub.pipeline.pull import lock_entries as pull

    d = make_mistral(tmp_path / "m", seed=0, tokenizer=True)
    files = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()} | {"pytorch_model.bin": b"never read"}
    sha = _seed_model(hub, "org/tiny", files)
    from huggingface_hub import HfApi

    HfApi().create_tag("org/tiny", tag="v1", revision=sha)
    for rev in ("main", "v1", sha):
        (entry,) = pull([("m", ModelRef(repo="org/tiny", revision=rev))])
        assert entry["revision"] == sha and entry["requested"] == rev
        assert entry["architecture"] == "MistralForCausalLM" and entry["bytes"] > 0
        local = Path(entry["local"])
        assert (local / "config.json").exists() and any(local.glob("*.safetensors"))
        assert not (local / "pytorch_model.bin").exists()  # pickle files are never fetched
    _seed_model(hub, "org/pickled", {"config.json": b"{}", "pytorch_model.bin": b"x"})
    with pytest.raises(EvohubError, match=r"org/pickled@main has no safetensors weights \(it has pytorch_model.bin\)"):
        pull([("p", ModelRef(repo="org/pickled"))])
    with pytest.raises(EvohubError, match="no such model repo"):
        pull([("q", ModelRef(repo="org/missing"))])


def test_transient_errors_are_retried(hub, monkeypatch):
    from evohub.hub import client as h

    monkeypatch.setattr("time.sleep", lambda s: None)
    _seed_model(hub, "org/flaky", {"config.json": b'{"model_type": "mistral"}'})
    hub.fail_next(2, status=503, path_contains="/api/models/org/flaky")
    info = h.model_info("org/flaky", None)
    assert len(info.sha) == 40
    assert len([r for r in hub.calls("GET", "/api/models/org/flaky") if r.status == 503]) == 2
    hub.fail_next(1, status=404, path_contains="/api/models/org/flaky")  # not transient: raised at once
    with pytest.raises(EvohubError):
        h.model_info("org/flaky", None)


def test_publish_is_one_tagged_commit_with_every_file(hub, finished_run, run_cli, capsys):
    from huggingface_hub import ModelCard

    code, out, err = run_cli("publish", finished_run, "--repo", "me/evo-tiny")
    assert code == 0, err
    commits = [r for r in hub.calls("POST", "/commit/") if r.status == 200]
    assert len(commits) == 1  # one commit holds everything
    files = hub.files("me/evo-tiny")
    expected = {"README.md", "recipe.yaml", "results.json", "fitness.png", "candidates.jsonl.gz", "config.json",
                "generation_config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors.index.json",
                "scores-ps.jsonl.gz"}  # fmt: skip
    assert expected <= set(files) and any(n.startswith("model-") and n.endswith(".safetensors") for n in files)
    repo = hub.repo("me/evo-tiny")
    (tag,) = repo.tags
    assert tag.startswith("evohub-run-") and repo.tags[tag] == repo.branches["main"]
    card = ModelCard(files["README.md"].decode())
    card.validate()  # the Hub's metadata check (the loopback server answers it)
    assert card.data.base_model_relation == "merge" and "evolutionary-model-merge" in card.data.tags
    assert card.data.pipeline_tag == "text-generation"
    # MGSM-JA was measured on the job's local file: the card says so and nothing claims the Hub dataset
    assert card.data.eval_results is None and ".eval_results/evohub.yaml" not in files
    assert "| MGSM-JA acc_ja (local data) |" in files["README.md"].decode()
    # no source declares a licence: the card says unknown and LICENSE lists each source
    assert (card.data.license, card.data.license_name, card.data.license_link) == ("other", "unknown", "LICENSE")
    licence = files["LICENSE"].decode()
    assert "No source declares a licence" in licence and all(
        f"- {n}: unknown" in licence for n in ("base", "one", "two")
    )
    assert "evohub merge recipe.yaml" in files["README.md"].decode()
    # local data stay local unless publish.include_data: the card names the file, no path of this machine
    assert not [n for n in files if n.startswith("data/")]
    assert "`lm-loss` on `fit.jsonl`[train] (a local file)" in files["README.md"].decode()
    # what fitness cost: results.json's totals (CPU-seconds: the run scored on the CPU), stated by the card
    import gzip

    from evohub.evolve.matrix import totals

    cost = json.loads(files["results.json"])["cost"]
    matrix = [json.loads(x) for x in gzip.decompress(files["scores-ps.jsonl.gz"]).decode().splitlines()]
    ledger = totals(matrix)
    assert cost["device"] == "cpu" and cost["total"]["items"] == ledger["items"] > 0
    labelled = {k: v for k, v in ledger.items() if k != "seconds"} | {"cpu_seconds": ledger["seconds"]}
    assert cost["stages"]["ps"] == labelled
    said = f"Evolution scored {ledger['items']:,} fitness items ({ledger['prompt_tokens']:,} prompt tokens) in "
    readme = files["README.md"].decode()
    assert said in readme
    assert " CPU-seconds." in readme and "[`scores-ps.jsonl.gz`](scores-ps.jsonl.gz)" in readme
    from evohub.merging.io import read_header
    from evohub.pipeline.plan import human_count

    params = sum(e.nbytes // 4 for f in (finished_run / "model").glob("*.safetensors") for e in read_header(f).values())
    assert f"of 2 decoder layers, {human_count(params)} parameters" in files["README.md"].decode()  # float32 weights
    assert hub.token not in out + err  # the token never appears
    assert all(hub.token.encode() not in v for v in files.values())
    assert all(r.headers.get("authorization") == f"Bearer {hub.token}" for r in commits)

    # publishing again over a model refuses; to a branch, or with --force, it goes through
    code, _, err = run_cli("publish", finished_run, "--repo", "me/evo-tiny")
    assert code == 2 and "already holds a model" in err and "--revision" in err
    code, _, err = run_cli("publish", finished_run, "--repo", "me/evo-tiny", "--revision", "try-2")
    assert code == 0, err
    assert "try-2" in hub.repo("me/evo-tiny").branches
    code, _, err = run_cli("publish", finished_run, "--repo", "me/evo-tiny", "--force")
    assert code == 0, err


def test_dry_run_prints_files_and_card_and_uploads_nothing(hub, finished_run, run_cli):
    code, out, err = run_cli("publish", finished_run, "--repo", "me/dry", "--dry-run")
    assert code == 0, err
    assert "would publish" in out and "README.md" in out and "base_model_relation: merge" in out
    assert not hub.calls("POST", "/commit/")


def test_run_state_round_trips_through_a_dataset_repo(hub, finished_run, tmp_path):
    from evohub.pipeline.publish import fetch_state, push_state
    from evohub.pipeline.rundir import RunDir

    push_state(RunDir(finished_run), "me/evohub-state-pub")
    assert hub.repo("me/evohub-state-pub", "dataset").private
    got = tmp_path / "again"
    assert fetch_state("me/evohub-state-pub", got)
    for name in (
        "job.yaml",
        "job.lock.yaml",
        "candidates.jsonl",
        "stages/ps/recipe.yaml",
        "stages/ps/checkpoint.json",
        "results.json",
    ):
        assert (got / name).read_bytes() == (finished_run / name).read_bytes(), name
    assert not fetch_state("me/no-such-state", tmp_path / "none")


def test_a_published_run_holds_no_machine_path_and_rebuilds_when_moved(hub, finished_run, tmp_path, run_cli):
    """Every file of the commit names sources as repo@commit or relative paths; the run directory
    moved elsewhere (with its sources) rebuilds its model bit for bit from recipe.yaml."""
    import shutil

    from safetensors.torch import load_file

    code, _, err = run_cli("publish", finished_run, "--repo", "me/no-paths")
    assert code == 0, err
    world = finished_run.parent
    leaks = {
        name: data
        for name, data in hub.files("me/no-paths").items()
        if not name.endswith(".safetensors")
        and any(s.encode() in data for s in (str(world), str(Path.home()), "/tmp/"))
    }
    assert not leaks, {k: v[:300] for k, v in leaks.items()}
    recipe = yaml.safe_load((finished_run / "recipe.yaml").read_text())
    assert all(not Path(m["source"]["path"]).is_absolute() for m in recipe["parameter_space"]["models"])
    moved = tmp_path / "elsewhere" / "world"
    shutil.copytree(world, moved, symlinks=True)
    code, _, err = run_cli("merge", moved / "run" / "recipe.yaml", "--out", tmp_path / "rebuilt", "-q")
    assert code == 0, err
    (a,) = (finished_run / "model").glob("model-*.safetensors")
    (b,) = (tmp_path / "rebuilt").glob("model-*.safetensors")
    left, right = load_file(a), load_file(b)
    assert left.keys() == right.keys() and all(left[k].equal(right[k]) for k in left)
    code, _, err = run_cli("validate", moved / "run" / "job.yaml", moved / "run" / "recipe.yaml")
    assert code == 0, err


def test_verify_rebuilds_a_published_model_and_names_a_tampered_tensor(hub, finished_run, tmp_path, run_cli):
    from huggingface_hub import HfApi

    from evohub.merging.io import read_header

    code, _, err = run_cli("publish", finished_run, "--repo", "me/verify-me")
    assert code == 0, err
    code, out, err = run_cli("verify", "me/verify-me", "--sources-dir", finished_run, "--device", "cpu", "-q")
    assert code == 0, out + err
    assert "verified: the rebuild is identical" in out and "DIFFERENT" not in out
    assert "equal     config.json" in out and "equal     model.safetensors.index.json" in out
    code, out, err = run_cli("verify", "me/verify-me", "--sources-dir", finished_run, "--device", "cpu", "-q",
                             "--eval", "mgsm-ja", "--data", f"mgsm-ja={finished_run.parent / 'mgsm.jsonl'}")  # fmt: skip
    assert code == 0 and "mgsm-ja: acc_ja" in out and "within 1 points" in out, out + err
    # one tensor of the published weights changed: verify fails and names the file and the tensor
    (shard,) = [n for n in hub.files("me/verify-me") if n.endswith(".safetensors")]
    data = bytearray(hub.files("me/verify-me")[shard])
    local = tmp_path / shard
    local.write_bytes(bytes(data))
    entry = read_header(local)["model.norm.weight"]
    data[entry.offset] ^= 0xFF
    HfApi().upload_file(path_or_fileobj=bytes(data), path_in_repo=shard, repo_id="me/verify-me")
    code, out, err = run_cli("verify", "me/verify-me", "--sources-dir", finished_run, "--device", "cpu", "-q")
    assert code == 1 and f"DIFFERENT {shard}  (tensors differ: model.norm.weight)" in out, out + err
    assert "NOT verified" in out


# -- the cost ledger: what fitness cost, in results.json, the card, fitness.png and the commit ------


def _ledger(tokens: bool = True) -> tuple[list[dict], dict[str, list[dict]]]:
    """Hand-built candidates rows and score matrices of a PS-then-DFS run: 2 generations of 2 per
    stage, each candidate one fitness call on 10 items; PS also scored a reference and an audit."""
    cost = {
        "prompt_tokens": 100,
        "longest_tokens": 5,
        "steps": 4,
        "merge_s": 1.0,
        "generate_s": 8.0,
        "score_s": 1.0,
        "seconds": 10.0,
    }
    rows, matrices = [], {"ps": [], "dfs": []}
    for st in ("ps", "dfs"):
        if st == "ps":
            matrices[st].append({"g": -1, "i": "ref", "at": 0, "why": "reference", "items": list(range(10)),
                                 "scores": [0] * 10, "error": None, **cost, "generated_tokens": 7})  # fmt: skip
        for g in range(2):
            for i in range(2):
                gen = 10 ** (g + 1) * (1 if st == "ps" else 100)  # PS 10, 10, 100, 100; DFS 1000, ..., 10000
                fit = 0.1 * g + 0.05 * i + (0.5 if st == "dfs" else 0)
                rows.append({"stage": st, "generation": g, "index": i, "fitness": fit, "error": None,
                             "items": 10, "generated_tokens": gen, **cost} if tokens else
                            {"stage": st, "generation": g, "index": i, "fitness": fit, "error": None, "seconds": 10.0})  # fmt: skip
                matrices[st].append({"g": g, "i": i, "at": g, "why": "fitness", "items": list(range(10)),
                                     "scores": [1] * 10, "error": None, **cost, "generated_tokens": gen})  # fmt: skip
        if st == "ps":
            rows[-1]["full"] = 0.9  # its audit scored it on the whole pool: the curve takes that
            matrices[st].append({"g": 1, "i": 1, "at": 1, "why": "audit", "items": list(range(10, 40)),
                                 "scores": [1] * 30, "error": None, **cost, "generated_tokens": 3})  # fmt: skip
    return rows, matrices


def test_stage_costs_come_from_the_matrix_else_the_checkpoint_else_the_rows():
    from evohub.pipeline.report import summarize

    rows, matrices = _ledger()
    ps = summarize("ps", rows, None, matrix=matrices["ps"]).cost
    # the matrix counts the reference and the audit calls that candidates.jsonl does not
    # (a call's longest answer sums over calls: divided by them, the mean longest answer of a call)
    assert ps == {"calls": 6, "items": 80, "prompt_tokens": 600, "generated_tokens": 230, "longest_tokens": 30,
                  "steps": 24, "merge_s": 6.0, "generate_s": 48.0, "score_s": 6.0, "seconds": 60.0}  # fmt: skip
    kept = {"calls": 5, "items": 70, "prompt_tokens": 500, "generated_tokens": 227, "longest_tokens": 25,
            "steps": 20, "merge_s": 5.0, "generate_s": 40.0, "score_s": 5.0, "seconds": 50.0}  # fmt: skip
    assert summarize("ps", rows, None, checkpoint={"generation": 2, "cost": kept}).cost == kept
    from_rows = summarize("dfs", rows, None).cost  # no matrix, no checkpoint: the rows summed
    assert from_rows["items"] == 40 and from_rows["generated_tokens"] == 22000 and from_rows["seconds"] == 40.0
    assert summarize("ps", _ledger(tokens=False)[0], None).cost is None  # an older run recorded none
    validation = [{"generation": 1, "index": 1, "fitness": 0.15, "validation": 0.2, "items": 5, "prompt_tokens": 50,
                   "generated_tokens": 9, "seconds": 2.5}]  # fmt: skip
    s = summarize("ps", rows, validation, matrix=matrices["ps"])
    assert s.validation == 0.2 and s.validation_cost["items"] == 5 and s.validation_cost["seconds"] == 2.5


def test_results_cost_is_labelled_by_device_and_the_card_states_the_totals():
    from evohub.pipeline.publish import cost_line
    from evohub.pipeline.report import run_cost, summarize

    rows, matrices = _ledger()
    valid = [{"generation": 1, "index": 1, "fitness": 0.65, "validation": 0.6, "items": 5, "prompt_tokens": 50,
              "generated_tokens": 9, "seconds": 400.0}]  # fmt: skip
    stages = [summarize("ps", rows, None, matrix=matrices["ps"]), summarize("dfs", rows, valid, matrix=matrices["dfs"])]
    cost = run_cost(stages, "cuda:0")
    assert set(cost) == {"device", "stages", "total"} and set(cost["stages"]) == {"ps", "dfs"}
    assert cost["stages"]["ps"]["gpu_seconds"] == 60.0 and "seconds" not in cost["stages"]["ps"]
    assert cost["total"] | {"validation": None} == {
        "calls": 10, "items": 120, "prompt_tokens": 1000, "generated_tokens": 22230, "longest_tokens": 50,
        "steps": 40, "merge_s": 10.0, "generate_s": 80.0, "score_s": 10.0, "gpu_seconds": 100.0, "validation": None}  # fmt: skip
    assert cost["total"]["validation"]["gpu_seconds"] == 400.0 and cost["stages"]["dfs"]["validation"]["items"] == 5
    assert json.loads(json.dumps(cost)) == cost  # results.json holds it as is
    assert "cpu_seconds" in run_cost(stages, "cpu")["total"]
    assert run_cost([summarize("ps", _ledger(tokens=False)[0], None)], "cpu") is None  # an older run: no cost
    assert cost_line(cost) == (
        "Evolution scored 120 fitness items (1,000 prompt and 22,230 generated tokens) in 100 GPU-seconds "
        "(PS 60, DFS 40). Choosing each stage's winner on the validation split scored 5 more items in "
        "0.11 GPU-hours."
    )
    hours = {**cost, "stages": {"ps": cost["stages"]["ps"] | {"gpu_seconds": 1368.0}, "dfs": cost["stages"]["dfs"] |
             {"gpu_seconds": 108.0}}, "total": {**cost["total"], "gpu_seconds": 1476.0, "validation": None}}  # fmt: skip
    assert "in 0.41 GPU-hours (PS 0.38, DFS 0.03)." in cost_line(hours)
    assert " CPU-seconds (PS 60, DFS 40)" in cost_line(run_cost(stages, "cpu"))
    assert cost_line(None) is None


def test_fitness_png_has_a_tokens_panel_when_the_run_counted_tokens(tmp_path):
    from PIL import Image

    from evohub.pipeline.report import plot_fitness, token_curves

    rows, matrices = _ledger()
    curves = token_curves(rows, ["ps", "dfs"], matrices)
    (_, psx, psy, ps_end), (_, dfsx, dfsy, dfs_end) = curves
    # one point per call in file order, the x-axis running on across stages; a candidate counts
    # from its call, its full-set score (0.9) over its estimate
    # (the reference call before them adds its tokens, but no point: nothing is best yet)
    assert psx == [17, 27, 127, 227, 230] and psy == [0.0, 0.05, 0.1, 0.9, 0.9], (psx, psy)
    assert ps_end == 230 and dfsx[0] == 1230 and dfs_end == 22230 and dfsy == [0.5, 0.55, 0.6, 0.65]
    # no matrix: each candidates row's own count
    assert token_curves(rows, ["ps", "dfs"])[0][1] == [10, 20, 120, 220]
    assert token_curves(_ledger(tokens=False)[0], ["ps", "dfs"]) is None
    two, one = tmp_path / "two.png", tmp_path / "one.png"
    plot_fitness(rows, two, ["ps", "dfs"], matrices)
    plot_fitness(_ledger(tokens=False)[0], one, ["ps", "dfs"])  # an older run keeps the one panel
    (w2, h2), (w1, h1) = Image.open(two).size, Image.open(one).size
    assert h2 == h1 and w2 > 1.5 * w1, ((w2, h2), (w1, h1))


def test_the_published_files_carry_each_stage_score_matrix_gzipped(tmp_path):
    import gzip

    from evohub.pipeline.publish import publish_files, score_files
    from evohub.pipeline.rundir import RunDir

    run = RunDir(tmp_path / "run")
    (run.model_dir).mkdir(parents=True)
    (run.model_dir / "config.json").write_text("{}")
    run.log_path.write_text('{"stage": "ps"}\n')
    assert "scores-ps.jsonl.gz" not in publish_files(run, "card", {})  # no matrix: nothing to carry
    _, matrices = _ledger()
    run.scores_path("ps").parent.mkdir(parents=True)
    run.scores_path("ps").write_text("".join(json.dumps(r) + "\n" for r in matrices["ps"]))
    files = publish_files(run, "card", {})
    assert list(score_files(run)) == ["scores-ps.jsonl.gz"] and "scores-dfs.jsonl.gz" not in files
    assert gzip.decompress(files["scores-ps.jsonl.gz"]) == run.scores_path("ps").read_bytes()
    again = publish_files(run, "card", {})["scores-ps.jsonl.gz"]
    assert files["scores-ps.jsonl.gz"] == again  # mtime 0: the same bytes
    assert run.score_rows("ps") == matrices["ps"]


def test_an_audited_stages_best_fitness_is_its_best_full_set_score():
    """A cheap estimator's fitness is an estimate (a 24-item minibatch can score 1.0): the summary's
    best is the best full-set score its audits found (the checkpoint's ``audited``)."""
    from evohub.pipeline.report import summarize

    rows = [{"stage": "ps", "generation": 0, "index": k, "fitness": f} for k, f in enumerate((1.0, 0.75, 0.5))]
    checkpoint = {"generation": 1, "estimator": "minibatch", "audited": {"0/0": 0.61, "0/1": 0.66}}
    assert summarize("ps", rows, None, checkpoint).best_fitness == 0.66
    assert summarize("ps", rows, None, {"generation": 1, "estimator": "full"}).best_fitness == 1.0
