"""The fake Hub in hubserver.py, driven through the real huggingface_hub client."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path

import hubserver
import pytest
from hubserver import HEX40, FakeHub
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

hub = hubserver.hub  # the fixture
# the client's LFS PUT passes a file object as data=, which httpx2 deprecates
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>'.*:DeprecationWarning")

REPO = "evo/tiny"
CONFIG = json.dumps({"model_type": "mistral", "num_hidden_layers": 2}).encode()
WEIGHTS = random.Random(0).randbytes(1_500_000)  # ~1.5 MB, LFS by name and by size


def _api(hub: FakeHub) -> HfApi:
    return HfApi(endpoint=hub.url, token=hub.token)


def _folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


@pytest.fixture
def model(hub: FakeHub, tmp_path: Path) -> str:
    """REPO with config.json and model.safetensors uploaded by upload_folder in one commit."""
    api = _api(hub)
    url = api.create_repo(REPO, exist_ok=True)
    assert url.repo_id == REPO
    folder = _folder(tmp_path / "up", {"config.json": CONFIG, "model.safetensors": WEIGHTS})
    info = api.upload_folder(repo_id=REPO, folder_path=folder, commit_message="weights")
    return info.oid


def test_upload_folder_makes_one_commit_with_regular_and_lfs_files(hub: FakeHub, model: str):
    repo = hub.repo(REPO)
    assert HEX40.fullmatch(model) and repo.branches["main"] == model
    assert len(hub.calls("POST", "/commit/")) == 1
    assert len(repo.commits) == 2  # the repo's initial commit + ours
    commit = repo.commits[model]
    assert repo.commits[commit.parent].files == {".gitattributes": hubserver.GITATTRIBUTES}
    assert commit.files == {
        ".gitattributes": hubserver.GITATTRIBUTES,
        "config.json": CONFIG,
        "model.safetensors": WEIGHTS,
    }
    assert commit.lfs == {"model.safetensors"} and commit.title == "weights"
    # config.json went inline (base64) in the NDJSON payload, the weights through LFS batch + PUT
    ops = [json.loads(x) for x in hub.calls("POST", "/commit/")[0].body.splitlines()]
    assert sorted(op["key"] for op in ops) == ["file", "header", "lfsFile"]
    assert len(hub.calls("POST", "/info/lfs/objects/batch")) == 1
    (put,) = hub.calls("PUT", "/lfs-upload/")
    assert put.body == WEIGHTS and hashlib.sha256(WEIGHTS).hexdigest() in put.path
    # every Hub call carried the token (the presigned LFS upload URL needs none)
    for r in hub.requests:
        if "/lfs-upload/" not in r.path:
            assert r.headers.get("authorization") == f"Bearer {hub.token}", r.path


def test_download_at_branch_tag_and_sha(hub: FakeHub, model: str, tmp_path: Path):
    api = _api(hub)
    api.create_tag(REPO, tag="v1", revision=model, tag_message="first weights")
    assert hub.repo(REPO).tags == {"v1": model} and hub.repo(REPO).tag_messages == {"v1": "first weights"}
    # implicit endpoint + token (what evohub.hub does), then explicit ones with fresh caches
    path = hf_hub_download(REPO, "model.safetensors")
    assert Path(path).read_bytes() == WEIGHTS and Path(path).parent.name == model
    for rev in ("main", "v1", model):
        cache = tmp_path / f"cache-{rev[:8]}"
        for name, data in (("config.json", CONFIG), ("model.safetensors", WEIGHTS)):
            got = hf_hub_download(REPO, name, revision=rev, endpoint=hub.url, cache_dir=cache)
            assert Path(got).read_bytes() == data
    heads = hub.calls("HEAD", "/resolve/")
    assert all(r.status == 200 for r in heads) and len(hub.calls("GET", "/resolve/")) == 7


def test_snapshot_download_with_allow_patterns(hub: FakeHub, model: str, tmp_path: Path):
    only_json = Path(snapshot_download(REPO, allow_patterns=["*.json"], cache_dir=tmp_path / "a"))
    assert only_json.name == model
    assert sorted(p.name for p in only_json.iterdir()) == ["config.json"]
    both = Path(
        snapshot_download(
            REPO,
            revision="main",
            endpoint=hub.url,
            cache_dir=tmp_path / "b",
            allow_patterns=["*.json", "*.safetensors"],
        )
    )
    assert (both / "model.safetensors").read_bytes() == WEIGHTS
    assert sorted(p.name for p in both.iterdir()) == ["config.json", "model.safetensors"]


def test_model_info_card_and_siblings(hub: FakeHub, model: str):
    api = _api(hub)
    readme = b"---\nlicense: apache-2.0\ntags:\n- merge\n- evolutionary\n---\n# Tiny\n"
    card = api.upload_file(path_or_fileobj=readme, path_in_repo="README.md", repo_id=REPO)
    info = api.model_info(REPO)
    assert info.id == REPO and info.sha == card.oid and info.private is False
    assert info.card_data["license"] == "apache-2.0" and info.tags == ["merge", "evolutionary"]
    assert info.last_modified is not None
    names = {s.rfilename for s in info.siblings}
    assert names == {".gitattributes", "README.md", "config.json", "model.safetensors"}
    old = api.model_info(REPO, revision=model, files_metadata=True)
    assert old.sha == model and old.card_data is None
    (weights,) = [s for s in old.siblings if s.rfilename == "model.safetensors"]
    assert weights.lfs.sha256 == hashlib.sha256(WEIGHTS).hexdigest() and weights.size == len(WEIGHTS)


def test_branches_tags_refs_and_trees(hub: FakeHub, model: str, tmp_path: Path):
    api = _api(hub)
    api.create_branch(REPO, branch="dev", revision=model)
    api.create_branch(REPO, branch="dev", exist_ok=True)
    api.create_tag(REPO, tag="v1", revision="main")
    info = api.upload_file(
        path_or_fileobj=b"step 1\n", path_in_repo="logs/run/a.txt", repo_id=REPO, revision="dev", commit_message="log"
    )
    refs = api.list_repo_refs(REPO)
    assert {b.name: b.target_commit for b in refs.branches} == {"main": model, "dev": info.oid}
    assert [(t.name, t.ref, t.target_commit) for t in refs.tags] == [("v1", "refs/tags/v1", model)]
    assert hub.repo(REPO).commits[info.oid].parent == model
    assert hub.repo(REPO).tag_messages == {"v1": ""}
    assert "logs/run/a.txt" in api.list_repo_files(REPO, revision="dev")
    assert "logs/run/a.txt" not in api.list_repo_files(REPO)
    tree = {e.path: type(e).__name__ for e in api.list_repo_tree(REPO, revision="dev", recursive=True)}
    assert tree["logs"] == tree["logs/run"] == "RepoFolder" and tree["logs/run/a.txt"] == "RepoFile"
    top = [e.path for e in api.list_repo_tree(REPO, revision="dev")]
    assert "logs" in top and "logs/run" not in top
    assert [e.path for e in api.list_repo_tree(REPO, "logs", revision="dev")] == ["logs/run"]
    got = hf_hub_download(REPO, "logs/run/a.txt", revision="dev", cache_dir=tmp_path / "c")
    assert Path(got).read_bytes() == b"step 1\n"
    api.create_branch(REPO, branch="exp/a", revision="dev")  # a "/" travels URL-quoted
    api.upload_file(path_or_fileobj=b"b", path_in_repo="b.txt", repo_id=REPO, revision="exp/a")
    got = hf_hub_download(REPO, "logs/run/a.txt", revision="exp/a", cache_dir=tmp_path / "c")
    assert Path(got).read_bytes() == b"step 1\n" and hub.files(REPO, "exp/a")["b.txt"] == b"b"
    assert [c.commit_id for c in api.list_repo_commits(REPO, revision="dev")][:2] == [info.oid, model]
    assert api.repo_exists(REPO) and not api.repo_exists("evo/nope")
    assert api.file_exists(REPO, "config.json") and not api.file_exists(REPO, "nope.json")
    assert api.revision_exists(REPO, "v1") and not api.revision_exists(REPO, "v2")
    # an unchanged file is skipped by the client: no new commit
    api.upload_file(path_or_fileobj=CONFIG, path_in_repo="config.json", repo_id=REPO)
    assert hub.repo(REPO).branches["main"] == model


def test_dataset_repo(hub: FakeHub, tmp_path: Path):
    api = _api(hub)
    api.create_repo("evo/data", repo_type="dataset", private=True)
    rows = b'{"q": "1+1", "a": "2"}\n'
    folder = _folder(tmp_path / "d", {"train.jsonl": rows, "raw/train.jsonl.gz": b"\x1f\x8b..."})
    info = api.upload_folder(repo_id="evo/data", repo_type="dataset", folder_path=folder)
    assert hub.repo("evo/data", "dataset").commits[info.oid].lfs == {"raw/train.jsonl.gz"}
    assert ("model", "evo/data") not in hub.repos and api.dataset_info("evo/data").private is True
    got = hf_hub_download("evo/data", "train.jsonl", repo_type="dataset", cache_dir=tmp_path / "c")
    assert Path(got).read_bytes() == rows
    snap = snapshot_download("evo/data", repo_type="dataset", revision=info.oid, cache_dir=tmp_path / "s")
    assert (Path(snap) / "raw/train.jsonl.gz").read_bytes() == b"\x1f\x8b..."
    assert api.dataset_info("evo/data").sha == info.oid
    with pytest.raises(RepositoryNotFoundError):  # private: invisible without the token
        HfApi(endpoint=hub.url, token=False).dataset_info("evo/data")
    with pytest.raises(RepositoryNotFoundError):  # the dataset is not a model
        api.model_info("evo/data")


def test_not_found_errors_map_to_client_classes(hub: FakeHub, model: str, tmp_path: Path):
    api = _api(hub)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("evo/missing", "config.json", cache_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="no-such-branch", cache_dir=tmp_path)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "tokenizer.json", cache_dir=tmp_path)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("evo/missing")
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO, revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        snapshot_download(REPO, revision="no-such-branch", cache_dir=tmp_path)
    with pytest.raises(HfHubHTTPError) as e:  # writes need the token
        HfApi(endpoint=hub.url, token=False).create_repo("evo/other")
    assert e.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as e:
        api.create_repo(REPO)  # exists, and no exist_ok
    assert e.value.response.status_code == 409


def test_503_on_metadata_head_is_retried(hub: FakeHub, model: str, tmp_path: Path):
    # hf_hub_download's first HEAD does not retry, but when it fails with a retryable status and
    # nothing is cached it makes a second HEAD with retries on (file_download.py), without sleeping.
    hub.fail_next(1, status=503, path_contains="/resolve/main/config.json", method="HEAD")
    assert Path(hf_hub_download(REPO, "config.json", cache_dir=tmp_path)).read_bytes() == CONFIG
    assert [r.status for r in hub.calls("HEAD", "/resolve/")] == [503, 200]


def test_503_on_download_get_is_not_retried(hub: FakeHub, model: str, tmp_path: Path):
    # http_get only retries 408/429 and connection errors, so a 503 on the GET surfaces.
    hub.fail_next(1, status=503, path_contains="/resolve/", method="GET")
    with pytest.raises(HfHubHTTPError) as e:
        hf_hub_download(REPO, "config.json", cache_dir=tmp_path)
    assert e.value.response.status_code == 503
    assert Path(hf_hub_download(REPO, "config.json", cache_dir=tmp_path)).read_bytes() == CONFIG


def test_503_on_commit_is_not_retried_and_commits_nothing(hub: FakeHub, model: str):
    api = _api(hub)
    hub.fail_next(1, status=503, path_contains="/commit/")
    with pytest.raises(HfHubHTTPError) as e:
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO)
    assert e.value.response.status_code == 503 and hub.repo(REPO).branches["main"] == model
    api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO)
    assert hub.files(REPO)["x.txt"] == b"x"


def test_seeded_repo_and_subprocess_client(hub: FakeHub, tmp_path: Path):
    """hub.commit() seeds a repo; a subprocess client finds the hub through the environment."""
    seeded = hub.commit("evo/seeded", {"config.json": CONFIG})
    code = (
        "import sys, huggingface_hub as h;"
        "p = h.hf_hub_download('evo/seeded', 'config.json');"
        "print(open(p).read()); print(p)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text, path = out.stdout.strip().splitlines()
    assert text == CONFIG.decode() and seeded.sha in path and path.startswith(str(tmp_path))
