"""A resident diffusion pipeline that generates images for a text-to-image task.

The pipeline is loaded once from the merge's primary input, with the components a recipe takes
whole from other inputs (``components``: JSDXL's text encoder and tokenizer) swapped in; a
candidate's UNet is written into ``pipe.unet``'s parameters in place by
:class:`~evohub.merging.ps.ResidentMerge` (docs/design.md#image-fitness). Each image starts from
noise drawn by a generator seeded with its row's seed, so a candidate's images differ from
another's only by the weights.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch

from evohub.hub.pipelines import LIBRARIES, own_code
from evohub.score.backends import new_usage


class DiffusionBackend:
    def __init__(self, pipe, device: str):
        self.pipe, self.device = pipe, device
        self.usage = new_usage()

    @classmethod
    def load(cls, primary: str | Path, components: dict[str, str | Path], device: str, dtype: torch.dtype):
        """The pipeline in ``primary``, each of ``components`` (name -> pipeline dir) loaded from its own."""
        from diffusers import DiffusionPipeline

        from evohub.errors import ScoreError
        from evohub.merging.diffusion import read_index

        if own := own_code(read_index(primary)):  # never handed to diffusers, which would import it
            raise ScoreError(f"{primary}: its model_index.json names code of its own ({'; '.join(own)}); "
                             "evohub never runs remote code")  # fmt: skip
        pipe = DiffusionPipeline.from_pretrained(primary, dtype=dtype, variant=_variant(Path(primary) / "unet"))
        for name, src in components.items():
            pipe.register_modules(**{name: load_component(Path(src), name, dtype)})
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe.to(device), device)

    def images(self, prompts: Sequence[str], seeds: Sequence[int], *, steps: int, guidance_scale: float, size: int,
               batch_size: int = 4) -> list:  # fmt: skip
        """One PIL image per prompt, each from the noise its seed draws."""
        start, out = time.perf_counter(), []
        for i in range(0, len(prompts), batch_size):
            gens = [torch.Generator(self.device).manual_seed(s) for s in seeds[i : i + batch_size]]
            with torch.no_grad():
                out += self.pipe(list(prompts[i : i + batch_size]), num_inference_steps=steps, guidance_scale=guidance_scale,
                                 height=size, width=size, generator=gens).images  # fmt: skip
        self.usage["generate_s"] += time.perf_counter() - start
        return out

    def close(self) -> None:
        self.pipe = None


def _variant(folder: Path) -> str | None:
    """The weight variant a component folder's files are read from (None: the plain files)."""
    from evohub.hub.pipelines import WEIGHTS
    from evohub.merging.diffusion import weight_files

    if not any(folder.glob("*.safetensors")):
        return None
    _, files = weight_files(folder)
    return WEIGHTS.match(files[0])["variant"]  # type: ignore[index]


def load_component(pipeline: Path, name: str, dtype: torch.dtype):
    """One component of the pipeline in ``pipeline``, by the class its model_index.json names."""
    import importlib

    from evohub.errors import ScoreError
    from evohub.merging.diffusion import read_index

    entry = read_index(pipeline).get(name)
    if not (isinstance(entry, list) and len(entry) == 2 and entry[0] in LIBRARIES):
        raise ScoreError(f"{pipeline}: model_index.json names no {name} of {' or '.join(LIBRARIES)} ({entry!r})")
    cls = getattr(importlib.import_module(entry[0]), entry[1])
    folder = pipeline / name
    if not any(folder.glob("*.safetensors")):  # a tokenizer, a scheduler
        return cls.from_pretrained(folder)
    return cls.from_pretrained(folder, dtype=dtype, variant=_variant(folder))
