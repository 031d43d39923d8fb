"""LoRA weights fused into a merged UNet at a scale (docs/design.md#lora-fusion).

A LoRA file holds, for some UNet modules, two low-rank factors: ``down`` (r × in) and ``up``
(out × r), and optionally ``alpha``. Fused at scale s, the module's weight becomes

    W' = W + s · (alpha / r) · up @ down          (a convolution: the factors' flattened product)

computed in float32 on the merged tensor as the recipe's dtype stores it, then stored in that
dtype again; so the merge to disk and a candidate merged in memory give the same bits.

Two key layouts are read (safetensors only):

- kohya's, which SDXL-Lightning's ``*_lora.safetensors`` uses: ``lora_unet_<module path with
  dots as underscores>.lora_down.weight``, ``.lora_up.weight``, ``.alpha``; the module is found
  by that spelling among the UNet's own tensor names (two modules spelt alike are an error);
- PEFT's (diffusers' own ``save_lora_weights``): ``unet.<module>.lora_A.weight``,
  ``unet.<module>.lora_B.weight`` (alpha = r).

Text-encoder factors (``lora_te*``, ``text_encoder.*``) are not fused: only the UNet is merged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import torch

from evohub.errors import MergeError

_KOHYA, _PEFT = "lora_unet_", "unet."
_TEXT = ("lora_te", "text_encoder")


class LoraFactors:
    """The UNet factors of one LoRA file, by the UNet weight they change (``<module>.weight``)."""

    def __init__(self, path: str | Path, unet_names: Iterable[str]):
        from safetensors.torch import load_file

        self.path = Path(path)
        try:
            raw = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise MergeError(f"{path}: not a safetensors LoRA file ({e})") from e
        modules = {n[: -len(".weight")] for n in unet_names if n.endswith(".weight")}
        spelt: dict[str, str] = {}
        for m in modules:
            key = m.replace(".", "_")
            if key in spelt:
                raise MergeError(f"{path}: UNet modules {spelt[key]!r} and {m!r} are spelt alike in kohya keys")
            spelt[key] = m
        #: weight name -> (down, up, alpha / r)
        self.factors: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
        for key, down in raw.items():
            if key.startswith(_TEXT):
                continue
            if key.startswith(_KOHYA) and key.endswith(".lora_down.weight"):
                stem = key[: -len(".lora_down.weight")]
                module = spelt.get(stem[len(_KOHYA) :])
                up, alpha = raw.get(f"{stem}.lora_up.weight"), raw.get(f"{stem}.alpha")
            elif key.startswith(_PEFT) and key.endswith(".lora_A.weight"):
                stem = key[: -len(".lora_A.weight")]
                module = stem[len(_PEFT) :] if stem[len(_PEFT) :] in modules else None
                up, alpha = raw.get(f"{stem}.lora_B.weight"), None
            else:
                continue
            if module is None:
                raise MergeError(f"{path}: {key} names no module of this UNet")
            if up is None:
                raise MergeError(f"{path}: {key} has no matching up factor")
            r = down.shape[0]
            self.factors[f"{module}.weight"] = (down, up, (float(alpha) if alpha is not None else r) / r)
        if not self.factors:
            raise MergeError(f"{path}: no UNet LoRA factors (kohya lora_unet_* or PEFT unet.*.lora_A/B keys)")

    def delta(self, name: str, shape: Sequence[int]) -> torch.Tensor:
        """(alpha / r) · up @ down for the weight ``name``, float32, in its shape."""
        down, up, ratio = self.factors[name]
        d = up.float().flatten(1) @ down.float().flatten(1)
        if d.numel() != _numel(shape):
            raise MergeError(f"{self.path}: the factors of {name} make {tuple(d.shape)}, not {tuple(shape)}")
        return (ratio * d).reshape(shape)


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def fuse(name: str, t: torch.Tensor, loras: Sequence[tuple[LoraFactors, float]]) -> torch.Tensor:
    """``t`` with every LoRA that changes ``name`` fused at its scale (a new tensor; ``t`` itself
    when none does)."""
    hits = [(f, s) for f, s in loras if name in f.factors and s != 0]
    if not hits:
        return t
    out = t.float()
    for f, s in hits:
        out = out + s * f.delta(name, t.shape).to(out.device)
    return out.to(t.dtype)


def fused_tensors(tensors: Iterator[tuple[str, torch.Tensor]], loras: Sequence[tuple[LoraFactors, float]]):
    """The merge's (name, tensor) stream with the LoRAs fused."""
    for name, t in tensors:
        yield name, fuse(name, t, loras)


@torch.no_grad()
def fuse_into(params: Mapping[str, torch.Tensor], loras: Sequence[tuple[LoraFactors, float]]) -> int:
    """Fuse the LoRAs into resident parameters in place (after a candidate's merge wrote them);
    returns how many tensors changed."""
    n = 0
    for name in sorted({k for f, s in loras if s != 0 for k in f.factors}):
        dest = params.get(name)
        if dest is None:
            raise MergeError(f"the resident UNet has no parameter {name!r}")
        dest.copy_(fuse(name, dest, loras))
        n += 1
    return n
