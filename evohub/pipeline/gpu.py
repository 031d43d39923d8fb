"""Will a job fit on one GPU? The memory plan ``evohub plan --gpu NAME`` prints (docs/design.md#gpu-memory).

Per stage, on one GPU: the resident sources the merge reads (the base and K sources of a
parameter-space stage; the layers of A and B of a data-flow stage), the merge workspace, the
scoring engine's weights, its KV cache for one batch of the fitness task, and a fixed overhead
(CUDA context, activations). When the resident sources do not fit beside the engine, they stay in
pinned host memory and stream through (``ResidentMerge(resident_device="cpu")``); when even the
engine does not fit, the plan refuses the job, with the numbers. The ``gpu_memory_utilization`` a
vLLM engine is given is what is left after the resident sources and the workspace.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from evohub.errors import SpecError
from evohub.merging.arch import dtype_bytes
from evohub.merging.ps import workspace_bytes
from evohub.pipeline.plan import Plan
from evohub.registry import markdown_grid
from evohub.score.backends.vllm import MAX_UTILIZATION
from evohub.score.tasks import TASKS
from evohub.spec import JobSpec

GiB = 1 << 30
#: Memory of each GPU model (bytes): what the driver reports, rounded down.
GPUS = {"a100-40": 40 * GiB, "a100": 80 * GiB, "h100": 80 * GiB, "l40s": 48 * GiB, "h200": 141 * 10**9}
#: CUDA context, activations, sampling buffers, CUDA graphs: measured headroom of one engine.
OVERHEAD = 3 * GiB
#: Prompt tokens assumed per fitness example (MGSM-JA's CoT prompt with a question: ~300).
PROMPT_TOKENS = 512
#: A diffusion pipeline's activations per image of one megapixel in half precision (the UNet's
#: attention and skip connections at 128x128 latents, and the VAE decode): an assumption, about
#: what diffusers' SDXL needs beyond its weights at batch 1; scaled by pixels and images.
ACTIVATIONS_PER_MPIX = int(1.5 * GiB)


@dataclass
class StageMemory:
    stage: str
    resident: int
    resident_on: str  # "gpu" or "host (pinned)"
    workspace: int
    engine: int
    kv_cache: int
    kv_tokens: int
    overhead: int
    gpu_total: int
    fits: bool
    utilization: float | None  # the vLLM engine's gpu_memory_utilization (None: no vLLM engine)

    @property
    def on_gpu(self) -> int:
        return (
            (self.resident if self.resident_on == "gpu" else 0)
            + self.workspace
            + self.engine
            + self.kv_cache
            + self.overhead
        )


@dataclass
class GPUPlan:
    gpu: str
    total: int
    stages: list[StageMemory] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return all(s.fits for s in self.stages)

    def to_dict(self) -> dict:
        return asdict(self) | {"fits": self.fits}


def _workspace(spec: JobSpec) -> int:
    """The merge's chunk buffers on a GPU: float32 slots + the mask + int64 hash and index buffers."""
    ps = spec.parameter_space
    assert ps is not None
    return workspace_bytes(ps.kind, ps.normalize)


def _kv_tokens(spec: JobSpec) -> int:
    fit = spec.fitness
    new = fit.max_new_tokens or TASKS.get(fit.task).max_new_tokens or 0
    return (fit.batch_size or 16) * (PROMPT_TOKENS + new)


def _stage(name: str, total: int, resident: int, workspace: int, engine: int, kv: int, tokens: int, vllm: bool):
    need_engine = workspace + engine + kv + OVERHEAD
    on = "gpu" if resident + need_engine <= total or resident == 0 else "host (pinned)"
    fits = need_engine <= total
    left = total - (resident if on == "gpu" else 0) - workspace
    util = round(min(MAX_UTILIZATION, left / total), 2) if vllm and fits else None
    return StageMemory(name, resident, on, workspace, engine, kv, tokens, OVERHEAD, total, fits, util)


def gpu_plan(spec: JobSpec, plan: Plan, gpu: str) -> GPUPlan:
    """The memory of each stage of ``spec`` on one ``gpu`` (a key of :data:`GPUS`)."""
    if gpu not in GPUS:
        raise SpecError(f"--gpu {gpu!r}: unknown GPU (known: {', '.join(GPUS)})")
    total, out = GPUS[gpu], GPUPlan(gpu, GPUS[gpu])
    by_name = {s.name: s for s in plan.sources}
    b = dtype_bytes(spec.dtype)
    tokens = _kv_tokens(spec)
    if plan.image is not None and spec.parameter_space is not None:  # a diffusion job: the pipeline is the engine
        img = plan.image
        n = len(spec.sources) + (1 if spec.base_model else 0)
        acts = int((spec.fitness.batch_size or 4) * ACTIVATIONS_PER_MPIX * (img.image_size / 1024) ** 2 * b / 2)
        out.stages.append(_stage("parameter_space", total, n * img.unet_params * b, _workspace(spec),
                                 plan.output_bytes, acts, 0, False))  # fmt: skip
        return out
    if (ps := spec.parameter_space) is not None:
        merged = max((by_name[s.key] for s in spec.sources), key=lambda s: s.params)
        n = len(spec.sources) + (1 if ps.kind.base and spec.base_model else 0)
        kv = tokens * merged.layers * merged.kv_bytes_per_layer_token
        out.stages.append(_stage("parameter_space", total, n * merged.params * b, _workspace(spec),
                                 merged.params * b, kv, tokens, spec.fitness.backend == "vllm"))  # fmt: skip
    if (dfs := spec.data_flow_space) is not None:
        src = max((by_name[s.key] for s in spec.sources), key=lambda s: s.params)
        a = src if dfs.a == "ps" else by_name[dfs.a]
        bb = by_name[dfs.b]
        hops = min((a.layers + bb.layers) * dfs.repeats, dfs.max_path_length or 10**9)
        kv = tokens * hops * a.kv_bytes_per_layer_token
        # the path executor (hf) or the vLLM path model runs over the resident layers of A and B:
        # they are the engine; the KV cache has a slot per hop
        out.stages.append(_stage("data_flow_space", total, 0, 0, (a.params + bb.params) * b, kv, tokens,
                                 spec.fitness.backend == "vllm"))  # fmt: skip
    return out


def sources_fit(source_bytes: int, engine_bytes: int, device: str) -> bool:
    """Whether resident sources of ``source_bytes`` leave room on ``device`` for an engine of
    ``engine_bytes`` (plus its KV cache and overhead): else they stay in pinned host memory."""
    import torch

    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return source_bytes + engine_bytes + 2 * OVERHEAD <= free


def refusal(spec: JobSpec, gp: GPUPlan) -> str | None:
    """One line per stage that cannot fit on one GPU even with its sources on the host."""
    lines = [
        f"{spec.name}: {s.stage} does not fit on one {gp.gpu} ({s.gpu_total / GiB:.1f} GiB): engine weights "
        f"{s.engine / GiB:.1f} GiB + KV cache {s.kv_cache / GiB:.1f} GiB ({s.kv_tokens} tokens) + merge workspace "
        f"{s.workspace / GiB:.1f} GiB + overhead {s.overhead / GiB:.1f} GiB = "
        f"{(s.engine + s.kv_cache + s.workspace + s.overhead) / GiB:.1f} GiB"
        for s in gp.stages
        if not s.fits
    ]
    return "\n".join(lines) or None


def gpu_table(gp: GPUPlan) -> tuple[str, list[str], list[list[str]]]:
    """The memory plan as (title, header, rows): :func:`render_gpu` and :func:`gpu_markdown`."""

    def gb(n: int) -> str:
        return f"{n / GiB:.1f} GiB"

    header = ["stage", "resident sources", "workspace", "engine weights", "KV cache (activations)", "overhead",
              "on the GPU", "vLLM gpu_memory_utilization"]  # fmt: skip
    rows = [[s.stage, f"{gb(s.resident)} on the {s.resident_on}", gb(s.workspace), gb(s.engine),
             f"{gb(s.kv_cache)} ({s.kv_tokens} tokens)" if s.kv_tokens else gb(s.kv_cache), gb(s.overhead),
             f"{gb(s.on_gpu)} ({'fits' if s.fits else 'does NOT fit'})",
             f"{s.utilization:.2f}" if s.utilization is not None else "-"] for s in gp.stages]  # fmt: skip
    return f"one {gp.gpu} ({gb(gp.total)})", header, rows


def render_gpu(gp: GPUPlan, console) -> None:
    """The memory plan as a table on a rich ``console``."""
    from rich.table import Table

    title, header, rows = gpu_table(gp)
    t = Table(*header, title=title)
    for r in rows:
        t.add_row(*r)
    console.print(t)


def gpu_markdown(gp: GPUPlan) -> str:
    """The memory plan as Markdown (a CI job summary, a pull-request comment)."""
    title, header, rows = gpu_table(gp)
    return "\n".join(["", f"**Memory on {title}**", "", *markdown_grid(header, rows)]) + "\n"
