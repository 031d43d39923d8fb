"""The transformers backend: batched generation with left padding, stop strings, chat templates,
and prompts with images for LLaVA-style VLMs (through the model's processor).

    >>> be = HFBackend.load("runs/x/model", device="cuda")                       # doctest: +SKIP
    >>> be.generate(["問題: 2+3は?"], Sampling(max_new_tokens=64, stop=("###",)))

Prompts are tokenised once (cached by text) and generated in batches of similar length;
outputs are cut at the first stop string (the stop string is not included, as in vLLM).

A model is loaded as its directory says (``native``) or, for a LLaVA or LLaVA-NeXT VLM, as
Sakana AI's released evaluation code loaded EvoVLM-JP (``llava``, docs/design.md#the-paper-vqa-suite):

    >>> with be.loaded_as("llava") as paper:                                     # doctest: +SKIP
    ...     paper.generate(prompts, Sampling(max_new_tokens=512, num_beams=5, repetition_penalty=1.5))
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
import transformers

from evohub.errors import ScoreError
from evohub.models import kind_of
from evohub.score.backends import (
    Prompt,
    Sampling,
    VisionPrompt,
    continuation,
    count_answer,
    cut_at_stop,
    new_usage,
    render,
    written_out,
)
from evohub.score.loops import loop_period

#: how a model is loaded: ``native`` as its directory says (its kind's auto class and processor);
#: ``llava`` as Sakana AI's released code loaded EvoVLM-JP (:func:`llava_model`, :func:`llava_processor`)
LOADINGS = ("native", "llava")
#: the dtype Sakana AI's configs load VLMs in (``torch_dtype: torch.float16``)
LLAVA_DTYPE = torch.float16
#: the image processor settings a CLIP image processor takes from a LLaVA(-NeXT) one
_CLIP_SETTINGS = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
                  "do_normalize", "image_mean", "image_std", "do_convert_rgb")  # fmt: skip


def llava_config(config) -> transformers.LlavaConfig:
    """The ``llava`` config of a LLaVA or LLaVA-NeXT model's config: the same vision and text
    configs (so the rope is the text config's, unchanged), image token, projector and feature
    selection; no ``image_grid_pinpoints`` (no any-resolution tiles, no image newline)."""
    if config.model_type not in ("llava", "llava_next"):
        raise ScoreError(f"the llava loading takes a LLaVA or LLaVA-NeXT model, not {config.model_type!r}")
    keys = ("image_token_index", "projector_hidden_act", "vision_feature_select_strategy", "vision_feature_layer",
            "multimodal_projector_bias", "tie_word_embeddings", "image_seq_length")  # fmt: skip
    settings = {k: getattr(config, k) for k in keys if getattr(config, k, None) is not None}
    out = transformers.LlavaConfig(
        vision_config=config.vision_config.to_dict(), text_config=config.text_config.to_dict(), **settings
    )
    out.architectures = ["LlavaForConditionalGeneration"]
    return out


@torch.no_grad()
def llava_model(model, dtype: torch.dtype = LLAVA_DTYPE):
    """A ``LlavaForConditionalGeneration`` over a loaded LLaVA or LLaVA-NeXT model's tensors, as
    ``LlavaForConditionalGeneration.from_pretrained(dir, torch_dtype=dtype)`` of a ``llava``
    config would load them: the two architectures name every tensor alike but LLaVA-NeXT's
    image newline, which LLaVA has no use for. Tensors already in ``dtype`` are shared, not
    copied (so weights written into ``model`` in place are what the result computes with);
    buffers (rotary frequencies, position ids) are shared as they are."""
    if type(model).__name__ == "LlavaForConditionalGeneration" and model.dtype == dtype:
        return model
    config = llava_config(model.config)
    with torch.device("meta"):
        out = transformers.LlavaForConditionalGeneration(config)
    state = {k: t for k, t in model.state_dict().items() if not k.endswith("image_newline")}
    out.load_state_dict(state, strict=True, assign=True)
    buffers = dict(model.named_buffers())
    for name, _ in list(out.named_buffers()):
        owner, _, leaf = name.rpartition(".")
        out.get_submodule(owner)._buffers[leaf] = buffers[name]
    for p in out.parameters():
        if p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)
    out.generation_config = copy.deepcopy(model.generation_config)
    return out.eval()


def llava_processor(processor, config):
    """A ``LlavaProcessor`` for the ``llava`` loading: the model's tokenizer, and a CLIP image
    processor (PIL: resize the shortest edge, centre crop, normalise) with the settings of its
    LLaVA or LLaVA-NeXT image processor, so an image is one crop (576 tokens at 336 px), never
    any-resolution tiles. The image token count follows the model's ``config`` (patch size,
    feature selection, CLIP's class token), also for a processor that left it to the model."""
    image = processor.image_processor
    if type(image).__name__.startswith(("CLIP", "LlavaNext")):
        clip = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
        settings = image.to_dict()
        image = clip(**{k: settings[k] for k in _CLIP_SETTINGS if k in settings})
    vision = config.vision_config
    clip_tower = vision.model_type == "clip_vision_model"
    return transformers.LlavaProcessor(
        image_processor=image,
        tokenizer=processor.tokenizer,
        patch_size=vision.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=1 if clip_tower else getattr(processor, "num_additional_image_tokens", 0),
        image_token=getattr(processor, "image_token", None) or "<image>",
    )


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


class _LoopStop:
    """Stops a row once its new tokens end in a loop (:func:`evohub.score.loops.loop_period`)."""

    def __init__(self, span: int, prompt_width: int):
        self.span, self.width = span, prompt_width

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        new = input_ids[:, self.width :]
        if new.shape[1] < self.span:
            return torch.zeros(new.shape[0], dtype=torch.bool, device=input_ids.device)
        tails = new[:, -self.span :].tolist()
        return torch.tensor([loop_period(t, self.span) is not None for t in tails], device=input_ids.device)


def _stopping(sampling: Sampling, tokenizer, width: int) -> dict:
    """The stopping criteria of ``sampling``: its stop strings, its loop stop."""
    criteria = []
    if sampling.stop:
        criteria.append(_StopStrings(tokenizer, sampling.stop, width))
    if sampling.loop_span:
        criteria.append(_LoopStop(sampling.loop_span, width))
    return {"stopping_criteria": transformers.StoppingCriteriaList(criteria)} if criteria else {}


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
    """``processor`` (a VLM's, e.g. LlavaProcessor) is needed for :class:`VisionPrompt` prompts;
    ``loading`` says how the model was loaded (:data:`LOADINGS`): with ``llava``, an answer is
    its new tokens decoded alone (special tokens skipped, no clean-up of spaces), as Sakana AI's
    code decoded them, instead of the continuation of the prompt's text."""

    def __init__(self, model, tokenizer, batch_size: int = 16, processor=None, loading: str = "native"):
        if loading not in LOADINGS:
            raise ScoreError(f"unknown loading {loading!r} (one of {', '.join(LOADINGS)})")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.processor = processor
        self.loading = loading
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.batch_size = batch_size
        self._ids: dict[str, list[int]] = {}
        self._params = None
        #: what generation has cost so far (docs/design.md#per-item-scores-and-the-cost-ledger)
        self.usage = new_usage()

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        batch_size: int = 16,
        tokenizer: str | Path | None = None,
        loading: str = "native",
    ) -> HFBackend:
        """A model directory loaded as its kind says (a VLM with its processor), or as
        ``loading`` says (``llava``: in float16 unless ``dtype``); ``tokenizer`` names another
        directory to take an LLM's tokenizer from."""
        model, tok, processor = load_model(path, device, dtype, tokenizer)
        backend = cls(model, tok, batch_size, processor)
        if loading == "native":
            return backend
        with backend.loaded_as(loading, dtype) as other:
            return other

    @contextmanager
    def loaded_as(self, loading: str, dtype: torch.dtype | None = None) -> Iterator[HFBackend]:
        """This backend's model as ``loading`` loads it, for the ``with`` block: itself when it
        is loaded so; for ``llava``, a ``LlavaForConditionalGeneration`` over the resident
        tensors (:func:`llava_model`, float16 unless ``dtype``) with :func:`llava_processor`:
        built from the weights in memory, so a candidate written in place is what is scored."""
        if loading == self.loading:
            yield self
            return
        if loading != "llava" or self.processor is None:
            raise ScoreError(f"the {loading!r} loading takes a LLaVA or LLaVA-NeXT VLM loaded natively")
        model = llava_model(self.model, dtype or LLAVA_DTYPE)
        processor = llava_processor(self.processor, self.model.config)
        yield HFBackend(model, processor.tokenizer, self.batch_size, processor, loading=loading)

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

    def generate(self, prompts: Sequence[Prompt], sampling: Sampling) -> list[str]:
        start = time.perf_counter()
        try:
            if any(isinstance(p, VisionPrompt) for p in prompts):
                return self._generate_vision(prompts, sampling)
            return self._generate_text(prompts, sampling)
        finally:
            self.usage["generate_s"] += time.perf_counter() - start

    def _count(self, prompt: int, new: list[int], sampling: Sampling) -> list[int]:
        """Count a row's prompt tokens and the tokens generated for it: up to its end of
        sequence (counted) or its first padding (a row stopped early is padded). Returns the
        row's answer tokens: as generated, or a row stopped in a loop with its loop written on
        to the budget (:func:`~evohub.score.backends.written_out`)."""
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        n = len(new)
        for k, t in enumerate(new):
            if t in (eos, pad):
                n = k
                break
        if (looped := written_out(new[:n], sampling)) is not None:
            count_answer(self.usage, prompt, n)  # stopped in its loop: it never ended (pad may be eos)
            return looped
        count_answer(self.usage, prompt, n + 1 if n < len(new) and new[n] == eos else n)
        return new

    @torch.no_grad()
    def _generate_text(self, prompts: Sequence[Prompt], sampling: Sampling) -> list[str]:
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
            kwargs = _generation_kwargs(sampling, pad) | _stopping(sampling, self.tokenizer, width)
            gen = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), **kwargs)
            self.usage["steps"] += gen.shape[1] - width
            for row, i in enumerate(idx):
                new = self._count(len(encoded[i]), gen[row, width:].tolist(), sampling)
                out[i] = cut_at_stop(self._continuation(encoded[i], new), sampling.stop)
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
            kwargs = _generation_kwargs(sampling, pad) | _stopping(sampling, self.tokenizer, width)
            gen = self.model.generate(**batch, **kwargs)
            self.usage["steps"] += gen.shape[1] - width
            mask = batch["attention_mask"]
            for row, i in enumerate(idx):
                prompt = batch["input_ids"][row][mask[row].bool()].tolist()
                new = self._count(len(prompt), gen[row, width:].tolist(), sampling)
                if self.loading == "llava":  # Sakana AI's: the new tokens alone, as batch_decode gives them
                    text = self.tokenizer.decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=False)
                else:
                    text = self._continuation(prompt, new)
                out[i] = cut_at_stop(text, sampling.stop)
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
