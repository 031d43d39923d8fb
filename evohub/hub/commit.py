"""Writing to the Hub: one commit with every file, tagged; a private dataset repo for run state.

>>> done = commit_files("me/EvoLLM-JP", files, message="evohub: publish", tag="evohub-x-1a2b")  # doctest: +SKIP
>>> done.commit, done.tag
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import CommitOperationAdd
from huggingface_hub.errors import RevisionNotFoundError

from evohub.errors import HubError
from evohub.hub.client import api, explain, with_retries

#: A Hub repo id: ``owner/name`` (or a bare name), as the Hub allows them.
REPO_ID = re.compile(r"^(?:[A-Za-z0-9](?:[\w.-]{0,94}[\w])?/)?[A-Za-z0-9](?:[\w.-]{0,94}[\w])?$")


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if it is a well-formed Hub id, else ValueError (the schema turns it into a line)."""
    if not REPO_ID.match(repo_id) or "--" in repo_id or ".." in repo_id:
        raise ValueError(f"{repo_id!r} is not a Hub repo id (expected 'owner/name')")
    return repo_id


@dataclass
class Published:
    repo_id: str
    revision: str
    commit: str | None
    tag: str
    files: list[str]


def _has_model(hf, repo_id: str, revision: str) -> bool:
    try:
        names = hf.list_repo_files(repo_id, revision=revision)
    except RevisionNotFoundError:
        return False
    return any(n.endswith(".safetensors") or n == "config.json" for n in names)


def commit_files(
    repo_id: str,
    files: Mapping[str, bytes | Path],
    *,
    message: str,
    tag: str,
    tag_message: str = "",
    revision: str | None = None,
    private: bool = False,
    force: bool = False,
) -> Published:
    """Upload ``files`` (path in the repo -> bytes or a local file) to a model repo as ONE commit
    on ``revision`` (a branch, created if needed; default main), and tag it.

    Refuses to overwrite a model already on that branch of an existing repo unless ``force``.
    """
    hf = api()
    branch = revision or "main"
    try:
        exists = with_retries(hf.repo_exists, repo_id)
        if exists and _has_model(hf, repo_id, branch) and not force:
            raise HubError(
                f"{repo_id}@{branch} already holds a model; publish to another branch with --revision BRANCH, or pass --force"
            )
        with_retries(hf.create_repo, repo_id, private=private, exist_ok=True)
        if branch != "main":
            with_retries(hf.create_branch, repo_id, branch=branch, exist_ok=True)
        ops = [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(src) if isinstance(src, Path) else src)
            for name, src in files.items()
        ]
        info = with_retries(hf.create_commit, repo_id, operations=ops, revision=branch, commit_message=message)
        with_retries(hf.create_tag, repo_id, tag=tag, revision=info.oid, tag_message=tag_message, exist_ok=True)
    except Exception as e:
        raise explain(repo_id, branch, "the publish", e) from e
    return Published(repo_id, branch, info.oid, tag, sorted(files))


def push_dataset_files(repo_id: str, files: Mapping[str, Path], message: str) -> None:
    """Upload ``files`` to a private dataset repo (created if needed) as one commit."""
    hf = api()
    ops = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(p)) for name, p in files.items()]
    try:
        with_retries(hf.create_repo, repo_id, repo_type="dataset", private=True, exist_ok=True)
        with_retries(hf.create_commit, repo_id, repo_type="dataset", operations=ops, commit_message=message)
    except Exception as e:
        raise explain(repo_id, None, "the run state", e, kind="dataset") from e
