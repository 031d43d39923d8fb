"""Every huggingface_hub call evohub makes goes through this module.

    >>> cfg = fetch_config(ModelRef(repo="mistralai/Mistral-7B-v0.1"))   # doctest: +SKIP
    >>> cfg["num_hidden_layers"]
    32

Errors become one-line :class:`~evohub.errors.EvohubError` messages that name the repo and say
what to do; the token (from the environment or the HF cache) never appears in them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from evohub.errors import EvohubError
from evohub.spec import ModelRef

#: What a merge needs from a model repo: weights (safetensors only), configs, tokenizer files.
MODEL_PATTERNS = ["*.safetensors", "*.json", "tokenizer.model", "*.txt", "*.jinja"]


class HubError(EvohubError):
    """A Hub request failed in a way the user can fix (missing repo, gated, offline, ...)."""


def _explain(ref: ModelRef, filename: str, e: Exception) -> HubError:
    from huggingface_hub import errors as hf_errors

    where = f"{ref.repo}@{ref.revision or 'main'}"
    if isinstance(e, hf_errors.GatedRepoError):
        return HubError(f"{where} is gated: accept its terms on the Hub and log in (hf auth login)")
    if isinstance(e, hf_errors.RepositoryNotFoundError):
        return HubError(f"{where}: no such model repo (or it is private and you are not logged in)")
    if isinstance(e, hf_errors.RevisionNotFoundError):
        return HubError(f"{where}: no such branch, tag or commit")
    if isinstance(e, hf_errors.LocalEntryNotFoundError):  # before EntryNotFoundError, its parent
        return HubError(f"{where}: {filename} is not in the local HF cache and the Hub cannot be reached (offline?)")
    if isinstance(e, hf_errors.EntryNotFoundError):
        return HubError(f"{where} has no {filename}")
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return HubError(f"{where}: cannot fetch {filename}: {msg}")


def fetch_config(ref: ModelRef) -> dict:
    """config.json of a local directory or a Hub model (downloaded into the HF cache)."""
    if ref.path is not None:
        path = Path(ref.path) / "config.json"
    else:
        from huggingface_hub import hf_hub_download

        try:
            path = Path(hf_hub_download(ref.repo, "config.json", revision=ref.revision))  # type: ignore[arg-type]
        except Exception as e:  # huggingface_hub raises several families; all become one line
            raise _explain(ref, "config.json", e) from e
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise EvohubError(f"{path}: no config.json; is {ref.display()} a transformers model directory?") from e
    except ValueError as e:
        raise EvohubError(f"{path}: not valid JSON: {e}") from e


def with_retries(call, *args, attempts: int = 4, delay: float = 1.0, **kwargs):
    """``call(*args, **kwargs)``, retried with exponential backoff on transient Hub errors
    (HTTP 429 and 5xx, dropped connections, timeouts); other errors are raised at once."""
    import time

    from huggingface_hub.errors import HfHubHTTPError

    for attempt in range(attempts):
        try:
            return call(*args, **kwargs)
        except HfHubHTTPError as e:
            status = getattr(e.response, "status_code", None)
            if attempt == attempts - 1 or not (status == 429 or (status is not None and status >= 500)):
                raise
        except (ConnectionError, TimeoutError, OSError) as e:
            if attempt == attempts - 1 or isinstance(e, FileNotFoundError | PermissionError):
                raise
        time.sleep(delay * 2**attempt)
    raise AssertionError("unreachable")


def _api():
    from huggingface_hub import HfApi

    return HfApi()  # the token comes from HF_TOKEN or the HF cache, never from evohub's arguments


def model_info(ref: ModelRef, files: bool = False):
    """The Hub's model_info for ``ref`` (commit sha, card data, files with sizes if ``files``)."""
    try:
        return with_retries(_api().model_info, ref.repo, revision=ref.revision, files_metadata=files)
    except Exception as e:
        raise _explain(ref, "model info", e) from e


def model_license(ref: ModelRef) -> str | None:
    """The license a model's card declares (a local model: its README.md front matter)."""
    if ref.path is not None:
        readme = Path(ref.path) / "README.md"
        if not readme.exists():
            return None
        from huggingface_hub import ModelCard

        return ModelCard.load(readme).data.license
    data = model_info(ref).card_data
    return getattr(data, "license", None) if data is not None else None


def _check_disk(ref: ModelRef, info, target: Path) -> None:
    import fnmatch
    import shutil

    need = sum(
        (f.size or 0)
        for f in info.siblings or []
        if any(fnmatch.fnmatch(f.rfilename, p) for p in MODEL_PATTERNS) and f.size
    )
    target.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(target).free
    if need > free:
        raise HubError(
            f"{ref.repo}@{ref.revision or 'main'} needs {need / 1e9:.1f} GB but {target} has {free / 1e9:.1f} GB free; "
            "free space or set HF_HOME to a larger disk"
        )


def snapshot(ref: ModelRef) -> Path:
    """Local directory of a model: its ``path``, or a Hub snapshot (safetensors + configs only).

    Hub models are pinned to the commit their revision resolves to; a repository with only
    pickle weights is refused; the free disk is checked before downloading.
    """
    if ref.path is not None:
        return Path(ref.path)
    from huggingface_hub import constants, snapshot_download

    if not constants.HF_HUB_OFFLINE:
        info = model_info(ref, files=True)
        names = [f.rfilename for f in info.siblings or []]
        if not any(n.endswith(".safetensors") for n in names):
            pickles = [n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt"))]
            detail = f" (it has {', '.join(pickles[:3])})" if pickles else ""
            raise HubError(
                f"{ref.repo}@{ref.revision or 'main'} has no safetensors weights{detail}; evohub never loads pickle "
                "checkpoints: pick a revision with safetensors or convert the model"
            )
        _check_disk(ref, info, Path(constants.HF_HUB_CACHE))
        ref = ModelRef.model_construct(repo=ref.repo, revision=info.sha, path=None)
    try:
        path = Path(with_retries(snapshot_download, ref.repo, revision=ref.revision, allow_patterns=MODEL_PATTERNS))
    except Exception as e:
        raise _explain(ref, "the model files", e) from e
    if not any(path.glob("*.safetensors")):
        raise HubError(
            f"{ref.repo}@{ref.revision or 'main'} has no safetensors weights; evohub never loads pickle checkpoints"
        )
    return path


def _describe(ref: ModelRef, local: Path) -> dict:
    """License, architecture and size of a pulled model, for the lock and the card."""
    try:
        config = json.loads((local / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    size = sum(p.stat().st_size for p in local.glob("*.safetensors"))
    try:
        license_ = model_license(ref)
    except EvohubError:
        license_ = None
    return {
        "license": license_,
        "architecture": (config.get("architectures") or [config.get("model_type")])[0],
        "bytes": size,
    }


def pull(models: list[tuple[str, ModelRef]], progress: bool = False) -> list[dict]:
    """Resolve and fetch models; returns job.lock.yaml entries (commit and local directory).

    Local ``path`` models are recorded as they are; Hub models are snapshotted (safetensors and
    configs only) and pinned to the commit their revision resolved to.
    """
    entries = []
    for name, ref in models:
        local = snapshot(ref)
        entry = {"name": name, "path": ref.path, "local": ref.path} if ref.path is not None else {
            "name": name, "repo": ref.repo, "requested": ref.revision, "revision": local.name, "local": str(local)}  # fmt: skip
        entries.append(entry | _describe(ref, local))
        if progress and ref.repo:
            print(f"pulled {ref.repo}@{ref.revision or 'main'} -> {local.name[:12]}")
    return entries


# ----------------------------------------------------------------------------------------------
# Publishing


def run_id(run_dir: Path) -> str:
    """The tag a published run's commit gets: ``evohub-<run dir>-<recipe hash>``."""
    import hashlib
    import re

    digest = hashlib.sha256((run_dir / "recipe.yaml").read_bytes()).hexdigest()[:10]
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", run_dir.resolve().name).strip("-.") or "run"
    return f"evohub-{name}-{digest}"


def publish_files(run_dir: Path, readme: str, extra: dict[str, str]) -> dict[str, bytes | Path]:
    """Everything a published run holds, by path in the repo."""
    import gzip

    files: dict[str, bytes | Path] = {}
    model = run_dir / "model"
    if not (model / "config.json").exists():
        raise EvohubError(f"{run_dir}: no merged model in model/; run the job to the end first")
    for p in sorted(model.iterdir()):
        if p.is_file() and not p.name.startswith("."):
            files[p.name] = p
    for name in ("recipe.yaml", "results.json", "fitness.png"):
        if (run_dir / name).exists():
            files[name] = run_dir / name
    if (run_dir / "candidates.jsonl").exists():
        files["candidates.jsonl.gz"] = gzip.compress((run_dir / "candidates.jsonl").read_bytes(), mtime=0)
    files |= {k: v.encode() for k, v in extra.items()}
    files["README.md"] = readme.encode()
    return files


@dataclass
class Published:
    repo_id: str
    revision: str
    commit: str | None
    tag: str
    files: list[str]


def _has_model(api, repo_id: str, revision: str) -> bool:
    from huggingface_hub.errors import RevisionNotFoundError

    try:
        names = api.list_repo_files(repo_id, revision=revision)
    except RevisionNotFoundError:
        return False
    return any(n.endswith(".safetensors") or n == "config.json" for n in names)


def publish_run(
    run_dir: str | Path,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool = False,
    force: bool = False,
    dry_run: bool = False,
    licenses: dict[str, str | None] | None = None,
) -> tuple[Published, str]:
    """Publish a finished run as ONE commit (weights, config, tokenizer, recipe, results, fitness
    curve, compressed candidates log, card, eval results) and tag it with the run id.

    Refuses to overwrite a model already on the target branch of an existing repo unless
    ``force``; ``revision`` names a branch (created if needed). Returns what was (or, with
    ``dry_run``, would be) published, and the card text.
    """
    from evohub.card import build_card
    from evohub.evolve.rundir import RunFiles
    from evohub.spec import _repo_id  # the same rule as the job spec's

    try:
        _repo_id(repo_id)
    except ValueError as e:
        raise EvohubError(f"--repo: {e}") from e
    run_dir = Path(run_dir)
    run = RunFiles(run_dir)
    job = run.job()
    if licenses is None:  # recorded at pull time; asked again only for older locks
        refs = ([("base", job.base_model)] if job.base_model else []) + [(s.key, s.ref()) for s in job.sources]
        locked = {e["name"]: e for e in run.lock()}
        licenses = {}
        for name, ref in refs:
            if "license" in locked.get(name, {}):
                licenses[name] = locked[name]["license"]
            else:
                licenses[name] = None if dry_run and ref.repo else model_license(run.pinned(ref) if ref.repo else ref)
    card, eval_files = build_card(run_dir, repo_id, licenses)
    readme = str(card)
    files = publish_files(run_dir, readme, eval_files)
    tag = run_id(run_dir)
    branch = revision or "main"
    if dry_run:
        return Published(repo_id, branch, None, tag, sorted(files)), readme
    from huggingface_hub import CommitOperationAdd

    api = _api()
    try:
        exists = with_retries(api.repo_exists, repo_id)
        if exists and _has_model(api, repo_id, branch) and not force:
            raise HubError(
                f"{repo_id}@{branch} already holds a model; publish to another branch with --revision BRANCH, or pass --force"
            )
        with_retries(api.create_repo, repo_id, private=private, exist_ok=True)
        if branch != "main":
            with_retries(api.create_branch, repo_id, branch=branch, exist_ok=True)
        ops = [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(src) if isinstance(src, Path) else src)
            for name, src in files.items()
        ]
        info = with_retries(api.create_commit, repo_id, operations=ops, revision=branch,
                            commit_message=f"evohub: publish {job.name} ({tag})")  # fmt: skip
        with_retries(
            api.create_tag,
            repo_id,
            tag=tag,
            revision=info.oid,
            tag_message=f"evohub run {run_dir.resolve().name}",
            exist_ok=True,
        )
    except EvohubError:
        raise
    except Exception as e:
        raise _explain(ModelRef.model_construct(repo=repo_id, revision=branch, path=None), "the publish", e) from e
    return Published(repo_id, branch, info.oid, tag, sorted(files)), readme


# ----------------------------------------------------------------------------------------------
# Run state on the Hub, for runs that continue across machines (nightly GPU runners)

STATE_FILES = ("job.yaml", "job.lock.yaml", "candidates.jsonl")


def push_state(run_dir: str | Path, state_repo: str, message: str = "evohub: run state") -> None:
    """Upload the run's log, spec, lock, checkpoints, stage recipes and evaluation results to a
    dataset repo (one commit)."""
    from huggingface_hub import CommitOperationAdd

    run_dir = Path(run_dir)
    api = _api()
    ops = [
        CommitOperationAdd(path_in_repo=n, path_or_fileobj=str(run_dir / n))
        for n in STATE_FILES
        if (run_dir / n).exists()
    ]
    for p in sorted([*(run_dir / "stages").glob("*/*"), *(run_dir / "eval").glob("*/*"), run_dir / "results.json"]):
        if p.is_file() and p.suffix in (".json", ".jsonl", ".yaml"):
            ops.append(CommitOperationAdd(path_in_repo=str(p.relative_to(run_dir)), path_or_fileobj=str(p)))
    try:
        with_retries(api.create_repo, state_repo, repo_type="dataset", private=True, exist_ok=True)
        with_retries(
            api.create_commit,
            state_repo,
            repo_type="dataset",
            operations=ops,
            commit_message=message,
        )
    except Exception as e:
        raise _explain(ModelRef.model_construct(repo=state_repo, revision=None, path=None), "the run state", e) from e


def fetch_state(state_repo: str, run_dir: str | Path) -> bool:
    """Download a run's state into ``run_dir`` (which must not hold a run); False if there is none."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError

    run_dir = Path(run_dir)
    try:
        local = Path(with_retries(snapshot_download, state_repo, repo_type="dataset"))
    except RepositoryNotFoundError:
        return False
    except Exception as e:
        raise _explain(ModelRef.model_construct(repo=state_repo, revision=None, path=None), "the run state", e) from e
    import shutil

    found = False
    for p in local.rglob("*"):
        if p.is_file() and not p.name.startswith("."):
            dest = run_dir / p.relative_to(local)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dest)
            found = True
    return found
