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


def _compact(feature) -> Any:
    """A ``datasets`` feature in the compact form of :class:`DatasetConfig`."""
    from datasets import ClassLabel, Image, LargeList, List, Sequence, Value

    if isinstance(feature, dict):
        return {k: _compact(v) for k, v in feature.items()}
    if isinstance(feature, ClassLabel):
        return {"class_label": list(feature.names)}
    if isinstance(feature, Image):
        return "image"
    if isinstance(feature, Value):
        return "string" if feature.dtype in ("large_string", "string") else feature.dtype
    if isinstance(feature, (List, LargeList, Sequence)):  # Sequence(dict) is already a dict of lists
        return [_compact(feature.feature)]
    return "string"


def _parquet_configs(repo: str, layout: dict[str, dict[str, list[str]]], revision: str) -> dict[str, DatasetConfig]:
    """Each config's columns and row counts, from its parquet files' footers."""
    from datasets import Features

    out = {}
    for config, splits in layout.items():
        counts, features = {}, None
        for split, paths in splits.items():
            metas = [client.parquet_footer(repo, p, revision) for p in paths]
            counts[split] = sum(m.num_rows for m in metas)
            schema = metas[0].schema.to_arrow_schema()
            hf = (schema.metadata or {}).get(b"huggingface")
            feats = json.loads(hf)["info"]["features"] if hf else None
            features = Features.from_dict(feats) if feats else Features.from_arrow_schema(schema)
        out[config] = DatasetConfig(features=_compact(features), splits=counts)
    return out


def _card_configs(card: dict) -> dict[str, DatasetConfig]:
    infos = card.get("dataset_info") or []
    out = {}
    for info in [infos] if isinstance(infos, dict) else infos:
        splits = {s["name"]: int(s.get("num_examples", 0)) for s in info.get("splits") or []}
        out[info.get("config_name", "default")] = DatasetConfig(features=_features(info), splits=splits)
    return out


def _data_files(files: list[str]) -> dict[str, str]:
    """Main's data files -> the split ``datasets`` infers for each (a repo without ``configs:``)."""
    from datasets.data_files import _get_data_files_patterns

    from evohub.spec.remote import _glob

    data = [f for f in files if f.endswith(client.DATA_SUFFIXES)]
    out = {}
    for split, patterns in _get_data_files_patterns(lambda p: [f for f in data if _glob(p).match(f)]).items():
        for pattern in patterns:
            out |= {f: str(split) for f in data if _glob(pattern).match(f) and f not in out}
    return out


def record(repo: str, kind: str, revision: str | None = None) -> Snapshot:
    """Read ``repo``'s metadata at ``revision`` from the Hub: listings, config and tokenizer JSON,
    a dataset's parquet-conversion footers (columns, row counts) or its card's ``dataset_info``;
    never weights or rows. Over 60 lines: models and datasets."""
    found = client.listing(repo, revision, kind)
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
        # tokens beyond the sentencepiece vocabulary: added_tokens.json, else the config's decoder table
        extra = _json_file(name, found.sha, "added_tokens.json", kind) if "added_tokens.json" in found.files else None
        added = {int(i): t["content"] for i, t in (tok.get("added_tokens_decoder") or {}).items() if int(i) > 2}
        added |= {int(i): t for t, i in (extra or {}).items()}
        text = config.get("text_config") or config
        size = max(i + 1 for i in added) if extra else max([text["vocab_size"], *[i + 1 for i in added]])

        def special(key):
            v = tok.get(key)
            return v.get("content") if isinstance(v, dict) else v

        template = tok.get("chat_template")
        image = next((t for t in added.values() if t == "<image>"), None)
        tokenizer = Tokenizer(size=size, added=added, bos=special("bos_token"), eos=special("eos_token"),
                              unk=special("unk_token"), pad=special("pad_token"), image_token=image,
                              chat_template=template if isinstance(template, str) else None)  # fmt: skip
        base = card.get("base_model")
        return Snapshot(**common, config=config, tokenizer=tokenizer,
                        base_model=base[0] if isinstance(base, list) and base else base)  # fmt: skip
    layout = client.parquet_files(name) if "parquet" in client.convert_refs(name) else {}
    files = {} if client.unreadable(name, found.files) else _data_files(found.files)
    if layout:
        configs = _parquet_configs(name, layout, client.PARQUET_REF)
    elif files and all(f.endswith(".parquet") for f in files):  # main's own parquet files
        by_split: dict[str, list[str]] = {}
        for f, split in files.items():
            by_split.setdefault(split, []).append(f)
        configs = _parquet_configs(name, {"default": by_split}, found.sha)
    else:
        configs = _card_configs(card)
    if files and list(configs) == ["default"]:
        configs["default"] = configs["default"].model_copy(update={"files": files})
    return Snapshot(**common, configs=configs, parquet=tuple(layout))
