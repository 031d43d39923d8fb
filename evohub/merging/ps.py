"""Parameter-space merges: a recipe's ``parameter_space`` applied tensor by tensor.

One function, :func:`merge_into`, merges a tensor for both consumers:

- :func:`merged_tensors` → :func:`evohub.merging.build.merge_to_disk` streams the merged tensors
  into sharded safetensors (``evohub merge``);
- :class:`ResidentMerge` keeps the sources in (accelerator) memory and writes each candidate
  recipe straight into a resident model's parameters (evolution);

so a recipe gives bit-identical weights either way on the same device.

Which tensor gets which values: decoder layer i of L belongs to layer group ⌊i·G/L⌋; the input
embeddings take group 0's values and every other tensor outside the decoder layers (final norm,
LM head) the last group's. A model's ``overrides`` are searched in order with ``re.search``
against the tensor's language-model name (``model.layers.3.self_attn.q_proj.weight``, the same
in an LLM and in a VLM); the first match supplies the values it sets.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

import torch

from evohub.errors import MergeError
from evohub.merging import fused, kernels
from evohub.merging.arch import decoder_layer_index, is_embedding, num_decoder_layers
from evohub.merging.io import DTYPES
from evohub.merging.methods import MergeMethod
from evohub.models import ModelKind, kind_of
from evohub.spec import PSRecipe, Recipe


class TensorSource(Protocol):
    """A model's tensors by name (a lazy checkpoint reader, or tensors resident in memory)."""

    def names(self) -> list[str]: ...
    def shape(self, name: str) -> tuple[int, ...]: ...
    def dtype(self, name: str) -> torch.dtype: ...
    def get(self, name: str) -> torch.Tensor: ...
    def release(self, name: str) -> None: ...


@dataclass(frozen=True)
class Model:
    """One input of a merge: its tensors, its config and how to call it in messages."""

    label: str
    tensors: TensorSource
    config: dict

    @cached_property
    def kind(self) -> ModelKind:
        return kind_of(self.config)

    @property
    def vlm(self) -> bool:
        return self.kind.vision

    @cached_property
    def by_lm_name(self) -> dict[str, str]:
        """LLM-style name → this model's own name, for its language-model tensors."""
        out = {}
        for name in self.tensors.names():
            key = self.kind.lm_name(name)
            if key is not None:
                out[key] = name
        return out


@dataclass(frozen=True)
class Task:
    """One output tensor: where it comes from and which layer group it is in."""

    name: str  # output name (the primary model's)
    key: str | None  # language-model name; None: copied from the primary model
    shape: tuple[int, ...]
    group: int
    #: rows merged (the base vocabulary's) when vocabularies differ; rows beyond: the primary's
    rows: int | None = None


@dataclass(frozen=True)
class TensorPlan:
    """The per-tensor work of a parameter-space merge, checked against every input."""

    tasks: tuple[Task, ...]
    primary: int  # index into the inputs of the model whose architecture the output has
    has_base: bool

    def input_index(self, model_index: int) -> int:
        return model_index + (1 if self.has_base else 0)


def used_inputs(method: MergeMethod, n_inputs: int, has_base: bool) -> range:
    """Indices of the inputs a method reads: the base only for the task-vector methods."""
    return range(0 if method.base or not has_base else 1, n_inputs)


def plan_tensors(ps: PSRecipe, inputs: Sequence[Model], has_base: bool) -> TensorPlan:
    """Check that every input has every merged tensor with one shape, and order the work.

    ``inputs`` are the base (when ``has_base``) followed by the recipe's models, in order. The
    output has the architecture of the VLM among the inputs the method reads, else of the
    first of them (the base for task-vector methods).
    """
    reads = used_inputs(ps.kind, len(inputs), has_base)
    used = [inputs[i] for i in reads]
    primary = next((i for i in reads if inputs[i].vlm), reads[0])
    p = inputs[primary]
    groups = ps.layer_groups
    layers = num_decoder_layers(p.config)
    if layers is None and groups > 1:  # one group needs no count (a diffusion UNet has no decoder layers)
        raise MergeError(f"{p.label}: config.json does not say how many decoder layers the model has")
    layers = layers or 1
    if groups > layers:
        raise MergeError(f"layer_groups is {groups} but {p.label} has {layers} decoder layers")
    tasks: list[Task] = []
    for name in p.tensors.names():
        key = p.kind.lm_name(name)
        shape = p.tensors.shape(name)
        if key is not None and not p.tensors.dtype(name).is_floating_point:
            key = None  # integer buffers are copied
        if key is not None:
            for m in used:
                if m.by_lm_name.get(key) is None:
                    raise MergeError(
                        f"tensor {key!r} is in {p.label} but not in {m.label}; these models cannot be merged"
                    )
            rows = _vocab_rows(ps, key, shape, used, inputs[0], p)
            for m in used:
                other = m.tensors.shape(m.by_lm_name[key])
                if other != shape and not (rows is not None and other[0] >= rows and other[1:] == shape[1:]):
                    raise MergeError(
                        f"tensor {key!r} has shape {tuple(shape)} in {p.label} but {tuple(other)} in {m.label}"
                    )
            layer = decoder_layer_index(key)
            group = layer * groups // layers if layer is not None else (0 if is_embedding(key) else groups - 1)
        else:
            group = groups - 1
        tasks.append(Task(name=name, key=key, shape=tuple(shape), group=group, rows=rows if key else None))
    for m in used:
        extra = sorted(set(m.by_lm_name) - {t.key for t in tasks if t.key})
        if extra:
            raise MergeError(f"tensor {extra[0]!r} is in {m.label} but not in {p.label}; these models cannot be merged")
    return TensorPlan(tasks=tuple(tasks), primary=primary, has_base=has_base)


def _vocab_rows(ps: PSRecipe, key: str, shape: tuple, used: Sequence[Model], ref: Model, p: Model) -> int | None:
    """The rows an embedding or LM head is merged over when the inputs' vocabularies differ: the
    base's (``inputs[0]``) with ``vocab: base``; None when all agree. A mismatch without the rule,
    or an input with fewer rows than the base, is a one-line error (docs/design.md#vocabularies)."""
    if not (is_embedding(key) or key.startswith("lm_head.")):
        return None
    if key not in ref.by_lm_name:  # a method without a base does not read it: the first input it reads
        ref = used[0]
    sizes = {m.label: m.tensors.shape(m.by_lm_name[key]) for m in used}
    sizes[ref.label] = ref.tensors.shape(ref.by_lm_name[key])
    if len({s[0] for s in sizes.values()}) == 1:
        return None
    listed = ", ".join(f"{label} {s[0]}" for label, s in sizes.items())
    if ps.vocab != "base":
        raise MergeError(
            f"vocabulary size mismatch in {key!r} ({listed}); set parameter_space.vocab: base to merge over the "
            "base vocabulary's rows, or merge models that share a vocabulary"
        )
    rows = sizes[ref.label][0]
    short = [label for label, s in sizes.items() if s[0] < rows]
    if short or shape[0] < rows:
        raise MergeError(f"{key!r}: {(short or [p.label])[0]} has fewer rows than the base vocabulary ({listed})")
    return rows


def _pick(value: float | tuple[float, ...], group: int) -> float:
    return value[group] if isinstance(value, tuple) else value


def values_for(ps: PSRecipe, k: int, key: str, group: int) -> tuple[float, float]:
    """(weight, density) of model ``k`` for tensor ``key`` in layer group ``group``."""
    m = ps.models[k]
    weight = m.weight if m.weight is not None else 1.0  # None: the method takes no weights
    density = m.density if m.density is not None else 1.0
    for o in m.overrides:
        if re.search(o.pattern, key):
            weight = o.weight if o.weight is not None else weight
            density = o.density if o.density is not None else density
            break
    return _pick(weight, group), _pick(density, group)


def merge_into(
    recipe: Recipe,
    plan: TensorPlan,
    task: Task,
    inputs: Sequence[Model],
    out: torch.Tensor,
    ws: kernels.Workspace,
    tables: Callable[[tuple[int, int], int], torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """Merge one language-model tensor of ``recipe`` into ``out`` (any float dtype, on ws's device).

    ``tables(key, numel)`` may give the kept DARE hash table of a mask key (see ResidentMerge).
    """
    ps = recipe.parameter_space
    assert ps is not None and task.key is not None
    method = ps.kind
    K = len(ps.models)
    vals = [values_for(ps, k, task.key, task.group) for k in range(K)]
    rows = task.rows
    xs = [_fetch(inputs[plan.input_index(k)], task.key, ws.device)[:rows] for k in range(K)]
    base = _fetch(inputs[0], task.key, ws.device)[:rows] if method.base else None
    keys = [kernels.dare_key(recipe.seed, k, task.key, method.key_domain) for k in range(K)]
    n = math.prod(xs[0].shape)
    kept = [tables(key, n) for key in keys] if tables and method.sparsify == "random" else None
    weights, densities = [w for w, _ in vals], [d for _, d in vals]
    kernels.apply(method, base, xs, weights, densities, keys, ps.normalize, out[:rows], ws, kept)
    if rows is not None and out.shape[0] > rows:  # rows beyond the base vocabulary: the primary's
        out[rows:].copy_(_fetch(inputs[plan.primary], task.key, ws.device)[rows:])
    return out


class MergedTensors:
    """The merged model as a :class:`TensorSource`: each tensor is merged when it is asked for.

    Merged tensors are new CPU tensors in ``dtype`` (what a merged checkpoint would hold);
    tensors outside the language model (a VLM's vision tower) are the primary model's,
    converted. After a tensor is merged the inputs' pages for it are released.
    """

    def __init__(
        self,
        recipe: Recipe,
        plan: TensorPlan,
        inputs: Sequence[Model],
        ws: kernels.Workspace,
        dtype: torch.dtype,
    ):
        self.recipe, self.plan, self.inputs, self.ws, self._dtype = recipe, plan, inputs, ws, dtype
        self._tasks = {t.name: t for t in plan.tasks}

    def names(self) -> list[str]:
        return list(self._tasks)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._tasks[name].shape

    def dtype(self, name: str) -> torch.dtype:
        task = self._tasks[name]
        return self._dtype if task.key is not None else self.inputs[self.plan.primary].tensors.dtype(name)

    def get(self, name: str) -> torch.Tensor:
        task = self._tasks[name]
        if task.key is None:
            t = self.inputs[self.plan.primary].tensors.get(name)
            return t.to(self._dtype) if t.is_floating_point() else t
        out = torch.empty(task.shape, dtype=self._dtype, device=self.ws.device)
        merge_into(self.recipe, self.plan, task, self.inputs, out, self.ws)
        for m in self.inputs:
            if task.key in m.by_lm_name:
                m.tensors.release(m.by_lm_name[task.key])
        return out.cpu()

    def release(self, name: str) -> None:
        """Nothing is kept."""


def merged_tensors(
    recipe: Recipe, plan: TensorPlan, inputs: Sequence[Model], ws: kernels.Workspace, dtype: torch.dtype
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (output name, new CPU tensor in ``dtype``) for every tensor of the merged model."""
    merged = MergedTensors(recipe, plan, inputs, ws, dtype)
    for name in merged.names():
        yield name, merged.get(name)


def _fetch(m: Model, key: str, device: torch.device) -> torch.Tensor:
    t = m.tensors.get(m.by_lm_name[key])
    return t if t.device == device else t.to(device, non_blocking=True)


def workspace_for(
    recipe: Recipe, device: torch.device | str, chunk: int | None = None, fuse: bool = True
) -> kernels.Workspace:
    ps = recipe.parameter_space
    assert ps is not None
    return kernels.Workspace(kernels.slots_for(ps.kind, ps.normalize), device, chunk, fuse)


def source_entries(plan: TensorPlan, n_models: int) -> int:
    """How many source entries a merge of ``plan`` reads: what decides whether fusing pays."""
    return sum(math.prod(t.shape) for t in plan.tasks if t.key is not None) * n_models


# ----------------------------------------------------------------------------------------------
# In memory, for evolution


class ResidentTensors:
    """A model's tensors held in memory (on ``device``), loaded once from a reader; ``pin``
    keeps host copies in pinned memory, so they stream to a GPU asynchronously."""

    def __init__(
        self, reader: TensorSource, names: Sequence[str], device: torch.device | str = "cpu", pin: bool = False
    ):
        self._t = {n: reader.get(n).to(device, copy=True) for n in names}
        if pin:
            self._t = {n: t.pin_memory() for n, t in self._t.items()}

    def names(self) -> list[str]:
        return list(self._t)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._t[name].shape)

    def dtype(self, name: str) -> torch.dtype:
        return self._t[name].dtype

    def get(self, name: str) -> torch.Tensor:
        return self._t[name]

    def release(self, name: str) -> None:
        """Resident tensors stay."""


class ResidentMerge:
    """The inputs of a parameter-space search, resident on one device, merged per candidate.

    The base and source models are loaded once, as stored (a task vector is formed per chunk
    in the workspace, exactly as the on-disk merge forms it, so both give the same bits). Each
    :meth:`apply` writes one candidate recipe straight into a resident model's parameters: no
    disk I/O, and no scratch beyond the workspace's few chunk-sized buffers.

        >>> rm = ResidentMerge(inputs, template_recipe, device="cuda")     # doctest: +SKIP
        >>> rm.apply(candidate_recipe, lm_parameters(model))   # arch.lm_parameters

    ``resident_device`` holds the sources elsewhere than the merge runs (``cpu`` with a CUDA
    ``device``: pinned host memory, streamed through). ``mask_tables`` keeps each DARE mask's hash (4 bytes per source entry) after its first use,
    so later candidates compare against it instead of hashing again (the same masks). ``None``
    keeps them on a CPU when they take at most a quarter of the machine's memory; a GPU hashes
    fast enough that its memory is better spent elsewhere.
    """

    def __init__(
        self,
        inputs: Sequence[Model],
        recipe: Recipe,
        device: torch.device | str = "cpu",
        mask_tables: bool | None = None,
        resident_device: torch.device | str | None = None,
    ):
        ps = recipe.parameter_space
        if ps is None:
            raise MergeError("ResidentMerge needs a recipe with a parameter_space section")
        has_base = recipe.base_model is not None
        _, needed = resident_names(inputs, recipe)
        self.device = kernels.resolve_device(device)
        # the sources live on the GPU, or (when they do not fit there) in pinned host memory,
        # streamed to the GPU tensor by tensor as candidates are merged (docs/design.md#gpu-memory)
        home = kernels.resolve_device(resident_device or device)
        pin = home.type == "cpu" and self.device.type == "cuda"
        self.inputs = [
            Model(m.label, ResidentTensors(m.tensors, names, home, pin), m.config)
            for m, names in zip(inputs, needed, strict=True)
        ]
        self.plan = plan_tensors(ps, self.inputs, has_base)
        self._by_key = {t.key: t for t in self.plan.tasks if t.key is not None}
        self._structure = _structure(recipe)
        self.ws = workspace_for(recipe, self.device, fuse=fused.worth_it(0, amortised=True))
        if mask_tables is None:
            entries = sum(math.prod(t.shape) for t in self.plan.tasks if t.key is not None) * len(ps.models)
            # a fused kernel hashes in registers, faster than it could read a table
            mask_tables = self.device.type == "cpu" and not (self.ws.fuse and fused.enabled(self.device))
            mask_tables = mask_tables and 4 * entries <= _memory_bytes() // 4
        self.mask_tables = bool(mask_tables) and ps.kind.sparsify == "random"
        self._tables: dict[tuple[int, int], torch.Tensor] = {}

    def _table(self, key: tuple[int, int], numel: int) -> torch.Tensor | None:
        if not self.mask_tables:
            return None
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = kernels.dare_table(numel, key, self.ws)
        return table

    @torch.no_grad()
    def tensors(self, recipe: Recipe, dtype: torch.dtype = torch.bfloat16) -> Iterator[tuple[str, torch.Tensor]]:
        """``recipe``'s merged language-model tensors as new tensors in ``dtype`` (for engines
        such as vLLM that take weights by name); the copied ones (a VLM's vision tower) are left out."""
        if _structure(recipe) != self._structure:
            raise MergeError("this recipe merges other models or another method than the resident inputs")
        dtype = DTYPES.get(recipe.dtype, dtype)
        for task in self.plan.tasks:
            if task.key is not None:
                out = torch.empty(task.shape, dtype=dtype, device=self.device)
                yield (
                    task.name,
                    merge_into(recipe, self.plan, task, self.inputs, out, self.ws, self._table),
                )

    @torch.no_grad()
    def apply(self, recipe: Recipe, params: Mapping[str, torch.Tensor], skip: Collection[str] = ()) -> int:
        """Write ``recipe``'s merged language-model tensors into ``params`` in place.

        ``params`` is keyed by LLM-style name (:func:`~evohub.merging.arch.lm_parameters` of the
        resident model, or the views of a vLLM engine's parameters that
        :mod:`~evohub.score.backends.vllm_merge` maps): a VLM's module names need not match its
        checkpoint's. Tensors copied unchanged from the primary model (a VLM's vision tower) are
        not written: they never change between candidates; nor are the names in ``skip`` (those an
        engine's loader drops, such as a tied LM head). Returns how many tensors were written.
        """
        if _structure(recipe) != self._structure:
            raise MergeError("this recipe merges other models or another method than the resident inputs")
        n = 0
        for task in self.plan.tasks:
            if task.key is None or task.key in skip:
                continue
            dest = params.get(task.key)
            if dest is None:
                raise MergeError(f"the resident model has no parameter {task.key!r}")
            self._write(recipe, task, dest)
            n += 1
        return n

    @torch.no_grad()
    def write(self, recipe: Recipe, key: str, dest: torch.Tensor) -> None:
        """Write ``recipe``'s merged tensor ``key`` (a language-model name) into ``dest``, for an
        engine that asks for its tensors one at a time (vLLM's in-place reload)."""
        if _structure(recipe) != self._structure:
            raise MergeError("this recipe merges other models or another method than the resident inputs")
        task = self._by_key.get(key)
        if task is None:
            raise MergeError(f"{key!r} is not a merged tensor of the resident inputs")
        self._write(recipe, task, dest)

    def _write(self, recipe: Recipe, task: Task, dest: torch.Tensor) -> None:
        if dest.device != self.device or tuple(dest.shape) != task.shape:
            raise MergeError(
                f"parameter {task.key!r} must be on {self.device} with shape {task.shape} "
                f"(it is on {dest.device} with {tuple(dest.shape)})"
            )
        if dest.is_contiguous():
            merge_into(recipe, self.plan, task, self.inputs, dest, self.ws, self._table)
        else:  # a strided view (an engine's transposed or column-sliced weight): merged, then copied in
            out = torch.empty(task.shape, dtype=dest.dtype, device=self.device)
            dest.copy_(merge_into(recipe, self.plan, task, self.inputs, out, self.ws, self._table))


def resident_names(inputs: Sequence[Model], recipe: Recipe) -> tuple[TensorPlan, list[list[str]]]:
    """The plan of a resident merge of ``inputs`` and, per input, the tensors it keeps resident:
    the merged tensors of the inputs the method reads, and the primary's copied ones. Reads
    headers only, so a driver can size what an engine's worker will load."""
    ps = recipe.parameter_space
    if ps is None:
        raise MergeError("a resident merge needs a recipe with a parameter_space section")
    has_base = recipe.base_model is not None
    plan = plan_tensors(ps, inputs, has_base)
    used = set(used_inputs(ps.kind, len(inputs), has_base))
    needed: list[list[str]] = [[] for _ in inputs]
    for t in plan.tasks:
        for i, m in enumerate(inputs):
            if t.key is not None and i in used:
                needed[i].append(m.by_lm_name[t.key])
            elif t.key is None and i == plan.primary:
                needed[i].append(t.name)
    return plan, needed


def resident_bytes(inputs: Sequence[Model], needed: Sequence[Sequence[str]]) -> int:
    """Bytes the resident tensors take, as stored (:func:`resident_names`' ``needed``)."""
    return sum(
        math.prod(m.tensors.shape(n)) * m.tensors.dtype(n).itemsize
        for m, names in zip(inputs, needed, strict=True)
        for n in names
    )


def workspace_bytes(method: MergeMethod, normalize: bool, device_type: str = "cuda") -> int:
    """The merge workspace's chunk buffers on a device: float32 slots and the mask, int64 hash
    and index buffers (the memory plan's figure: docs/design.md#gpu-memory)."""
    chunk = kernels.CHUNK[device_type]
    return (kernels.slots_for(method, normalize) + 1) * chunk * 4 + 3 * chunk * 8 + 2 * chunk


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _structure(recipe: Recipe) -> tuple:
    ps = recipe.parameter_space
    assert ps is not None
    return (recipe.base_model, ps.method, tuple(m.source for m in ps.models))
