"""Pulling a job's models: each Hub reference pinned to the commit it resolves to, recorded in
``job.lock.yaml`` with its licence, architecture and size (docs/design.md#pinned-pulls)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from evohub.errors import EvohubError
from evohub.hub import client
from evohub.pipeline.rundir import RunDir
from evohub.spec import JobSpec, ModelRef

log = logging.getLogger("evohub")


def local_dir(ref: ModelRef) -> Path:
    """A model's local directory: its ``path``, or its pinned Hub snapshot (downloaded if needed)."""
    return Path(ref.path) if ref.path is not None else client.snapshot(ref.repo, ref.revision)  # type: ignore[arg-type]


def model_license(ref: ModelRef) -> str | None:
    """The licence a model's card declares (a local model: its README.md front matter)."""
    if ref.path is not None:
        return client.card_license(Path(ref.path) / "README.md")
    return client.hub_license(ref.repo, ref.revision)  # type: ignore[arg-type]


def _describe(ref: ModelRef, local: Path) -> dict:
    """Licence, architecture and size of a pulled model, for the lock and the card."""
    try:
        config = json.loads((local / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    try:
        license_ = model_license(ref)
    except EvohubError:
        license_ = None
    return {
        "license": license_,
        "architecture": (config.get("architectures") or [config.get("model_type")])[0],
        "bytes": sum(p.stat().st_size for p in local.glob("*.safetensors")),
    }


def lock_entries(models: list[tuple[str, ModelRef]]) -> list[dict]:
    """Resolve and fetch models; returns job.lock.yaml entries (commit and local directory)."""
    entries = []
    for name, ref in models:
        local = local_dir(ref)
        if ref.path is not None:
            entry = {"name": name, "path": ref.path, "local": ref.path}
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
    models = spec.models()
    if run.lock_path.exists():
        entries = run.lock()
        if all(Path(e["local"]).is_dir() for e in entries):
            return
        pinned = {e["name"]: e for e in entries}
        models = [(n, r if r.path else r.at(pinned[n]["revision"])) for n, r in models]
    run.write_lock(lock_entries(models))
