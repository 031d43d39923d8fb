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
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from evohub.errors import MergeError
from evohub.files import atomic_write, staged_dir, write_json
from evohub.hub.pipelines import (
    PIPELINE_INDEX,
    UNET,
    WEIGHTS,
    by_variant,
    choose_variant,
    components,
    own_code,
    read_json,
)
from evohub.merging.io import DTYPES, CheckpointReader, ShardedWriter
from evohub.merging.lora import LoraFactors, fused_tensors
from evohub.merging.ps import Model, merged_tensors, plan_tensors, workspace_for
from evohub.progress import bar as progress_bar
from evohub.spec import Recipe

#: diffusers' weight file stem
STEM = "diffusion_pytorch_model"


def is_pipeline(directory: str | Path) -> bool:
    """True for a diffusers pipeline directory (``model_index.json``) or a UNet alone (``unet/config.json``)."""
    return (Path(directory) / PIPELINE_INDEX).is_file() or (Path(directory) / UNET / "config.json").is_file()


def primary_index(directory: Path, label: str) -> dict:
    """The model_index.json of the output's primary input, which gives the other components: a
    pipeline of diffusers and transformers classes (the output must load without remote code)."""
    if not (Path(directory) / PIPELINE_INDEX).is_file():
        raise MergeError(f"{label}: a UNet alone cannot give the pipeline's other components; list a whole "
                         "pipeline first (the first input the method reads is the primary)")  # fmt: skip
    index = read_index(directory)
    if own := own_code(index):
        raise MergeError(f"{label}: its model_index.json names code of its own ({'; '.join(own)}); evohub never "
                         "runs remote code: list a pipeline of diffusers classes first, and take this one's "
                         "components by name (components: {text_encoder: <source>})")  # fmt: skip
    return index


def read_index(directory: str | Path) -> dict:
    return read_json(Path(directory) / PIPELINE_INDEX)


def weight_files(folder: Path) -> tuple[str | None, list[str]]:
    """(index file or None, the weight files) of one component folder, in the variant
    :func:`~evohub.hub.pipelines.choose_variant` picks (fp16 when there, else the plain files)."""
    weights = by_variant(p.name for p in folder.glob("*.safetensors"))
    if not weights:
        raise MergeError(f"{folder}: no *.safetensors weights")
    try:
        variant = choose_variant(weights)
    except MergeError as e:
        raise MergeError(f"{folder}: {e}") from None
    files = weights[variant]
    stem = WEIGHTS.match(files[0])["stem"]  # type: ignore[index]
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
    weights = [p for p in src.glob("*.safetensors*") if WEIGHTS.match(p.name.removesuffix(".index.json"))]
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


def split_inputs(recipe: Recipe, dirs: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """(the merge's input directories, each LoRA's file) from the directories of ``recipe.inputs()``."""
    n = len(recipe.loras)
    merge, lora_dirs = [Path(d) for d in dirs[: len(dirs) - n]], [Path(d) for d in dirs[len(dirs) - n :]]
    files = [d / x.source.file for d, x in zip(lora_dirs, recipe.loras, strict=True)]  # type: ignore[operator]
    for f, x in zip(files, recipe.loras, strict=True):
        if not f.is_file():
            raise MergeError(f"{x.source.display()}: has no {x.source.file}")
    return merge, files


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
    dirs, lora_files = split_inputs(recipe, dirs)
    refs = recipe.inputs()[: len(dirs)]
    labels = [r.display() for r in refs]
    for d, label in zip(dirs, labels, strict=True):
        if not is_pipeline(d):
            raise MergeError(f"{label}: no {PIPELINE_INDEX} (nor unet/); a recipe merges pipelines with pipelines only")
    inputs = [unet_model(Path(d), label) for d, label in zip(dirs, labels, strict=True)]
    plan = plan_tensors(ps, inputs, recipe.base_model is not None)
    index = primary_index(dirs[plan.primary], labels[plan.primary])
    names = components(index)
    if UNET not in names:
        raise MergeError(f"{labels[plan.primary]}: its {PIPELINE_INDEX} names no unet")
    sources = component_sources(recipe, plan.primary, names)
    with staged_dir(out) as partial:
        ws = workspace_for(recipe, device)
        loras = [(LoraFactors(f, inputs[plan.primary].tensors.names()), x.scale)
                 for f, x in zip(lora_files, recipe.loras, strict=True)]  # fmt: skip
        tensors = fused_tensors(merged_tensors(recipe, plan, inputs, ws, DTYPES[recipe.dtype]), loras)
        bar = progress_bar(len(plan.tasks), "merge unet", "tensor", disable=not progress)
        with bar, ShardedWriter(partial / UNET, shard_bytes, stem=STEM) as writer:
            for name, t in tensors:
                writer.add(name, t)
                bar.update()
        shutil.copy2(Path(dirs[plan.primary]) / UNET / "config.json", partial / UNET / "config.json")  # as it is
        for comp, k in sources.items():
            src = Path(dirs[k]) / comp
            if not src.is_dir():
                raise MergeError(f"{labels[k]}: has no {comp}/ component")
            index[comp] = read_index(dirs[k]).get(comp, index[comp])
            copy_component(src, partial / comp)
            if comp == "scheduler" and recipe.scheduler:
                config = partial / comp / "scheduler_config.json"
                write_json(config, json.loads(config.read_text()) | dict(recipe.scheduler))
        write_json(partial / PIPELINE_INDEX, index)
        atomic_write(partial / "recipe.yaml", recipe.to_yaml(out.resolve()))
    return out


def unet_figures(config: dict, latent_size: int) -> tuple[int, int, float]:
    """(parameters, the largest tensor's elements, FLOPs of one forward for one image of
    ``latent_size``² latents: the image size over the VAE's scale factor, 128 for SDXL at 1024
    pixels) of a UNet config, counted on PyTorch's meta device (nothing allocated)."""
    import torch
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(cfg)
    sizes = [p.numel() for p in unet.parameters()]
    meta = {"device": "meta"}
    kw = {}
    if cfg.get("addition_embed_type") == "text_time":
        pooled = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]
        kw["added_cond_kwargs"] = {"text_embeds": torch.empty(1, pooled, **meta), "time_ids": torch.empty(1, 6, **meta)}
    cross = cfg.get("cross_attention_dim") or 768
    with FlopCounterMode(display=False) as counter:
        unet(torch.empty(1, cfg.get("in_channels", 4), latent_size, latent_size, **meta), torch.tensor([999], **meta),
             torch.empty(1, 77, cross if isinstance(cross, int) else cross[0], **meta), **kw)  # fmt: skip
    return sum(sizes), max(sizes), float(counter.get_total_flops())
