"""The transformers backend: batched generation with left padding, stop strings, chat templates,
and prompts with images for LLaVA-style VLMs (through the model's processor).

    >>> be = HFBackend.load("runs/x/model", device="cuda")                       # doctest: +SKIP
    >>> be.generate(["問題: 2+3は?"], Sampling(max_new_tokens=64, stop=("###",)))

Prompts are tokenised once (cached by text) and generated in batches of similar length;
outputs are cut at the first stop string (the stop string is not included, as in vLLM).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import transformers

from evohub.errors import ScoreError
from evohub.models import kind_of
from evohub.score.backends import Prompt, Sampling, VisionPrompt, continuation, cut_at_stop, render


def load_model(
    path: str | Path, device: str = "cpu", dtype: torch.dtype | None = None, tokenizer: str | Path | None = None
):
    """(model, tokenizer, processor) of a model directory, loaded as its kind says
    (:mod:`evohub.models`): a VLM gets its processor and the processor's tokenizer."""
    from evohub.merging.arch import read_config
    from evohub.merging.io import read_header

    for f in sorted(Path(path).glob("*.safetensors")):  # a truncated or damaged file: one line naming it
        read_header(f)
    kind = kind_of(read_config(path))
    auto = getattr(transformers, kind.auto_class)
    try:
        model = auto.from_pretrained(path, dtype=dtype or "auto").to(device).eval()
    except (OSError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ScoreError(f"{path}: cannot load the model: {first}") from e
    if kind.processor:
        processor = transformers.AutoProcessor.from_pretrained(path)
        return model, processor.tokenizer, processor
    return model, transformers.AutoTokenizer.from_pretrained(tokenizer or path), None


class _StopStrings:
    """Stops a row once its decoded continuation contains a stop string (any tokenizer)."""

    def __init__(self, tokenizer, stop: Sequence[str], prompt_width: int):
        self.tokenizer, self.stop, self.width = tokenizer, tuple(stop), prompt_width

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.width :], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stop) for t in texts], device=input_ids.device)


def _generation_kwargs(sampling: Sampling, pad: int) -> dict:
    greedy = sampling.temperature == 0
    kwargs = {
        "do_sample": not greedy,
        "max_new_tokens": sampling.max_new_tokens,
        "pad_token_id": pad,
        "num_beams": sampling.num_beams,
        "repetition_penalty": sampling.repetition_penalty,
    }
    if not greedy:
        return kwargs | {"temperature": sampling.temperature, "top_p": sampling.top_p}
    return kwargs | {"temperature": None, "top_p": None, "top_k": None}


class HFBackend:
    """``processor`` (a VLM's, e.g. LlavaProcessor) is needed for :class:`VisionPrompt` prompts."""

    def __init__(self, model, tokenizer, batch_size: int = 16, processor=None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.processor = processor
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.batch_size = batch_size
        self._ids: dict[str, list[int]] = {}
        self._params = None

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        batch_size: int = 16,
        tokenizer: str | Path | None = None,
    ) -> HFBackend:
        """A model directory loaded as its kind says (a VLM with its processor); ``tokenizer``
        names another directory to take an LLM's tokenizer from."""
        model, tok, processor = load_model(path, device, dtype, tokenizer)
        return cls(model, tok, batch_size, processor)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def render(self, prompt: Prompt) -> str:
        return render(self.tokenizer, prompt)

    def _encode(self, text: str) -> list[int]:
        ids = self._ids.get(text)
        if ids is None:
            ids = self._ids[text] = self.tokenizer(text).input_ids
        return ids

    @torch.no_grad()
    def generate(self, prompts: Sequence[Prompt], sampling: Sampling) -> list[str]:
        if any(isinstance(p, VisionPrompt) for p in prompts):
            return self._generate_vision(prompts, sampling)
        encoded = [self._encode(self.render(p)) for p in prompts]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        out: list[str] = [""] * len(encoded)
        pad = self.tokenizer.pad_token_id
        if sampling.temperature != 0:
            torch.manual_seed(sampling.seed)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            width = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):  # left padding
                ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
                mask[row, width - len(encoded[i]) :] = 1
            kwargs = _generation_kwargs(sampling, pad)
            if sampling.stop:
                kwargs["stopping_criteria"] = transformers.StoppingCriteriaList(
                    [_StopStrings(self.tokenizer, sampling.stop, width)]
                )
            gen = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), **kwargs)
            for row, i in enumerate(idx):
                out[i] = cut_at_stop(self._continuation(encoded[i], gen[row, width:].tolist()), sampling.stop)
        return out

    @torch.no_grad()
    def _generate_vision(self, prompts: Sequence[Prompt], sampling: Sampling) -> list[str]:
        """Prompts with images, batched through the processor (left padding)."""
        if self.processor is None:
            raise ValueError("prompts with images need a VLM and its processor (HFBackend.load of a VLM)")
        vision = [p if isinstance(p, VisionPrompt) else VisionPrompt(self.render(p)) for p in prompts]
        order = sorted(range(len(vision)), key=lambda i: len(vision[i].text))
        out: list[str] = [""] * len(vision)
        pad = self.tokenizer.pad_token_id
        self.tokenizer.padding_side = "left"
        if sampling.temperature != 0:
            torch.manual_seed(sampling.seed)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            images = [im.convert("RGB") for i in idx for im in vision[i].images]
            batch = self.processor(
                images=images or None,
                text=[vision[i].text for i in idx],
                padding=True,
                return_tensors="pt",
            ).to(self.device)
            if "pixel_values" in batch:
                batch["pixel_values"] = batch["pixel_values"].to(self.model.dtype)
            width = batch["input_ids"].shape[1]
            kwargs = _generation_kwargs(sampling, pad)
            if sampling.stop:
                kwargs["stopping_criteria"] = transformers.StoppingCriteriaList(
                    [_StopStrings(self.tokenizer, sampling.stop, width)]
                )
            gen = self.model.generate(**batch, **kwargs)
            mask = batch["attention_mask"]
            for row, i in enumerate(idx):
                prompt = batch["input_ids"][row][mask[row].bool()].tolist()
                out[i] = cut_at_stop(self._continuation(prompt, gen[row, width:].tolist()), sampling.stop)
        return out

    def _continuation(self, prompt: list[int], new: list[int]) -> str:
        pad = self.tokenizer.pad_token_id
        while new and new[-1] == pad and pad != self.tokenizer.eos_token_id:
            new.pop()
        return continuation(self.tokenizer, prompt, new)

    @torch.no_grad()
    def load_weights(self, named: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy tensors into the model's parameters (by checkpoint name), in place."""
        if self._params is None:
            self._params = dict(self.model.named_parameters())
        for name, t in named:
            self._params[name].copy_(t)

    def close(self) -> None:
        self.model = None
