"""Diffusion pipelines (diffusers' ``model_index.json`` layout): the UNet merged, the rest taken whole.

A pipeline directory holds one folder per component (``unet``, ``text_encoder``, ``vae``,
``tokenizer``, ``scheduler``, ...) and ``model_index.json``, which names each component's library
and class. A recipe's ``parameter_space`` merges the **UNet** tensor by tensor, with the same
machinery as a language model's (:mod:`evohub.merging.ps`: one layer group, ``overrides``
patterns for tensor groups such as EvoSDXL-JP's ``attn``, ``to_q|to_k|to_v|to_out.0``, against
``conv``, the rest); every other component is copied whole from one input: the one the recipe's
``components`` names, else the output's primary model (the first input the method reads)
(docs/design.md#diffusion-pipelines).

Weights: a component's ``*.safetensors`` (sharded with an index, or one file), or when the
folder has only a ``variant`` (``diffusion_pytorch_model.fp16.safetensors``), that variant. The
merged UNet is written in the recipe's dtype, whatever its inputs hold (an fp32-only UNet and
fp16 variants merge in float32 arithmetic). A copied component keeps its bytes; a variant's files
are written under the plain names, so the output loads with a plain ``from_pretrained``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from evohub.errors import MergeError
from evohub.files import atomic_write, replace_dir, write_json
from evohub.merging.io import DTYPES, CheckpointReader, ShardedWriter
from evohub.merging.ps import Model, merged_tensors, plan_tensors, workspace_for
from evohub.progress import bar as progress_bar
from evohub.spec import Recipe

PIPELINE_INDEX = "model_index.json"
UNET = "unet"
#: diffusers' weight file stem
STEM = "diffusion_pytorch_model"
_WEIGHTS = re.compile(r"^(?P<stem>[A-Za-z_]+?)(?:\.(?P<variant>[A-Za-z0-9_]+))?(?:-\d{5}-of-\d{5})?\.safetensors$")


def is_pipeline(directory: str | Path) -> bool:
    """True for a diffusers pipeline directory (it has ``model_index.json``)."""
    return (Path(directory) / PIPELINE_INDEX).is_file()


def read_index(directory: str | Path) -> dict:
    path = Path(directory) / PIPELINE_INDEX
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise MergeError(f"{path}: not valid JSON: {e}") from e


def components(index: dict) -> list[str]:
    """The component folders a ``model_index.json`` names (entries ``[library, class]``; null ones skipped)."""
    return [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0] is not None]


def weight_files(folder: Path) -> tuple[str | None, list[str]]:
    """(index file or None, the weight files) of one component folder: the files without a
    variant when there are any, else the one variant present; several variants and no plain
    files is an error naming them."""
    by_variant: dict[str | None, list[str]] = {}
    for p in sorted(folder.glob("*.safetensors")):
        m = _WEIGHTS.match(p.name)
        if m:
            by_variant.setdefault(m["variant"], []).append(p.name)
    if not by_variant:
        raise MergeError(f"{folder}: no *.safetensors weights")
    if None in by_variant:
        variant = None
    elif len(by_variant) == 1:
        variant = next(iter(by_variant))
    else:
        raise MergeError(f"{folder}: several weight variants ({', '.join(sorted(by_variant))}) and no plain files")
    files = by_variant[variant]
    stem = _WEIGHTS.match(files[0])["stem"]  # type: ignore[index]
    index = f"{stem}{'.' + variant if variant else ''}.safetensors.index.json"
    return (index if (folder / index).is_file() else None), files


def unet_model(directory: Path, label: str) -> Model:
    """One input's UNet as a merge input: its tensors and its config."""
    folder = directory / UNET
    if not (folder / "config.json").is_file():
        raise MergeError(f"{directory}: no unet/config.json; is {label} a diffusion pipeline?")
    index, files = weight_files(folder)
    reader = CheckpointReader(folder, index) if index else CheckpointReader(folder, files=files)
    return Model(label=label, tensors=reader, config=json.loads((folder / "config.json").read_text()))


def copy_component(src: Path, dst: Path) -> None:
    """Copy one component folder: its files but the weights, then the weights :func:`weight_files`
    picks, under their plain names when they are a variant (bytes unchanged; an index rewritten to
    match), so the output loads without ``variant=``."""
    dst.mkdir(parents=True)
    weights = [p for p in src.glob("*.safetensors*") if _WEIGHTS.match(p.name.removesuffix(".index.json"))]
    for p in sorted(src.iterdir()):
        if p.is_file() and p not in weights and not p.name.endswith(".safetensors.index.json"):
            shutil.copy2(p, dst / p.name)
    if not weights:
        return
    index, files = weight_files(src)
    plain = {f: _plain(f) for f in files}
    for f, name in plain.items():
        shutil.copy2(src / f, dst / name)
    if index is not None:
        data = json.loads((src / index).read_text())
        data["weight_map"] = {k: plain[v] for k, v in data["weight_map"].items()}
        write_json(dst / _plain(index), data)


def _plain(name: str) -> str:
    """``model.fp16-00001-of-00002.safetensors`` -> ``model-00001-of-00002.safetensors``."""
    return re.sub(r"^([A-Za-z_]+?)\.[A-Za-z0-9_]+(?=(-\d{5}-of-\d{5})?\.safetensors)", r"\1", name)


def component_sources(recipe: Recipe, primary: int, names: Sequence[str]) -> dict[str, int]:
    """Each component but the UNet -> the input it is copied from (an index into ``recipe.inputs()``)."""
    offset = 1 if recipe.base_model is not None else 0
    chosen = {c: (0 if v == "base" else v + offset) for c, v in (recipe.components or {}).items()}
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        raise MergeError(f"components: {unknown[0]!r} is not a component of the pipeline ({', '.join(names)})")
    return {c: chosen.get(c, primary) for c in names if c != UNET}


def merge_pipeline(recipe: Recipe, dirs: Sequence[Path], out: Path, *, device: str = "cpu",
                   shard_bytes: int = 2 << 30, progress: bool = False) -> Path:  # fmt: skip
    """Build ``recipe`` (a parameter-space merge of diffusion pipelines) into ``out``: the merged
    UNet in the recipe's dtype, every other component copied from its input, model_index.json.
    Written beside ``out`` and renamed into place when complete."""
    ps = recipe.parameter_space
    if ps is None or recipe.data_flow_space is not None:
        raise MergeError("a diffusion pipeline merges in parameter space only (no data_flow_space)")
    if ps.layer_groups != 1:
        raise MergeError("parameter_space.layer_groups: a UNet has no decoder layers; use 1, and overrides "
                         "patterns for tensor groups (attn: 'to_q|to_k|to_v|to_out\\.0')")  # fmt: skip
    refs = recipe.inputs()
    labels = [r.display() for r in refs]
    for d, label in zip(dirs, labels, strict=True):
        if not is_pipeline(d):
            raise MergeError(f"{label}: no {PIPELINE_INDEX}; a recipe merges pipelines with pipelines only")
    inputs = [unet_model(Path(d), label) for d, label in zip(dirs, labels, strict=True)]
    plan = plan_tensors(ps, inputs, recipe.base_model is not None)
    index = read_index(dirs[plan.primary])
    names = components(index)
    if UNET not in names:
        raise MergeError(f"{labels[plan.primary]}: its {PIPELINE_INDEX} names no unet")
    sources = component_sources(recipe, plan.primary, names)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        ws = workspace_for(recipe, device)
        tensors = merged_tensors(recipe, plan, inputs, ws, DTYPES[recipe.dtype])
        bar = progress_bar(len(plan.tasks), "merge unet", "tensor", disable=not progress)
        with bar, ShardedWriter(partial / UNET, shard_bytes, stem=STEM) as writer:
            for name, t in tensors:
                writer.add(name, t)
                bar.update()
        config = json.loads((Path(dirs[plan.primary]) / UNET / "config.json").read_text())
        write_json(partial / UNET / "config.json", config)
        for comp, k in sources.items():
            src = Path(dirs[k]) / comp
            if not src.is_dir():
                raise MergeError(f"{labels[k]}: has no {comp}/ component")
            index[comp] = read_index(dirs[k]).get(comp, index[comp])
            copy_component(src, partial / comp)
        write_json(partial / PIPELINE_INDEX, index)
        atomic_write(partial / "recipe.yaml", recipe.to_yaml(out.resolve()))
        replace_dir(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out
