"""Pulling a job's models: each Hub reference pinned to the commit it resolves to, recorded in
``job.lock.yaml`` with its licence, architecture and size (docs/design.md#pinned-pulls)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from evohub.errors import EvohubError
from evohub.files import write_json
from evohub.hub import client
from evohub.merging.arch import read_config
from evohub.merging.diffusion import is_pipeline
from evohub.merging.io import convert_pickle, pickle_files
from evohub.pipeline.rundir import RunDir
from evohub.spec import JobSpec, ModelRef
from evohub.spec.job import JUDGE_MODEL

log = logging.getLogger("evohub")
#: written beside a converted checkpoint: the sha256 of the pickle files read and safetensors written
PROVENANCE = "evohub-conversion.json"


def cache_dir() -> Path:
    """evohub's own cache (converted checkpoints): ``$EVOHUB_CACHE``, else ``~/.cache/evohub``."""
    return Path(os.environ.get("EVOHUB_CACHE") or Path.home() / ".cache" / "evohub")


def _converted(src: Path, ref: ModelRef) -> Path:
    """The safetensors conversion of a pickle-only model directory, made once and cached
    (docs/design.md#pickle-weights): by repo and commit, or by local path and file stamps."""
    if ref.repo is not None:
        key = Path(ref.repo) / src.name  # the snapshot directory is named by its commit
    else:
        stamp = "".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns};" for p in pickle_files(src))
        key = Path("local") / hashlib.sha256(f"{src.resolve()}|{stamp}".encode()).hexdigest()[:16]
    out = cache_dir() / "converted" / key
    if not (out / PROVENANCE).is_file():
        log.info("converting %s from pickle to safetensors (torch.load weights_only=True) -> %s", ref.display(), out)
        provenance = convert_pickle(src, out)
        write_json(out / PROVENANCE, provenance)
    return out


def local_dir(ref: ModelRef) -> Path:
    """A model's local directory: its ``path``, or its pinned Hub snapshot (downloaded if needed);
    with ``weights: pickle`` and no safetensors there, the cached safetensors conversion."""
    pickle = ref.weights == "pickle"
    hub = ref.path is None
    src = client.snapshot(ref.repo, ref.revision, pickle=pickle, file=ref.file) if hub else Path(ref.path)  # type: ignore[arg-type]
    if pickle and not any(src.glob("*.safetensors")):
        return _converted(src, ref)
    return src


def model_license(ref: ModelRef) -> str | None:
    """The licence a model's card declares (a local model: its README.md front matter)."""
    if ref.path is not None:
        return client.card_license(Path(ref.path) / "README.md")
    return client.hub_license(ref.repo, ref.revision)  # type: ignore[arg-type]


def _architecture(config: dict) -> str | None:
    """A config's architecture; a pipeline's class (``module.Class`` when it is its own code)."""
    cls = config.get("_class_name")
    if isinstance(cls, list):
        cls = ".".join(str(c) for c in cls)
    return (config.get("architectures") or [config.get("model_type") or cls])[0]


def _describe(ref: ModelRef, local: Path) -> dict:
    """Licence, architecture and size of a pulled model, for the lock and the card."""
    try:
        config = read_config(local)
    except EvohubError:
        config = {}
    try:
        license_ = model_license(ref)
    except EvohubError:
        license_ = None
    out = {
        "license": license_,
        "architecture": _architecture(config),
        "bytes": sum(
            p.stat().st_size for p in local.glob("*/*.safetensors" if is_pipeline(local) else "*.safetensors")
        ),
    }
    if ref.file is not None:  # one file (a LoRA) of the repo
        out |= {"architecture": "LoRA", "bytes": (local / ref.file).stat().st_size}
    if (local / PROVENANCE).is_file():  # converted from pickle: what was read and what was written
        out["converted"] = json.loads((local / PROVENANCE).read_text())
    return out


def lock_entries(models: list[tuple[str, ModelRef]]) -> list[dict]:
    """Resolve and fetch models; returns job.lock.yaml entries (commit and local directory)."""
    entries = []
    for name, ref in models:
        local = local_dir(ref)
        if ref.path is not None:
            entry = {"name": name, "path": ref.path, "local": str(local)}
        else:
            entry = {
                "name": name,
                "repo": ref.repo,
                "requested": ref.revision,
                "revision": local.name,
                "local": str(local),
            }
            log.info("pulled %s@%s -> %s", ref.repo, ref.revision or "main", local.name[:12])
        entries.append(entry | _describe(ref, local))
    return entries


def pull(spec: JobSpec, run: RunDir) -> None:
    """Fetch the job's models into the lock; a lock from another machine (a run continued from
    its Hub state) is re-fetched at the same pinned commits."""
    judge = spec.judge_model()
    models = spec.models() + ([(JUDGE_MODEL, judge)] if judge is not None else [])
    if run.lock_path.exists():
        entries = run.lock()
        if all(Path(e["local"]).is_dir() for e in entries):
            return
        pinned = {e["name"]: e for e in entries}
        models = [(n, r if r.path else r.at(pinned[n]["revision"])) for n, r in models]
    run.write_lock(lock_entries(models))
