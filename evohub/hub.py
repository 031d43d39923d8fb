"""Every huggingface_hub call evohub makes goes through this module.

    >>> cfg = fetch_config(ModelRef(repo="mistralai/Mistral-7B-v0.1"))   # doctest: +SKIP
    >>> cfg["num_hidden_layers"]
    32

Errors become one-line :class:`~evohub.errors.EvohubError` messages that name the repo and say
what to do; the token (from the environment or the HF cache) never appears in them.
"""

from __future__ import annotations

import json
from pathlib import Path

from evohub.errors import EvohubError
from evohub.spec import ModelRef


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
        return HubError(
            f"{where}: {filename} is not in the local HF cache and the Hub cannot be reached (offline?)"
        )
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
        raise EvohubError(
            f"{path}: no config.json; is {ref.display()} a transformers model directory?"
        ) from e
    except ValueError as e:
        raise EvohubError(f"{path}: not valid JSON: {e}") from e


#: What a merge needs from a model repo: weights (safetensors only), configs, tokenizer files.
MODEL_PATTERNS = ["*.safetensors", "*.json", "tokenizer.model", "*.txt", "*.jinja"]


def snapshot(ref: ModelRef) -> Path:
    """Local directory of a model: its ``path``, or a Hub snapshot (safetensors + configs only)."""
    if ref.path is not None:
        return Path(ref.path)
    from huggingface_hub import snapshot_download

    try:
        path = Path(
            snapshot_download(ref.repo, revision=ref.revision, allow_patterns=MODEL_PATTERNS)
        )  # type: ignore[arg-type]
    except Exception as e:
        raise _explain(ref, "the model files", e) from e
    if not any(path.glob("*.safetensors")):
        raise HubError(
            f"{ref.repo}@{ref.revision or 'main'} has no safetensors weights (pickle checkpoints are never loaded); "
            "pick a revision with safetensors or convert the model"
        )
    return path


def pull(models: list[tuple[str, ModelRef]], progress: bool = False) -> list[dict]:
    """Resolve and fetch models; returns job.lock.yaml entries (commit and local directory).

    Local ``path`` models are recorded as they are; Hub models are snapshotted (safetensors and
    configs only) and pinned to the commit their revision resolved to.
    """
    entries = []
    for name, ref in models:
        if ref.path is not None:
            entries.append({"name": name, "path": ref.path, "local": ref.path})
            continue
        local = snapshot(ref)
        entries.append(
            {
                "name": name,
                "repo": ref.repo,
                "requested": ref.revision,
                "revision": local.name,
                "local": str(local),
            }
        )
        if progress:
            print(f"pulled {ref.repo}@{ref.revision or 'main'} -> {local.name[:12]}")
    return entries
