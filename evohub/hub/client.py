"""Reading from the Hub: configs, model info, licences, pinned snapshots, with retries.

>>> cfg = fetch_config("mistralai/Mistral-7B-v0.1", None)   # doctest: +SKIP
>>> cfg["num_hidden_layers"]
32
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import time
from pathlib import Path

from huggingface_hub import HfApi, ModelCard, constants, hf_hub_download, snapshot_download, try_to_load_from_cache
from huggingface_hub import errors as hf_errors
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

from evohub.errors import HubError
from evohub.hub.pipelines import (
    PIPELINE_INDEX,
    UNET,
    chosen_weights,
    has_weights,
    is_pipeline_listing,
    pipeline_patterns,
)

#: What a merge needs from a model repo: weights (safetensors only), configs, tokenizer files.
MODEL_PATTERNS = ["*.safetensors", "*.json", "tokenizer.model", "spiece.model", "*.txt", "*.jinja"]
#: The same for a model whose owner opted in to pickle weights (converted after download).
PICKLE_PATTERNS = [*MODEL_PATTERNS, "*.bin", "*.pt", "*.pth"]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def explain(repo: str, revision: str | None, what: str, e: Exception, kind: str = "model") -> HubError:
    """A one-line HubError for a failed request about ``what`` in the ``kind`` repo ``repo@revision``."""
    where = f"{repo}@{revision or 'main'}"
    if isinstance(e, HubError):
        return e
    if isinstance(e, hf_errors.GatedRepoError):
        return HubError(f"{where} is gated: accept its terms on the Hub and log in (hf auth login)")
    if isinstance(e, hf_errors.RepositoryNotFoundError):
        return HubError(f"{where}: no such {kind} repo (or it is private and you are not logged in)")
    if isinstance(e, hf_errors.RevisionNotFoundError):
        return HubError(f"{where}: no such branch, tag or commit")
    if isinstance(e, hf_errors.LocalEntryNotFoundError):  # before EntryNotFoundError, its parent
        return HubError(f"{where}: {what}: not in the local HF cache, and the Hub cannot be reached (offline?)")
    if isinstance(e, hf_errors.EntryNotFoundError):
        return HubError(f"{where} has no {what}")
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return HubError(f"{where}: cannot fetch {what}: {msg}")


def with_retries(call, *args, attempts: int = 4, delay: float = 1.0, **kwargs):
    """``call(*args, **kwargs)``, retried with exponential backoff on transient Hub errors
    (HTTP 429 and 5xx, dropped connections, timeouts); other errors are raised at once."""
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


def api():
    """An HfApi; the token comes from HF_TOKEN or the HF cache, never from evohub's arguments."""
    return HfApi()


def offline() -> bool:
    return bool(constants.HF_HUB_OFFLINE)


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise HubError(f"{path}: no {what}") from e
    except ValueError as e:
        raise HubError(f"{path}: not valid JSON: {e}") from e


def cached_config(repo: str, revision: str | None) -> dict | None:
    """A Hub model's config.json when the local HF cache holds it (no request), else None."""
    hit = try_to_load_from_cache(repo, "config.json", revision=revision)
    if not isinstance(hit, str):
        return None
    try:
        return json.loads(Path(hit).read_text())
    except (OSError, ValueError):
        return None


def fetch_json(repo: str, revision: str | None, filename: str) -> dict:
    """One JSON file of a Hub model (downloaded into the HF cache)."""
    return _read_json(Path(_download(repo, filename, revision)), filename)


def fetch_config(repo: str, revision: str | None) -> dict:
    """A Hub model's config.json (downloaded into the HF cache)."""
    try:
        path = Path(hf_hub_download(repo, "config.json", revision=revision))
    except Exception as e:  # huggingface_hub raises several families; all become one line
        raise explain(repo, revision, "config.json", e) from e
    return _read_json(path, "config.json")


def pipeline_layout(repo: str, revision: str | None) -> tuple[dict | None, dict, dict[str, list[tuple[str, int]]]]:
    """A Hub diffusion pipeline (or UNet alone) without its weights: (model_index.json or None,
    unet/config.json, each component folder -> the weight files a pull fetches, with sizes)."""
    info = model_info(repo, revision, files=True)
    sizes = {f.rfilename: f.size or 0 for f in info.siblings or []}
    if not is_pipeline_listing(sizes):
        raise HubError(
            f"{repo}@{revision or 'main'}: not a diffusers pipeline (no model_index.json, no unet/config.json)"
        )
    index = None
    if PIPELINE_INDEX in sizes:
        index = _read_json(Path(_download(repo, PIPELINE_INDEX, info.sha)), PIPELINE_INDEX)
    unet = _read_json(Path(_download(repo, f"{UNET}/config.json", info.sha)), "unet/config.json")
    chosen = chosen_weights(list(sizes), index)
    return index, unet, {folder: [(f, sizes[f]) for f in files] for folder, files in chosen.items()}


def _download(repo: str, filename: str, revision: str | None) -> str:
    try:
        return hf_hub_download(repo, filename, revision=revision)
    except Exception as e:
        raise explain(repo, revision, filename, e) from e


def model_info(repo: str, revision: str | None, files: bool = False):
    """The Hub's model_info (commit sha, card data, files with sizes if ``files``)."""
    try:
        return with_retries(api().model_info, repo, revision=revision, files_metadata=files)
    except Exception as e:
        raise explain(repo, revision, "model info", e) from e


def licence_of(data) -> str | None:
    """The licence a card's metadata declares; ``other`` with the terms it names
    (``license_name``, ``license_link``), e.g. JSDXL's: ``other (name, https://...)``."""
    if data is None:
        return None
    lic = getattr(data, "license", None)
    terms = [str(t) for t in (getattr(data, "license_name", None), getattr(data, "license_link", None)) if t]
    return f"{lic} ({', '.join(terms)})" if lic == "other" and terms else lic


def card_license(readme: Path) -> str | None:
    """The licence a model card (README.md with YAML front matter) declares."""
    return licence_of(ModelCard.load(readme).data) if readme.exists() else None


def hub_license(repo: str, revision: str | None) -> str | None:
    """The licence a Hub model's card declares."""
    return licence_of(model_info(repo, revision).card_data)


def _check_disk(repo: str, revision: str | None, info, target: Path, patterns: list[str] = MODEL_PATTERNS) -> None:
    need = sum(
        (f.size or 0) for f in info.siblings or [] if any(fnmatch.fnmatch(f.rfilename, p) for p in patterns) and f.size
    )
    target.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(target).free
    if need > free:
        raise HubError(
            f"{repo}@{revision or 'main'} needs {need / 1e9:.1f} GB but {target} has {free / 1e9:.1f} GB free; "
            "free space or set HF_HOME to a larger disk"
        )


def no_safetensors(repo: str, revision: str | None, names: list[str]) -> HubError:
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    detail = f" (it has {', '.join(pickles[:3])})" if pickles else ""
    return HubError(
        f"{repo}@{revision or 'main'} has no safetensors weights{detail}; add 'weights: pickle' to the source to "
        "read them with torch.load(weights_only=True) and convert them once, or pick a revision with safetensors"
    )


def snapshot(repo: str, revision: str | None, pickle: bool = False, file: str | None = None) -> Path:
    """A Hub model's files (safetensors, configs, tokenizer) in the HF cache, pinned to the commit
    ``revision`` resolves to (the directory is named by that commit); with ``file``, that one
    file alone (a LoRA in a repo of many checkpoints). A repository with only
    pickle weights is refused unless ``pickle`` (then its ``*.bin`` files are fetched, for the
    caller to convert); safetensors are preferred when both exist. The free disk is checked first."""
    if file is not None:  # one file of the repo (a LoRA), and nothing else
        return _one_file(repo, revision, file)
    patterns = PICKLE_PATTERNS if pickle and offline() else MODEL_PATTERNS
    if not offline():
        info = model_info(repo, revision, files=True)
        names = [f.rfilename for f in info.siblings or []]
        if is_pipeline_listing(names):  # a diffusers pipeline, or a UNet alone: one set of weights each
            index = None
            if PIPELINE_INDEX in names:
                index = _read_json(Path(_download(repo, PIPELINE_INDEX, info.sha)), PIPELINE_INDEX)
            patterns = pipeline_patterns(names, index)
        elif not any(n.endswith(".safetensors") for n in names):
            if not (pickle and any(n.endswith(PICKLE_SUFFIXES) for n in names)):
                raise no_safetensors(repo, revision, names)
            patterns = PICKLE_PATTERNS
        _check_disk(repo, revision, info, Path(constants.HF_HUB_CACHE), patterns)
        revision = info.sha
    try:
        path = Path(with_retries(snapshot_download, repo, revision=revision, allow_patterns=patterns))
    except Exception as e:
        raise explain(repo, revision, "a snapshot of the model files", e) from e
    if (
        not any(path.glob("*.safetensors"))
        and not has_weights(path)
        and not (pickle and any(p.suffix in PICKLE_SUFFIXES for p in path.iterdir()))
    ):
        raise no_safetensors(repo, revision, [])
    return path


def _one_file(repo: str, revision: str | None, file: str) -> Path:
    """The snapshot directory holding ``file`` of ``repo`` at the commit ``revision`` resolves to."""
    if not offline():
        revision = model_info(repo, revision).sha
    path = Path(_download(repo, file, revision))
    return path.parents[len(Path(file).parts) - 1]


def download_dataset_repo(repo: str) -> Path | None:
    """A whole dataset repo's files in the HF cache; None when there is no such repo."""
    try:
        return Path(with_retries(snapshot_download, repo, repo_type="dataset"))
    except RepositoryNotFoundError:
        return None
    except Exception as e:
        raise explain(repo, None, "the dataset files", e, kind="dataset") from e


class Listing:
    """What a repo holds at a revision, without downloading it: commit, files, card data, gating,
    and its id (another than the one asked for when the repo was renamed: the Hub redirects)."""

    def __init__(self, sha: str, files: list[str], card: dict | None, gated: bool, id: str | None = None):
        self.sha, self.files, self.card, self.gated, self.id = sha, files, card, gated, id


def listing(repo: str, revision: str | None, kind: str = "model") -> Listing:
    """The file list and card data of a model or dataset repo at ``revision`` (metadata only)."""
    hf = api()
    call = hf.model_info if kind == "model" else hf.dataset_info
    try:
        info = with_retries(call, repo, revision=revision)
    except Exception as e:
        raise explain(repo, revision, f"{kind} info", e, kind=kind) from e
    card = info.card_data.to_dict() if info.card_data is not None else None
    files = [s.rfilename for s in info.siblings or []]
    return Listing(info.sha, files, card, bool(getattr(info, "gated", False)), getattr(info, "id", None))


def endpoint() -> str:
    """The Hub huggingface_hub talks to (``HF_ENDPOINT``)."""
    return str(constants.ENDPOINT)


def check_access(repo: str, kind: str = "model") -> None:
    """Raise a one-line HubError when this token cannot download the repo's files (gated, private)."""
    try:
        with_retries(api().auth_check, repo, repo_type=kind)
    except Exception as e:
        raise explain(repo, None, "access", e, kind=kind) from e


#: Files a dataset's rows can be in (what ``datasets`` reads without a script).
DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet", ".arrow", ".txt", ".json.gz", ".jsonl.gz", ".zip")
PARQUET_REF = "refs/convert/parquet"


def loading_script(repo: str, files: list[str]) -> str | None:
    """The loading script of a dataset repo (``<name>.py`` at its root), or None. ``datasets`` >= 4
    refuses any repo holding one, even beside data files (``juletxara/mgsm``: ``mgsm.py`` and
    TSVs); its rows are then read from the Hub's parquet conversion."""
    script = f"{repo.rsplit('/', 1)[-1]}.py"
    return script if script in files else None


def unreadable(repo: str, files: list[str]) -> bool:
    """True for a dataset repo ``datasets`` cannot read from ``main``: a loading script, or no data files."""
    return loading_script(repo, files) is not None or not any(f.endswith(DATA_SUFFIXES) for f in files)


def parquet_layout(repo: str) -> dict[str, list[str]] | None:
    """The Hub's parquet conversion of a dataset: config -> splits, or None when it has none."""
    if "parquet" not in convert_refs(repo, "dataset"):
        return None
    return {config: list(splits) for config, splits in parquet_files(repo).items()}


def parquet_files(repo: str) -> dict[str, dict[str, list[str]]]:
    """The parquet conversion's files: config -> split -> paths, in either of the converter's
    layouts (``<config>/<split>/0000.parquet``, or the older ``<config>/<name>-<split>.parquet``)."""
    import re

    out: dict[str, dict[str, list[str]]] = {}
    for f in sorted(listing(repo, PARQUET_REF, "dataset").files):
        parts = f.split("/")
        if not f.endswith(".parquet") or len(parts) < 2:
            continue
        if len(parts) >= 3:
            split = parts[1]
        else:
            m = re.search(r"-([A-Za-z0-9_]+?)(?:-\d{5}-of-\d{5})?\.parquet$", parts[-1])
            if m is None:
                continue
            split = m.group(1)
        out.setdefault(parts[0], {}).setdefault(split, []).append(f)
    return out


def parquet_footer(repo: str, path: str, revision: str = PARQUET_REF):
    """A dataset parquet file's metadata (schema, row count) from its footer alone, read with two
    HTTP range requests: never its rows."""
    import io

    import pyarrow.parquet as pq
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import build_hf_headers, http_backoff

    url = hf_hub_url(repo, path, repo_type="dataset", revision=revision)
    try:
        size = get_hf_file_metadata(url).size or 0

        def tail(start: int) -> bytes:
            headers = build_hf_headers() | {"Range": f"bytes={start}-{size - 1}"}
            r = http_backoff("GET", url, headers=headers, follow_redirects=True)
            r.raise_for_status()
            return r.content[-(size - start) :]

        end = tail(size - 8)
        if end[4:] != b"PAR1":
            raise HubError(f"{repo}/{path}: not a parquet file")
        footer = tail(size - 8 - int.from_bytes(end[:4], "little"))
        return pq.read_metadata(io.BytesIO(b"PAR1" + footer))
    except HubError:
        raise
    except Exception as e:
        raise explain(repo, revision, path, e, kind="dataset") from e


def convert_refs(repo: str, kind: str = "dataset") -> list[str]:
    """The repo's ``refs/convert/*`` names (``parquet``: the Hub's conversion of a script dataset)."""
    try:
        refs = with_retries(api().list_repo_refs, repo, repo_type=kind)
    except Exception as e:
        raise explain(repo, None, "refs", e, kind=kind) from e
    return [r.name for r in getattr(refs, "converts", []) or []]


def download(repo: str, revision: str | None, patterns: list[str]) -> Path:
    """The files of a model repo matching ``patterns``, at the commit ``revision`` resolves to."""
    try:
        return Path(with_retries(snapshot_download, repo, revision=revision, allow_patterns=patterns))
    except Exception as e:
        raise explain(repo, revision, "the published files", e) from e
