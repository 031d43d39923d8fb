"""Metadata snapshots of real Hub repos: what a rehearsal's stand-ins copy (docs/design.md#rehearsal).

A snapshot holds a repo's **metadata only** — its files' names, config, dtype, shard layout,
tokenizer size and added tokens, a dataset's configs, splits, columns and row counts, licence,
gating, renames — each quirk noted with where it was read. No weights, no data rows.

Recorded snapshots of the shipped jobs' repos live in ``evohub/local/snapshots/``
(``models/<owner>--<name>.yaml``, ``datasets/<owner>--<name>.yaml``); :func:`record` reads one
live from the Hub ``HF_ENDPOINT`` points at (metadata requests and small JSON files only).

    >>> snap = load_snapshot("GAIR/Abel-7B-002", "model")
    >>> snap.weight_files()[:1]
    ['pytorch_model-00001-of-00003.bin']
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from evohub.errors import HubError, SpecError
from evohub.hub import client
from evohub.spec.problems import validate_doc
from evohub.spec.yamlio import dump_yaml, parse_yaml

SNAPSHOTS = Path(__file__).parent / "snapshots"
WEIGHT_SUFFIXES = (".safetensors", *client.PICKLE_SUFFIXES)


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Note(_Doc):
    """One fact about the real repo and where it was read (a URL, a file in a repo, a paper)."""

    fact: str
    source: str


class Tokenizer(_Doc):
    """The tokenizer's shape: ``size`` tokens, ``added`` ones at their ids, the special tokens."""

    size: int = Field(gt=3)
    added: dict[int, str] = Field(default_factory=dict)
    bos: str | None = "<s>"
    eos: str | None = "</s>"
    unk: str | None = "<unk>"
    pad: str | None = None
    #: the processor's image token (a VLM), one of ``added``
    image_token: str | None = None
    chat_template: str | None = None


class DatasetConfig(_Doc):
    """One config of a dataset: its columns (compact feature types) and rows per split."""

    #: column -> type: ``string``, ``int64``, ``int32``, ``float64``, ``bool``, ``image``, a list
    #: ``[type]``, a struct ``{field: type}``, ``{class_label: [names]}``, ``{one_of: [values]}``
    features: dict[str, Any]
    splits: dict[str, int]
    #: data file (in the repo) -> split it holds; empty when the config lives only in the parquet conversion
    files: dict[str, str] = Field(default_factory=dict)


class Snapshot(_Doc):
    """A model or dataset repo's metadata (:mod:`evohub.local.snapshot`)."""

    evohub_snapshot: Literal[1] = 1
    repo: str
    kind: Literal["model", "dataset"]
    #: the commit the metadata was read at, when known (a stand-in gets this commit id)
    revision: str | None = None
    renamed_from: tuple[str, ...] = ()
    gated: bool = False
    license: str | None = None
    #: every file at the revision (weights, configs, tokenizer, scripts, data files)
    files: tuple[str, ...]
    notes: tuple[Note, ...] = ()
    # models
    config: dict[str, Any] | None = None
    tokenizer: Tokenizer | None = None
    #: the repo the weights were fine-tuned from (stand-ins of one family share a base)
    base_model: str | None = None
    # datasets
    configs: dict[str, DatasetConfig] = Field(default_factory=dict)
    #: configs the Hub's parquet conversion (refs/convert/parquet) holds
    parquet: tuple[str, ...] = ()

    def weight_files(self) -> list[str]:
        return sorted(f for f in self.files if f.endswith(WEIGHT_SUFFIXES))

    def text_config(self) -> dict:
        cfg = self.config or {}
        return cfg.get("text_config") or cfg

    def to_yaml(self) -> str:
        return dump_yaml(self.model_dump(mode="json", exclude_defaults=True) | {"evohub_snapshot": 1})


def snapshot_path(repo: str, kind: str, root: Path = SNAPSHOTS) -> Path:
    return root / f"{kind}s" / f"{repo.replace('/', '--')}.yaml"


def read_snapshot(path: Path) -> Snapshot:
    try:
        text = path.read_text()
    except OSError as e:
        raise SpecError(f"{path}: cannot read ({e.strerror})") from e
    return validate_doc(Snapshot, parse_yaml(text, str(path)))  # problems as file:line: field: message


def load_snapshot(repo: str, kind: str, root: Path = SNAPSHOTS) -> Snapshot:
    """The recorded snapshot of ``repo`` (also found under a name it was renamed from)."""
    path = snapshot_path(repo, kind, root)
    if path.is_file():
        return read_snapshot(path)
    for other in sorted((root / f"{kind}s").glob("*.yaml")):
        snap = read_snapshot(other)
        if repo in snap.renamed_from:
            return snap
    raise SpecError(f"no recorded snapshot of the {kind} repo {repo} in {root}; record one with "
                    f"`evohub rehearse --record` where the Hub is reachable")  # fmt: skip


# -- reading a snapshot live --------------------------------------------------------------------


def _json_file(repo: str, revision: str, name: str, kind: str) -> dict | None:
    from huggingface_hub import hf_hub_download

    try:
        return json.loads(Path(hf_hub_download(repo, name, revision=revision, repo_type=kind)).read_text())
    except Exception:  # absent or unreadable: the snapshot says nothing about it
        return None


def _features(info: dict) -> dict[str, Any]:
    """The card's ``dataset_info.features`` in the compact form of :class:`DatasetConfig`."""

    def one(f: dict) -> Any:
        if "dtype" in f:
            return "image" if f["dtype"] == "image" else f["dtype"]
        if "class_label" in f:
            names = f["class_label"].get("names", {})
            return {"class_label": [names[k] for k in sorted(names, key=int)] if isinstance(names, dict) else names}
        if "sequence" in f or "list" in f:
            inner = f.get("sequence", f.get("list"))
            return [one(inner) if "dtype" in inner or "class_label" in inner else _features({"features": inner})]
        if "struct" in f:
            return _features({"features": f["struct"]})
        return "string"

    feats = info.get("features") or []
    if isinstance(feats, dict):
        return {k: one(v) if isinstance(v, dict) else v for k, v in feats.items()}
    return {f["name"]: one(f) for f in feats if isinstance(f, dict) and "name" in f}


def record(repo: str, kind: str) -> Snapshot:
    """Read ``repo``'s metadata from the Hub (metadata requests and small JSON files, never weights
    or rows). A dataset's columns and row counts come from its card's ``dataset_info``."""
    found = client.listing(repo, None, kind)
    renamed = (repo,) if found.id and found.id != repo else ()
    name = found.id or repo
    card = found.card or {}
    common = {"repo": name, "kind": kind, "revision": found.sha, "renamed_from": renamed, "gated": found.gated,
              "license": card.get("license"), "files": tuple(found.files),
              "notes": (Note(fact="recorded live", source=f"{client.endpoint()} at {found.sha}"),)}  # fmt: skip
    if kind == "model":
        config = _json_file(name, found.sha, "config.json", kind)
        if config is None:
            raise HubError(f"{name}@{found.sha}: no config.json")
        tok = _json_file(name, found.sha, "tokenizer_config.json", kind) or {}
        added = {int(i): t["content"] for i, t in (tok.get("added_tokens_decoder") or {}).items()}
        text = config.get("text_config") or config
        size = max([text.get("vocab_size", 0) if not added else 0, *[i + 1 for i in added]]) or text["vocab_size"]

        def special(key):
            v = tok.get(key)
            return v.get("content") if isinstance(v, dict) else v

        tokenizer = Tokenizer(size=size, added=added, bos=special("bos_token"), eos=special("eos_token"),
                              unk=special("unk_token"), pad=special("pad_token"),
                              chat_template=tok.get("chat_template") if isinstance(tok.get("chat_template"), str) else None)  # fmt: skip
        base = card.get("base_model")
        return Snapshot(**common, config=config, tokenizer=tokenizer,
                        base_model=base[0] if isinstance(base, list) and base else base)  # fmt: skip
    infos = card.get("dataset_info") or []
    infos = [infos] if isinstance(infos, dict) else infos
    configs = {}
    for info in infos:
        splits = {s["name"]: int(s.get("num_examples", 0)) for s in info.get("splits") or []}
        configs[info.get("config_name", "default")] = DatasetConfig(features=_features(info), splits=splits)
    layout = client.parquet_layout(name) if client.loading_script(name, found.files) else None
    return Snapshot(**common, configs=configs, parquet=tuple(layout or ()))
