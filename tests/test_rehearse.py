"""`evohub rehearse`: the recorded snapshots carry the real repos' quirks, the stand-ins built from
them reproduce those quirks on the local Hub (the real client meets them as it would the Hub),
and the job, made tiny, is checked against them. The whole rehearsal of every shipped job runs in
.ci/run (`evohub rehearse jobs/<job>.yaml`), not here: a minute or two each."""

from __future__ import annotations

import time
from pathlib import Path

import hubserver
import pytest

from evohub.local import standins
from evohub.local.rehearse import job_repos, published_findings, tiny_job
from evohub.local.snapshot import SNAPSHOTS, load_snapshot, read_snapshot
from evohub.spec import load_job

hub = hubserver.hub  # the fixture


def _standins(hub, repos) -> None:
    """Publish the stand-ins of ``repos`` ((repo, kind) pairs) on the test Hub."""
    for repo, kind in repos:
        standins.publish(hub, load_snapshot(repo, kind))


JOBS = sorted(Path(__file__).parents[1].joinpath("jobs").glob("evo*.yaml"))


def test_every_snapshot_is_valid_and_names_its_sources():
    paths = sorted(SNAPSHOTS.glob("*/*.yaml"))
    assert len(paths) >= 14
    for p in paths:
        snap = read_snapshot(p)
        assert p.name == f"{snap.repo.replace('/', '--')}.yaml" and p.parent.name == f"{snap.kind}s"
        assert snap.notes and all(n.source for n in snap.notes), p


def test_snapshots_cover_the_quirks_of_the_shipped_jobs():
    wiz, abel = load_snapshot("WizardLMTeam/WizardMath-7B-V1.1", "model"), load_snapshot("GAIR/Abel-7B-002", "model")
    assert wiz.weight_files() == ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
    assert load_snapshot("WizardLM/WizardMath-7B-V1.1", "model").repo == wiz.repo  # found by its old name
    assert abel.config["vocab_size"] == abel.tokenizer.size == 32032 and abel.config["torch_dtype"] == "float32"
    assert not any(f.endswith(".safetensors") for f in abel.files)
    llava = load_snapshot("llava-hf/llava-v1.6-mistral-7b-hf", "model")
    assert llava.config["text_config"]["vocab_size"] == 32064 and llava.tokenizer.added[32000] == "<image>"
    assert load_snapshot("mistralai/Mistral-7B-v0.1", "model").gated
    gsm = load_snapshot("SakanaAI/gsm8k-ja-test_250-1319", "dataset")
    assert [f for f in gsm.files if f.endswith(".jsonl")] == ["gsm8k-ja-test_250-1319.jsonl"]
    jglue = load_snapshot("Rakuten/JGLUE", "dataset")
    assert set(jglue.files) == {".gitattributes", "JGLUE.py", "README.md"} and not jglue.parquet
    mgsm = load_snapshot("juletxara/mgsm", "dataset")
    assert (
        "mgsm.py" in mgsm.files and mgsm.parquet == ("ja",) and mgsm.configs["ja"].splits == {"train": 8, "test": 250}
    )
    assert load_snapshot("SakanaAI/JA-VG-VQA-500", "dataset").configs["default"].splits == {"test": 500, "train": 1000}


@pytest.mark.parametrize("job", JOBS, ids=lambda p: p.stem)
def test_every_shipped_job_has_snapshots_of_all_it_reads(job):
    spec = load_job(job)
    repos = job_repos(spec)
    assert {(r.repo, "model") for _, r in spec.models() if r.repo} <= set(repos)  # base, sources, LoRAs
    judge = spec.judge_model()
    assert judge is None or (judge.repo, "model") in repos  # an image judge's model too
    for repo, kind in repos:
        snap = load_snapshot(repo, kind)
        for _, ref in spec.models():
            if ref.repo == snap.repo and ref.revision:  # a pinned commit is the snapshot's
                assert ref.revision == snap.revision


def test_tiny_job_keeps_the_job_but_its_sizes():
    spec = load_job(Path("jobs/evollm-jp-10b.yaml"))
    tiny, notes = tiny_job(spec, vllm=False)
    assert tiny.sources == spec.sources and tiny.fitness.data == spec.fitness.data
    assert tiny.fitness.validation == spec.fitness.validation and tiny.evaluation.suites == spec.evaluation.suites
    assert tiny.parameter_space.optimizer.max_evals == 8 and tiny.data_flow_space.optimizer.generations == 2
    assert tiny.fitness.minibatch == 4 and tiny.fitness.backend == "hf" and notes
    assert tiny_job(spec, vllm=True)[0].fitness.backend == "vllm"


def test_standins_reproduce_the_quirks_on_the_local_hub(hub, tmp_path):
    import datasets
    import transformers
    from huggingface_hub import HfApi

    from evohub.errors import HubError
    from evohub.hub import client
    from evohub.score.data import load_rows
    from evohub.spec import DataRef

    _standins(hub, [("WizardLMTeam/WizardMath-7B-V1.1", "model"), ("llava-hf/llava-v1.6-mistral-7b-hf", "model"),
                       ("mistralai/Mistral-7B-v0.1", "model"), ("juletxara/mgsm", "dataset")])  # fmt: skip
    wiz = load_snapshot("WizardLMTeam/WizardMath-7B-V1.1", "model")
    assert set(hub.files(wiz.repo)) == set(wiz.files)  # the real file names, shards and all
    assert HfApi().model_info("WizardLM/WizardMath-7B-V1.1").id == wiz.repo  # the old id redirects
    with pytest.raises(HubError, match="no safetensors"):
        client.snapshot(wiz.repo, None)
    tok = transformers.AutoTokenizer.from_pretrained("llava-hf/llava-v1.6-mistral-7b-hf")
    assert len(tok) == 32002 and tok.convert_tokens_to_ids("<image>") == 32000
    transformers.AutoProcessor.from_pretrained("llava-hf/llava-v1.6-mistral-7b-hf")  # its chat_template.json too
    assert hub.repo("llava-hf/llava-v1.6-mistral-7b-hf").resolve("216670a16460adb7c41ce3e123ceb3859f73ab12")
    hub.repo("mistralai/Mistral-7B-v0.1").granted = False
    with pytest.raises(HubError, match="gated"):
        client.check_access("mistralai/Mistral-7B-v0.1")
    # a loading script beside data files: datasets refuses the repo; evohub reads the parquet conversion
    with pytest.raises(RuntimeError, match="scripts are no longer supported"):
        datasets.load_dataset("juletxara/mgsm", "ja", split="test")
    rows = load_rows(DataRef(repo="juletxara/mgsm", config="ja", split="test"))
    assert len(rows) == 250 and isinstance(rows[0]["answer_number"], int)


def test_validate_strict_on_standins_names_each_quirk_in_seconds(hub, tmp_path):
    from evohub.spec.load import check_remote

    _standins(hub, [("mistralai/Mistral-7B-v0.1", "model"), ("WizardLMTeam/WizardMath-7B-V1.1", "model"),
                       ("GAIR/Abel-7B-002", "model"), ("SakanaAI/gsm8k-ja-test_250-1319", "dataset"),
                       ("Rakuten/JGLUE", "dataset")])  # fmt: skip
    job = tmp_path / "job.yaml"
    job.write_text(Path("jobs/evollm-jp.yaml").read_text()
                   .replace("WizardLMTeam/WizardMath-7B-V1.1, weights: pickle", "WizardLM/WizardMath-7B-V1.1")
                   .replace("vocab: base ", "vocab: null ")
                   .replace("split: test}", "split: train}"))  # fmt: skip
    start = time.perf_counter()
    lines = check_remote(load_job(job), job)
    took = time.perf_counter() - start
    text = "\n".join(lines)
    assert "WizardLM/WizardMath-7B-V1.1 was renamed to WizardLMTeam/WizardMath-7B-V1.1" in text
    assert "has no safetensors weights (it has pytorch_model-00001-of-00002.bin" in text
    assert (
        "'train' not in SakanaAI/gsm8k-ja-test_250-1319@964859c892f49b8ec5b4b6dd2401169739c7458d (splits: test)" in text
    )
    assert "vocab_size 32032 differs from the base model's 32000" in text
    assert took < 5, took
    assert not hub.calls("GET", ".bin") and not hub.calls("GET", ".jsonl")  # metadata only


def test_lmeval_tasks_behind_a_script_read_the_conversion_or_say_why_not(hub):
    from evohub.score.lmeval import hub_access

    for repo in ("juletxara/mgsm", "Rakuten/JGLUE", "mkshing/xlsum_ja"):
        standins.publish(hub, load_snapshot(repo, "dataset"))
    assert hub_access("juletxara/mgsm", "ja") == ({"revision": "refs/convert/parquet", "data_dir": "ja"}, None)
    kwargs, reason = hub_access("Rakuten/JGLUE", "JNLI")
    assert kwargs is None and "loading script (JGLUE.py) and has no parquet conversion" in reason
    assert hub_access("mkshing/xlsum_ja", None) == (None, None)  # plain CSV files: as lm-eval's YAML says


def test_published_findings_name_machine_paths_and_missing_licences(hub):
    hub.commit("me/m", {"README.md": b"---\nlicense: other\n---\n", "recipe.yaml": b"base: /home/ci/models/x\n"})
    found = published_findings(hub, "me/m")
    assert any("recipe.yaml holds a machine path: /home/ci" in f for f in found)
    assert any("licence 'other' without license_name" in f for f in found)
    hub.commit("me/ok", {"README.md": b"---\nlicense: apache-2.0\n---\nsee models/x\n"})
    assert published_findings(hub, "me/ok") == []


def test_live_recording_reads_back_what_the_snapshots_hold(hub):
    """`rehearse --live` on a Hub holding the stand-ins records the same metadata (metadata
    requests and footers only: no weights, no rows)."""
    from evohub.local.snapshot import record

    cases = [("WizardLMTeam/WizardMath-7B-V1.1", "model"), ("llava-hf/llava-v1.6-mistral-7b-hf", "model"),
             ("juletxara/mgsm", "dataset"), ("SakanaAI/JA-VG-VQA-500", "dataset"),
             ("SakanaAI/gsm8k-ja-test_250-1319", "dataset")]  # fmt: skip
    for repo, kind in cases:
        standins.publish(hub, load_snapshot(repo, kind))
    wiz = record("WizardLM/WizardMath-7B-V1.1", "model")  # the old id: found renamed
    assert wiz.repo == "WizardLMTeam/WizardMath-7B-V1.1" and wiz.renamed_from == ("WizardLM/WizardMath-7B-V1.1",)
    assert wiz.weight_files() == load_snapshot(wiz.repo, "model").weight_files()
    llava = record("llava-hf/llava-v1.6-mistral-7b-hf", "model", "216670a16460adb7c41ce3e123ceb3859f73ab12")
    assert llava.revision == "216670a16460adb7c41ce3e123ceb3859f73ab12"
    assert llava.text_config()["vocab_size"] == 32064 and llava.tokenizer.size == 32002
    assert llava.tokenizer.added[32000] == "<image>" and llava.tokenizer.image_token == "<image>"
    hub.requests.clear()
    for repo in ("juletxara/mgsm", "SakanaAI/JA-VG-VQA-500", "SakanaAI/gsm8k-ja-test_250-1319"):
        want, got = load_snapshot(repo, "dataset"), record(repo, "dataset")
        assert got.parquet == want.parquet or not want.parquet, repo
        for config, c in want.configs.items():
            assert got.configs[config].splits == c.splits, repo
            assert got.configs[config].features == c.features, repo
    assert record("SakanaAI/gsm8k-ja-test_250-1319", "dataset").configs["default"].files == {
        "gsm8k-ja-test_250-1319.jsonl": "test"}  # fmt: skip
    ranged = [r for r in hub.requests if r.method == "GET" and "resolve" in r.path and ".parquet" in r.path]
    assert ranged and all("range" in r.headers for r in ranged)  # footers only
    assert not any(r.method == "GET" and r.path.split("?")[0].endswith(".jsonl") for r in hub.requests)


def test_a_new_run_checks_its_hub_references_before_downloading_anything(hub, tmp_path):
    import evohub
    from evohub.errors import SpecError

    _standins(hub, [("mistralai/Mistral-7B-v0.1", "model"), ("augmxnt/shisa-gamma-7b-v1", "model"),
                       ("WizardLMTeam/WizardMath-7B-V1.1", "model"), ("GAIR/Abel-7B-002", "model"),
                       ("SakanaAI/gsm8k-ja-test_250-1319", "dataset")])  # fmt: skip
    job = tmp_path / "job.yaml"
    job.write_text(Path("jobs/evollm-jp.yaml").read_text().replace("split: test}", "split: train}"))
    with pytest.raises(SpecError, match=r"job.yaml:\d+: fitness.data.split: 'train' not in SakanaAI/gsm8k"):
        evohub.run(job, tmp_path / "run", device="cpu", progress=False)
    assert not hub.calls("GET", ".bin") and not hub.calls("GET", ".safetensors")
    assert not (tmp_path / "run").exists()
