"""The files of a diffusers pipeline that evohub reads (docs/design.md#diffusion-pipelines): pure
rules on file names, shared by the Hub pull (which files to fetch) and the merge (which to read).

A pipeline repository has ``model_index.json`` and one folder per component; a UNet-only
repository (SDXL-DPO's) has ``unet/`` alone. A component folder may hold its weights several
times: plain (``diffusion_pytorch_model.safetensors``) and as ``variant`` files
(``diffusion_pytorch_model.fp16.safetensors``). One set is read: the ``fp16`` variant when the
folder has it (half the download; merging computes in float32 whatever it reads), else the plain
files, else the only variant there is. Root-level single-file checkpoints, ONNX and OpenVINO
exports and folders that model_index.json does not name are never fetched.

    >>> choose_variant({None: ["a.safetensors"], "fp16": ["a.fp16.safetensors"]})
    'fp16'
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from evohub.errors import MergeError

PIPELINE_INDEX = "model_index.json"
UNET = "unet"
#: a weight file: ``<stem>[.<variant>][-00001-of-00002].safetensors``
WEIGHTS = re.compile(r"^(?P<stem>[A-Za-z_]+?)(?:\.(?P<variant>[A-Za-z0-9_]+))?(?:-\d{5}-of-\d{5})?\.safetensors$")
PREFERRED_VARIANT = "fp16"
#: what a component folder needs besides its weights: configs, tokenizer vocabularies, merges
SIDE_FILES = ("*.json", "*.txt", "*.model")


def choose_variant(by_variant: dict[str | None, list[str]]) -> str | None:
    """The variant one folder's weights are read from (None: the plain files)."""
    if PREFERRED_VARIANT in by_variant:
        return PREFERRED_VARIANT
    if None in by_variant or len(by_variant) == 1:
        return None if None in by_variant else next(iter(by_variant))
    raise MergeError(f"several weight variants ({', '.join(sorted(map(str, by_variant)))}) and no plain files")


def by_variant(names: Iterable[str]) -> dict[str | None, list[str]]:
    """Weight file names of one folder, by variant (names that are not weight files are left out)."""
    out: dict[str | None, list[str]] = {}
    for name in sorted(names):
        m = WEIGHTS.match(name)
        if m:
            out.setdefault(m["variant"], []).append(name)
    return out


def is_pipeline_listing(names: Iterable[str]) -> bool:
    """True for a repository laid out as a pipeline (model_index.json) or a UNet alone."""
    names = set(names)
    return PIPELINE_INDEX in names or f"{UNET}/config.json" in names


def chosen_weights(names: list[str], index: dict | None) -> dict[str, list[str]]:
    """Each component folder -> the weight files read from it (paths in the repo), from a listing
    ``names`` and the repo's model_index.json (None for a UNet-only repo)."""
    out = {}
    for folder in _folders(index):
        inside = [n.split("/", 1)[1] for n in names if n.startswith(folder + "/") and n.count("/") == 1]
        weights = by_variant(inside)
        if weights:
            out[folder] = [f"{folder}/{n}" for n in weights[choose_variant(weights)]]
    return out


def pipeline_patterns(names: list[str], index: dict | None) -> list[str]:
    """The files to fetch from a pipeline repository listing ``names`` (paths in the repo):
    model_index.json, and in each component folder its side files and one set of weights.
    ``index`` is the repo's model_index.json (None for a UNet-only repo)."""
    out = [PIPELINE_INDEX] if index is not None else []
    out += [f"{folder}/{p}" for folder in _folders(index) for p in SIDE_FILES]
    return out + [f for files in chosen_weights(names, index).values() for f in files]


def _folders(index: dict | None) -> list[str]:
    """The component folders a pull reads: those model_index.json names, or ``unet`` alone."""
    return components(index) if index is not None else [UNET]


def components(index: dict) -> list[str]:
    """The component folders a ``model_index.json`` names (entries ``[library, class]``; null ones skipped)."""
    return [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0] is not None]


#: the libraries a pipeline's model_index.json may name (anything else is the repo's own code)
LIBRARIES = ("diffusers", "transformers")


def own_code(index: dict) -> list[str]:
    """What a model_index.json names that is the repo's own code, not a diffusers or transformers
    class: a ``[module, Class]`` pipeline class (JSDXL's), components of other libraries."""
    out = []
    cls = index.get("_class_name")
    if not isinstance(cls, str):
        out.append(f"pipeline {'.'.join(map(str, cls)) if isinstance(cls, list) else cls}")
    for k, v in index.items():
        if not k.startswith("_") and isinstance(v, list) and len(v) == 2 and v[0] is not None and v[0] not in LIBRARIES:
            out.append(f"{k} {v[0]}.{v[1]}")
    return out


def has_weights(directory: Path) -> bool:
    """True when a downloaded pipeline directory has its UNet's weights."""
    return any((directory / UNET).glob("*.safetensors"))


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise MergeError(f"{path}: not valid JSON: {e}") from e


def local_layout(directory: Path) -> tuple[dict | None, dict, dict[str, list[tuple[str, int]]]]:
    """:func:`evohub.hub.client.pipeline_layout` for a local directory."""
    names = [p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()]
    index = read_json(directory / PIPELINE_INDEX) if (directory / PIPELINE_INDEX).is_file() else None
    if not (directory / UNET / "config.json").is_file():
        raise MergeError(f"{directory}: not a diffusers pipeline (no unet/config.json)")
    unet = read_json(directory / UNET / "config.json")
    chosen = chosen_weights(names, index)
    return index, unet, {k: [(f, (directory / f).stat().st_size) for f in v] for k, v in chosen.items()}
