"""What a job's evolution will cost in time and tokens: the cost table of ``evohub plan --gpu NAME``
(docs/design.md#cost-model).

Per search stage, from the plan (parameter counts, evaluations) and the job's fitness section:

- **calls** and **items**: the scoring calls the stage's estimator expects and their items
  (``Estimator.planned_calls``: ``full`` one call of every item per evaluation, ``race`` one per
  block a candidate races on, the ``irt`` estimators their anchors, audits included), over
  the fitness set's rows (a local file is counted; a Hub dataset's rows come from its recorded
  snapshot, ``evohub/local/snapshots/datasets/``, else from ``fitness.limit``, else unknown);
- **prompt tokens**: items × the task's mean prompt length (:data:`TASK_TOKENS`; a job's own prompt
  template over local rows is measured in characters: about one token per Japanese character);
- **generated tokens**: items × the generation budget (``fitness.max_new_tokens``, else the task's)
  × the task's mean fill (the share of the budget an answer uses before its end-of-sequence or a
  stop string);
- **hours**: prefill and decode seconds from a roofline throughput model of one device
  (:class:`Profile`), times a slowdown for the ``hf`` backend (no continuous batching; a data-flow
  stage follows the fitness backend: the transformers path executor on ``hf``, the vLLM path model
  on ``vllm``), plus each call's merge and weight swap (weight bytes at a measured rate).

Decode, one step of ``batch`` sequences (one new token each), is memory- or compute-bound:

    step = max((weight bytes + batch × context × KV bytes per token) / (bandwidth × e_bw),
               2 × P × batch / (peak FLOP/s × e_flop))
    decode tokens/s = batch / step;   prefill s = prompt tokens × 2 × P / (peak FLOP/s × e_prefill)

With n-gram drafts (``fitness.draft_tokens``, :data:`DRAFTS`) a step keeps ``per_step`` tokens a
sequence and runs ``per_step × verified`` (the drafts it throws away too), and a call's longest
answer takes ``longest_steps`` steps a token (docs/design.md#drafted-answers).

``batch`` is vLLM's concurrency (``max_num_seqs``, capped by the KV cache the GPU memory plan leaves
the engine) or the ``hf`` backend's ``fitness.batch_size``. A call decodes its own items at most
``batch`` at a time, and lasts at least its longest answer's steps at one sequence's step time
(:func:`call_decode_seconds`): the next candidate's weights go in only after it. An estimate,
not a measurement: it is calibrated against this project's own runs (the ``cpu`` profile) and
vendor peaks with stated efficiencies (the GPUs); ``bench/`` holds the measurements.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from evohub.errors import SpecError
from evohub.evolve.estimators import ESTIMATORS, Calls, PlanInputs, planned_items
from evohub.merging.arch import dtype_bytes
from evohub.pipeline.plan import Plan
from evohub.registry import markdown_grid
from evohub.score.tasks import TASKS
from evohub.spec import JobSpec

#: vLLM's default ``max_num_seqs`` (EngineArgs, https://docs.vllm.ai/en/latest/configuration/engine_args.html):
#: the sequences one engine step decodes at most.
VLLM_MAX_SEQS = 256


@dataclass(frozen=True)
class Profile:
    """One device's throughput figures (peaks × efficiencies)."""

    name: str
    label: str  # the unit of its hours: "H100" -> H100-hours
    bandwidth: float  # memory bandwidth, bytes/s (peak)
    flops: dict[str, float]  # peak dense FLOP/s per dtype
    e_bw: float  # share of the bandwidth a decode step reaches
    e_flop: float  # share of the peak a decode step reaches when compute-bound
    e_prefill: float  # share of the peak a prefill reaches
    hf_slowdown: float  # the hf backend's time over the model's (no continuous batching)
    merge_bps: float  # merge + weight swap: bytes of merged weights per second
    source: str

    def peak(self, dtype: str) -> float:
        return self.flops.get(dtype, self.flops["bfloat16"])


# GPU peaks are the vendors' datasheets: H100 SXM 3.35 TB/s, 989 TFLOP/s bf16 dense
# (https://www.nvidia.com/en-us/data-center/h100/); H200 4.8 TB/s, 989 TFLOP/s
# (https://www.nvidia.com/en-us/data-center/h200/); A100 80GB SXM 2.0 TB/s (2,039 GB/s), 312
# TFLOP/s bf16 dense (https://www.nvidia.com/en-us/data-center/a100/). float32 runs on the tensor
# cores as TF32 (half the bf16 peak). Efficiencies are assumptions: a vLLM decode step reaches
# about 70% of HBM bandwidth, a compute-bound step or a prefill about 50% of the peak (MFU).
# The hf backend (transformers' generate) has no continuous batching or paged KV cache and runs
# eager kernels: each static batch runs to its longest answer and pays Python per step; vLLM's
# own comparison measured 14-24x higher throughput than transformers at large batches
# (https://blog.vllm.ai/2023/06/20/vllm.html); at evohub's batch of 16-64 greedy answers we assume 4x.
# Merge + swap: bench/gpu_merge.py measured 0.40 s per billion parameters (bf16, dare_ties of 3
# sources, 2026-11-26, H200): 5 GB/s of merged weights, scaled by bandwidth to the other cards.
_GPU_EFF = {"e_bw": 0.7, "e_flop": 0.5, "e_prefill": 0.5, "hf_slowdown": 4.0}
_H200_MERGE = 2e9 / 0.40

#: The ``cpu`` profile is fitted to this project's own measurements, 2026-12-05, this 2-core x86
#: machine with AMX, torch's pool of 2 threads:
#:
#: - the demo world's ``math`` model (1.78M parameters, float32) scoring 1069 ja-math rows (prompt
#:   ``問 {input} 答 ``, no stop strings, max_new_tokens 8, batch 64, hf backend): 1.05 s (median
#:   of 5), 10,690 prompt tokens and 5,125 generated (4.8 an answer, ``46です`` and end-of-sequence);
#:   ``CPU_FLOPS["float32"]`` is what reproduces it with the hf slowdown below (the per-step Python
#:   overhead that dominates so small a model is folded in);
#: - the hf slowdown, 2.5: ``bench/score_bench.py`` (2026-11-26), ja-math on the hf backend 0.473 s
#:   against vLLM's 0.190 s for the same 64 rows on this machine;
#: - bfloat16: 3.7x the float32 rate (AMX: a 32 x 60-token prefill, README, 2026-12-05); the
#:   real-weights example (SmolLM2-135M, bf16, 48 items, up to 24 new tokens, batch 48, hf) took
#:   3.2 s a candidate, 0.25 s of it merging: this profile gives about 4 s;
#: - merge + swap: the real-weights example's 0.25 s for 134.5M bf16 parameters (about 1 GB/s).
CPU_FLOPS = {"float32": 1.35e11, "bfloat16": 1.35e11 * 3.7, "float16": 1.35e11}

PROFILES: dict[str, Profile] = {
    "h100": Profile("h100", "H100", 3.35e12, {"bfloat16": 989e12, "float16": 989e12, "float32": 494e12},
                    **_GPU_EFF, merge_bps=_H200_MERGE * 3.35 / 4.8, source="NVIDIA H100 SXM datasheet"),
    "h200": Profile("h200", "H200", 4.8e12, {"bfloat16": 989e12, "float16": 989e12, "float32": 494e12},
                    **_GPU_EFF, merge_bps=_H200_MERGE, source="NVIDIA H200 datasheet; bench/gpu_merge.py"),
    "a100": Profile("a100", "A100", 2.0e12, {"bfloat16": 312e12, "float16": 312e12, "float32": 156e12},
                    **_GPU_EFF, merge_bps=_H200_MERGE * 2.0 / 4.8, source="NVIDIA A100 80GB SXM datasheet"),
    "cpu": Profile("cpu", "CPU", 2.0e10, CPU_FLOPS, e_bw=0.5, e_flop=1.0, e_prefill=1.0, hf_slowdown=2.5,
                   merge_bps=1.0e9, source="measured on the demo world, 2026-12-05, 2-core x86 with AMX"),
}  # fmt: skip


@dataclass(frozen=True)
class TaskTokens:
    """A task's mean tokens per item: the prompt, and the share of the generation budget used."""

    prompt: float
    fill: float
    #: the fill when the job gives its own (short, non-CoT) prompt: the demo world measured 4.8 of 8
    own_prompt_fill: float = 0.6
    #: beams of the task's decoding (each beam is a sequence the engine decodes)
    beams: int = 1
    #: the longest answer of a scoring call, as a share of the budget: a call (one candidate's
    #: items) lasts at least that many decode steps
    longest: float = 1.0


#: Per-task figures. ja-math: the paper's CoT prompt (about 70 characters of template and a
#: GSM8K-ja question, about one token a Japanese character: ~300 tokens, as pipeline/gpu.py notes);
#: answers are worked solutions of ~360 tokens, 0.35 of the 1024-token budget (an assumption: a
#: good merge writes 200-400 tokens, a broken one runs to the budget; fill 1.0 is the upper bound).
#: The longest answer of a call (tens of items or more) is assumed to run to the budget: greedy
#: decoding loops on a few items in every hundred, and a broken merge, common in a search's early
#: generations, runs every answer to it (bench/answer_loops.py: on SmolLM2-135M-Instruct and
#: gemma-3-270m every answer of a 75-item call did, and with the loop stop the call's longest
#: decoded answer still did: docs/design.md#answer-loops).
#: ja-vqa: LLaVA-1.6's image (up to 5 tiles of 576 tokens; ~2,200 typical) and the question;
#: short answers (~25 of 512 tokens; a call's longest assumed 0.2 of the budget), 5 beams.
#: lm-loss: one forward over the text, nothing generated.
TASK_TOKENS: dict[str, TaskTokens] = {
    "ja-math": TaskTokens(prompt=300, fill=0.35),
    "ja-vqa": TaskTokens(prompt=2300, fill=0.05, beams=5, longest=0.2),
    "ja-vqa-paper": TaskTokens(prompt=2300, fill=0.05, beams=5, longest=0.2),
    "lm-loss": TaskTokens(prompt=256, fill=0.0),
}
DEFAULT_TOKENS = TaskTokens(prompt=300, fill=0.35)


@dataclass(frozen=True)
class Drafts:
    """What n-gram drafts (``fitness.draft_tokens``, vLLM) do to decoding, as the cost model counts
    it: a step keeps each answer's token and the drafts the model agrees with, and verifies all."""

    tokens: int  # drafts a step at most
    longest_steps: float  # a call's longest answer: its steps per token
    per_step: float  # tokens an answer keeps a step (mean over answers)
    verified: float  # tokens verified per token kept


#: Measured by bench/drafts.py (2026-12-06): vLLM's n-gram proposer at evohub's lookup (1 to 8
#: tokens) replayed over every answer of a 75-item ja-math call of SmolLM2-135M-Instruct and of
#: gemma-3-270m (greedy, 1024 tokens, every answer at the budget), checked against the engine's own
#: steps at 4 drafts; each figure the less favourable model's (gemma-3-270m's for all of them).
#: A 7B model's answers are assumed to repeat themselves as much where they run to the budget,
#: which is where a call's longest answer is (docs/design.md#drafted-answers). ``per_step`` and
#: ``verified`` come from answers that all repeat; a model's chains of thought draft less, which
#: moves throughput-bound calls (the audits), not a minibatch call's wait: with 1 token a step and 2
#: verified, jobs/evollm-jp-fast.yaml's estimate is 2.71 H100-hours against 2.61.
DRAFTS: dict[int, Drafts] = {
    1: Drafts(1, longest_steps=0.754, per_step=1.91, verified=1.045),
    2: Drafts(2, longest_steps=0.688, per_step=2.73, verified=1.092),
    3: Drafts(3, longest_steps=0.674, per_step=3.47, verified=1.146),
    4: Drafts(4, longest_steps=0.668, per_step=4.15, verified=1.193),
    5: Drafts(5, longest_steps=0.668, per_step=4.76, verified=1.247),
    6: Drafts(6, longest_steps=0.668, per_step=5.23, verified=1.321),
    7: Drafts(7, longest_steps=0.668, per_step=5.90, verified=1.334),
    8: Drafts(8, longest_steps=0.668, per_step=6.31, verified=1.402),
}  # fmt: skip


@dataclass
class StageCost:
    stage: str
    backend: str
    evaluations: int | None  # the evaluations the estimate covers (capped by --max-evals)
    items: float | None  # item evaluations (None: the fitness set's size is unknown offline)
    prompt_tokens: float | None
    generated_tokens: float | None
    batch: int
    decode_tokens_per_s: float
    generation_hours: float | None
    merge_hours: float | None
    hours: float | None
    notes: list[str] = field(default_factory=list)
    calls: float | None = None  # scoring calls: each merges (or switches to) its candidate once


@dataclass
class CostPlan:
    gpu: str
    unit: str  # "H100-hours", "CPU-hours"
    n_items: int | None
    items_source: str
    prompt_tokens_per_item: float
    generated_tokens_per_item: float
    budget: int
    estimator: str
    stages: list[StageCost] = field(default_factory=list)
    longest_tokens: float = 0.0  # a call's longest answer
    figures_source: str = "assumed"  # the per-item figures: the task's assumed ones, or a run's
    #: a call's decode steps as a run on vLLM with the same drafts measured them (None: from tokens)
    longest_steps: float | None = None

    @property
    def hours(self) -> float | None:
        if any(s.hours is None for s in self.stages):
            return None
        return sum(s.hours for s in self.stages)  # type: ignore[misc]

    @property
    def evaluations(self) -> int:
        return sum(s.evaluations or 0 for s in self.stages)

    def to_dict(self) -> dict:
        return asdict(self) | {"hours": self.hours, "evaluations": self.evaluations}


# -- the fitness set's rows -----------------------------------------------------------------------

_SLICE = re.compile(r"^(?P<name>[^\[]+)(?:\[(?P<a>-?\d*):(?P<b>-?\d*)\])?$")
SNAPSHOT_DATASETS = Path(__file__).resolve().parents[1] / "local" / "snapshots" / "datasets"


def _sliced(n: int, split: str) -> int:
    m = _SLICE.match(split)
    if not m or (m["a"] is None and m["b"] is None):
        return n
    return len(range(n)[slice(int(m["a"]) if m["a"] else None, int(m["b"]) if m["b"] else None)])


def _local_rows(path: str) -> list[dict] | None:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return None
    try:
        if path.endswith(".jsonl"):
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        data = json.loads(text)
    except ValueError:
        return None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    return data if isinstance(data, list) else None


def fitness_rows(spec: JobSpec, snapshots: Path = SNAPSHOT_DATASETS) -> tuple[int | None, str, list[dict] | None]:
    """(the fitness set's row count or None, where it came from, the local rows when read)."""
    ref = spec.fitness.data
    limit = spec.fitness.limit
    split = ref.split.split("[")[0]
    n: int | None = None
    rows = None
    if ref.path is not None:
        rows = _local_rows(ref.path)
        if rows is not None:
            n, where = _sliced(len(rows), ref.split), f"{len(rows)} rows in {Path(ref.path).name}"
    else:
        snap = snapshots / f"{ref.repo.replace('/', '--')}.yaml"  # type: ignore[union-attr]
        counts = _snapshot_splits(snap, ref.config)
        if split in counts:
            n, where = _sliced(counts[split], ref.split), f"{counts[split]} rows ({ref.repo} snapshot)"
    if n is None:
        if limit:
            return limit, f"fitness.limit {limit} (the set's size is unknown offline)", rows
        return None, "unknown: the fitness set cannot be counted offline", rows
    if limit and limit < n:
        return limit, f"fitness.limit {limit} of {where}", rows
    return n, where, rows


def _snapshot_splits(path: Path, config: str | None) -> dict[str, int]:
    if not path.is_file():
        return {}
    from evohub.spec.yamlio import parse_yaml

    try:
        doc = parse_yaml(path.read_text(encoding="utf-8"), str(path)).data
    except Exception:  # a damaged snapshot says nothing about the size
        return {}
    configs = (doc.get("configs") if isinstance(doc, dict) else None) or {}
    cfg = configs.get(config or "default") or (next(iter(configs.values())) if len(configs) == 1 else {})
    return {k: int(v) for k, v in (cfg.get("splits") or {}).items()}


# -- per-item figures ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    """Per-item token figures a run's ledger measured (``evohub plan --measured RUN``): what the
    task's assumed figures stand for, counted over the scoring calls of the run's stages that
    scored (a failed call's items were not)."""

    task: str
    prompt: float  # prompt tokens an item
    generated: float  # generated tokens an item
    longest: float | None  # a call's longest answer (tokens), median over calls; None: not recorded
    calls: int
    source: str
    steps: float | None = None  # a call's decode steps, median over calls; None: not recorded
    backend: str = "hf"  # the run's fitness backend
    draft_tokens: int | None = None  # the run's n-gram drafts


def measured_figures(run_dir: str | Path) -> Measured:
    """The token figures of the run in ``run_dir``, from its stages' score matrices: tokens an item
    over the calls that scored, a call's longest answer and decode steps as their medians over its
    candidates' fitness calls (an audit's or a reference's call of the whole pool, run in waves,
    has steps that are not one answer's: they are left out). A run that has scored nothing (or
    none of whose calls counted tokens) is refused in one line."""
    from evohub.pipeline.rundir import RunDir

    run = RunDir(run_dir)
    if not run.holds_run():
        raise SpecError(f"--measured {run_dir}: not a run directory (no job.yaml)")
    rows = [r for st in ("ps", "dfs") for r in run.score_rows(st)
            if r.get("items") and "generated_tokens" in r and r.get("error") is None]  # fmt: skip
    items = sum(len(r["items"]) for r in rows)
    if not items:
        raise SpecError(f"--measured {run_dir}: its ledger (stages/*/scores.jsonl) has no scoring calls with tokens")
    calls = [r for r in rows if r.get("why", "fitness") == "fitness"] or rows
    longest = [r["longest_tokens"] for r in calls if "longest_tokens" in r]
    steps = [r["steps"] for r in calls if r.get("steps")]
    fit = run.job().fitness
    return Measured(
        task=fit.task,
        prompt=sum(r.get("prompt_tokens") or 0 for r in rows) / items,
        generated=sum(r["generated_tokens"] or 0 for r in rows) / items,
        longest=statistics.median(longest) if longest else None,
        calls=len(rows),
        source=f"measured in {Path(run_dir).name} ({len(rows)} calls, {items} items)",
        steps=statistics.median(steps) if steps else None,
        backend=fit.backend,
        draft_tokens=fit.draft_tokens,
    )


def token_figures(
    spec: JobSpec, rows: list[dict] | None, measured: Measured | None = None
) -> tuple[float, float, int, float]:
    """(prompt tokens an item, generated tokens an item, the budget, a call's longest answer in
    tokens): the task's assumed figures, or a run's measured ones (capped at this job's budget)."""
    fit = spec.fitness
    figures = TASK_TOKENS.get(fit.task, DEFAULT_TOKENS)
    budget = fit.max_new_tokens or TASKS.get(fit.task).max_new_tokens or 0
    if measured is not None:
        if measured.task != fit.task:
            raise SpecError(
                f"--measured: that run scored {measured.task}, this job {fit.task}: its figures do not carry"
            )
        longest = budget * figures.longest if measured.longest is None else min(measured.longest, budget)
        return measured.prompt, min(measured.generated, budget), budget, longest
    prompt = figures.prompt
    fill = figures.fill
    if fit.prompt is not None and figures.fill > 0:
        fill = figures.own_prompt_fill
        inputs = [r.get("question") for r in rows or [] if isinstance(r, dict) and isinstance(r.get("question"), str)]
        if inputs:  # about one token a character (Japanese in Mistral-family tokenizers; a char-level one exactly)
            prompt = sum(len(fit.prompt.format(input=q)) for q in inputs) / len(inputs)
    return prompt, budget * fill, budget, budget * figures.longest


# -- the throughput model --------------------------------------------------------------------------


def step_seconds(profile: Profile, params: int, dtype: str, seqs: float, kv_bytes_per_token: float, context: float,
                 verified: float | None = None) -> float:  # fmt: skip
    """One decode step of ``seqs`` sequences of ``context`` tokens (roofline): it reads the weights
    and their KV cache, and runs the model over ``verified`` tokens (default one a sequence; with
    drafts, each sequence's token and its drafts)."""
    moved = params * dtype_bytes(dtype) + seqs * context * kv_bytes_per_token
    memory = moved / (profile.bandwidth * profile.e_bw)
    compute = 2 * params * (seqs if verified is None else verified) / (profile.peak(dtype) * profile.e_flop)
    return max(memory, compute)


def decode_rate(profile: Profile, params: int, dtype: str, batch: int, kv_bytes_per_token: float, context: float,
                drafts: Drafts | None = None) -> float:  # fmt: skip
    """Tokens a second one device decodes at ``batch`` sequences of ``context`` tokens (roofline);
    with ``drafts``, each step keeps their mean tokens a step and verifies their drafts too."""
    per_step, verified = (1.0, 1.0) if drafts is None else (drafts.per_step, drafts.verified)
    step = step_seconds(profile, params, dtype, batch, kv_bytes_per_token, context, batch * per_step * verified)
    return batch * per_step / step


def prefill_seconds(profile: Profile, params: int, dtype: str, tokens: float) -> float:
    return tokens * 2 * params / (profile.peak(dtype) * profile.e_prefill)


def _vllm_batch(profile: Profile, spec: JobSpec, plan: Plan, stage: str, per_seq_bytes: float) -> int:
    """vLLM's concurrency: max_num_seqs, capped by the KV cache the GPU memory plan leaves."""
    if profile.name == "cpu" or per_seq_bytes <= 0:
        return VLLM_MAX_SEQS
    from evohub.pipeline.gpu import GPUS, OVERHEAD, gpu_plan

    if profile.name not in GPUS:
        return VLLM_MAX_SEQS
    for s in gpu_plan(spec, plan, profile.name).stages:
        if s.stage == stage and s.utilization is not None:
            room = s.utilization * s.gpu_total - s.engine - OVERHEAD
            return max(1, min(VLLM_MAX_SEQS, int(room // per_seq_bytes)))
    return VLLM_MAX_SEQS


def estimate_cost(spec: JobSpec, plan: Plan, gpu: str, max_evals: int | None = None,
                  measured: Measured | None = None) -> CostPlan:  # fmt: skip
    """The time and tokens of each search stage of ``spec`` on one ``gpu`` (a key of
    :data:`PROFILES`); ``max_evals`` caps each stage's evaluations (the nightly cap); ``measured``
    replaces the task's assumed per-item figures with a run's."""
    if gpu not in PROFILES:
        raise SpecError(f"--gpu {gpu!r}: no cost profile (profiles: {', '.join(PROFILES)})")
    profile = PROFILES[gpu]
    fit = spec.fitness
    n_items, where, rows = fitness_rows(spec)
    prompt, generated, budget, longest = token_figures(spec, rows, measured)
    by_name = {s.name: s for s in plan.sources}
    merged = max((by_name[s.key] for s in spec.sources), key=lambda s: s.params)
    out = CostPlan(gpu, f"{profile.label}-hours", n_items, where, prompt, generated, budget, fit.estimator,
                   longest_tokens=longest, figures_source=measured.source if measured else "assumed")  # fmt: skip
    same_engine = measured is not None and measured.backend == fit.backend == "vllm"
    if same_engine and measured.steps and measured.draft_tokens == fit.draft_tokens:  # type: ignore[union-attr]
        # the engine's steps carry where the drafts are the same, as steps a token of the run's
        # longest answer: a job with a smaller budget waits for fewer
        share = 1.0 if not measured.longest else min(1.0, longest / measured.longest)  # type: ignore[union-attr]
        out.longest_steps = measured.steps * share  # type: ignore[union-attr]

    def calls_of(st, references: int):
        return _stage_calls(spec, st, n_items, where, max_evals, references)

    if plan.image is not None:
        out.prompt_tokens_per_item = out.generated_tokens_per_item = out.budget = out.longest_tokens = 0
    stopped = None  # a stage the cap stops: `evohub run --max-evals` returns there, the next waits
    for st in plan.stages:
        if stopped is not None:
            why = f"not reached with --max-evals {max_evals}: the run stops in stage {stopped} first"
            out.stages.append(StageCost(st.name, fit.backend, 0, 0, 0, 0, 0, 0.0, 0, 0, 0, [why], 0))
            continue
        if plan.image is not None:
            s = _image_stage(spec, plan, st, profile, calls_of)
        else:
            s = _text_stage(spec, plan, st, profile, merged, out, calls_of)
        out.stages.append(s)
        if max_evals is not None and not _night(st, max_evals, ESTIMATORS.get(fit.estimator).audited)[1]:
            stopped = st.name
    return out


def _text_stage(spec: JobSpec, plan: Plan, st, profile: Profile, merged, out: CostPlan, calls_of) -> StageCost:
    """One search stage of a text task: its calls' prefill and decode on ``profile`` (``out``'s
    per-item figures), and a merge per call (none for a data-flow stage: a path switch)."""
    fit = spec.fitness
    prompt, generated, longest = out.prompt_tokens_per_item, out.generated_tokens_per_item, out.longest_tokens
    figures = TASK_TOKENS.get(fit.task, DEFAULT_TOKENS)
    dfs = st.name == "data_flow_space"
    backend = fit.backend  # a data-flow stage too: vllm runs the path model (vllm_path.py)
    if dfs:  # the path executor or path model holds A's and B's layers; a path runs the output's
        params, layers = plan.output_params, None
    else:
        params, layers = merged.params, merged.layers
    refs = len(spec.sources) + (1 if spec.base_model is not None else 0) if not dfs else 0
    notes: list[str] = ["every path at its longest (all slots on): an upper bound"] if dfs else []
    if dfs and backend == "vllm":
        notes.append("vLLM path model: eager (no CUDA graphs), not in the roofline")
    # vLLM's beam search does not draft (the spec refuses drafts for a task that decodes in beams)
    drafts = DRAFTS[fit.draft_tokens] if fit.draft_tokens and backend == "vllm" and figures.beams == 1 else None
    if drafts is not None:
        notes.append(f"n-gram drafts ({drafts.tokens} a step): a call's longest answer in {drafts.longest_steps:.2f} "
                     "steps a token, as on real LMs' answers (docs/design.md#drafted-answers)")  # fmt: skip
    if fit.loop_span:  # docs/design.md#answer-loops: measured to save tokens, not a call's longest answer
        notes.append(f"loop stop at {fit.loop_span} tokens: answers caught in a loop decode less, "
                     "not in the estimate (a call still waits for its longest answer)")  # fmt: skip
    kv_token = merged.kv_bytes_per_layer_token * (layers or _path_layers(plan, merged))
    context = prompt + generated
    beams = figures.beams
    if backend == "vllm":
        batch = _vllm_batch(profile, spec, plan, st.name, context * beams * kv_token)
    else:
        batch = fit.batch_size or 16
    rate = decode_rate(profile, params, spec.dtype, batch * beams, kv_token, prompt + generated / 2, drafts) / beams
    evals, calls, why = calls_of(st, refs)
    if calls is None:
        return StageCost(st.name, backend, evals, None, None, None, batch, rate, None, None, None, [why])
    items = planned_items(calls)
    p_tokens, g_tokens = items * prompt, items * generated
    shape = {"profile": profile, "params": params, "dtype": spec.dtype, "batch": batch, "beams": beams,
             "kv_bytes_per_token": kv_token, "prompt": prompt, "generated": generated, "drafts": drafts}  # fmt: skip
    decoding, note = _decoding(calls, shape, longest, out.longest_steps)  # set for a vLLM job only
    notes += [note] if note else []
    seconds = prefill_seconds(profile, params, spec.dtype, p_tokens) + decoding
    if backend == "hf":
        seconds *= profile.hf_slowdown
        notes.append(f"hf backend: x{profile.hf_slowdown:g} (no continuous batching)")
    n_calls = sum(c.count for c in calls)
    merge = 0.0 if dfs else n_calls * params * dtype_bytes(spec.dtype) / profile.merge_bps
    return StageCost(st.name, backend, evals, items, p_tokens, g_tokens, batch, rate, seconds / 3600, merge / 3600,
                     (seconds + merge) / 3600, notes, n_calls)  # fmt: skip


def _decoding(calls: list[Calls], shape: dict, longest: float, steps: float | None) -> tuple[float, str | None]:
    """The decode seconds of a stage's calls (``shape``: :func:`call_decode_seconds`'s other
    arguments; ``steps``: a run's measured steps a call, else None), and a note when over 5% of
    them are calls waiting for their longest answer."""

    def total(longest: float, steps: float | None) -> float:
        return sum(c.count * call_decode_seconds(items=c.items, longest=longest, longest_steps=steps, **shape)
                   for c in calls)  # fmt: skip

    decoding = total(longest, steps)
    waiting = decoding - total(0.0, None if steps is None else 0.0)
    if waiting <= 0.05 * decoding:
        return decoding, None
    drafts = shape["drafts"]
    if steps is None and drafts is not None:
        steps = longest * drafts.longest_steps
    wait = f"{longest:.0f} tokens" + ("" if steps is None else f", {steps:.0f} steps")
    return decoding, (f"{waiting / decoding:.0%} of the decoding is calls waiting for their longest answer "
                      f"({wait}): a call of fewer items costs about as much; a lower "
                      "max_new_tokens, fewer evaluations or more items a call spend it better")  # fmt: skip


def call_decode_seconds(profile: Profile, params: int, dtype: str, items: int, batch: int, beams: int,
                        kv_bytes_per_token: float, prompt: float, generated: float, longest: float,
                        drafts: Drafts | None = None, longest_steps: float | None = None) -> float:  # fmt: skip
    """One scoring call's decode: its items' answers (``generated`` tokens each) at the concurrency
    the call reaches (its items, at most ``batch``), and never less than its longest answer's
    steps at one sequence's step time: a call ends when its last answer does, and the next
    candidate's weights cannot go in before (docs/design.md#cost-model). Its longest answer takes
    ``longest`` steps, or ``longest × drafts.longest_steps`` with n-gram drafts, each verifying a
    token and its drafts; ``longest_steps`` (a run's measured steps a call) replaces that."""
    if generated <= 0:
        return 0.0
    seqs = min(items, batch) * beams
    rate = decode_rate(profile, params, dtype, seqs, kv_bytes_per_token, prompt + generated / 2, drafts) / beams
    if longest_steps is None:
        longest_steps = longest * (1.0 if drafts is None else drafts.longest_steps)
    verified = beams * (1 + (0 if drafts is None else drafts.tokens))
    step = step_seconds(profile, params, dtype, beams, kv_bytes_per_token, prompt + longest / 2, verified)
    return max(items * generated / rate, longest_steps * step)


#: The share of a GPU's peak a diffusers UNet step reaches (eager, no torch.compile, batches of 1-4
#: images at 1024x1024): an assumption, half the prefill efficiency, until bench/ measures it on a
#: GPU: public SDXL throughputs on A100/H100 sit 2-3x below a 50%-of-peak roofline of its FLOPs.
UNET_EFFICIENCY = 0.25


def _night(st, max_evals: int | None, audited: bool) -> tuple[int | None, bool]:
    """(the evaluations a call of ``evohub run --max-evals`` makes in stage ``st``, or None for a
    wall-time budget; whether they end the stage): ``full`` stops at the cap, an audited estimator
    at the end of the generation the cap falls in (evolve/search.py)."""
    capped = max_evals is not None and (st.evaluations is None or max_evals < st.evaluations)
    evals = max_evals if capped else st.evaluations
    if capped and audited:  # whole generations: ranked together
        evals = -(-evals // st.popsize) * st.popsize  # type: ignore[operator]
        if st.evaluations is not None:
            evals = min(evals, st.evaluations)
    return evals, st.evaluations is not None and evals is not None and evals >= st.evaluations


def _stage_calls(spec: JobSpec, st, n_items: int | None, where: str, max_evals: int | None,
                 references: int) -> tuple[int | None, list[Calls] | None, str | None]:  # fmt: skip
    """(a stage's evaluations, capped by ``max_evals`` as a run caps them; the scoring calls its
    estimator expects, or None; why they are unknown: a wall-time budget, or the fitness set's
    size). A capped stage (``evohub run --max-evals``) stops at the cap, or for an audited
    estimator at the end of the generation the cap falls in, without the final audit unless
    that generation ends the stage (evolve/search.py)."""
    fit = spec.fitness
    estimator = ESTIMATORS.get(fit.estimator)
    evals, complete = _night(st, max_evals, estimator.audited)
    if evals is None or n_items is None:
        return evals, None, "a wall-time budget: its evaluations are known at run time" if evals is None else where
    settings = estimator.settings(getattr(fit, "estimator_options", None) or {})
    inputs = PlanInputs(n_items=n_items, popsize=st.popsize, evaluations=evals, references=references,
                        minibatch=fit.minibatch, complete=complete)  # fmt: skip
    return evals, estimator.planned_calls(inputs, settings), None


def _image_stage(spec: JobSpec, plan: Plan, st, profile: Profile, calls_of) -> StageCost:
    """A diffusion stage: each item is one image, ``steps`` UNet forwards (two with guidance > 1),
    compute-bound at :data:`UNET_EFFICIENCY` of the device's peak (the ``cpu`` profile: its own
    fitted rate), plus each candidate's merge at the measured merge rate."""
    fit, img = spec.fitness, plan.image
    assert img is not None
    batch = fit.batch_size or 4
    notes = [
        "images: UNet FLOPs only (the VAE decode and the judge are not counted); "
        f"{UNET_EFFICIENCY:.0%} of the peak is an assumption until a GPU measures it"
    ]
    evals, calls, why = calls_of(st, len(spec.sources) + (1 if spec.base_model is not None else 0))
    if calls is None:
        return StageCost(st.name, fit.backend, evals, None, None, None, batch, 0.0, None, None, None, [why])
    items, n_calls = planned_items(calls), sum(c.count for c in calls)
    passes = img.steps * (2 if img.guidance_scale > 1 else 1)
    efficiency = profile.e_prefill if profile.name == "cpu" else UNET_EFFICIENCY
    seconds = items * passes * img.unet_flops / (profile.peak(spec.dtype) * efficiency)
    merge = n_calls * img.unet_params * dtype_bytes(spec.dtype) / profile.merge_bps  # type: ignore[operator]
    return StageCost(st.name, fit.backend, evals, items, 0.0, 0.0, batch, 0.0, seconds / 3600, merge / 3600,
                     (seconds + merge) / 3600, notes, n_calls)  # fmt: skip


def _path_layers(plan: Plan, merged) -> int:
    """Decoder layers a data-flow path runs: the output's, from its parameter count."""
    per = max(merged.per_layer, 1)
    return max(1, math.ceil((plan.output_params - (merged.params - merged.layers * per)) / per))


# -- showing it ------------------------------------------------------------------------------------


def _count(n: float | None) -> str:
    from evohub.pipeline.plan import human_count

    return "?" if n is None else human_count(n)


def cost_table(cp: CostPlan) -> tuple[str, list[str], list[list[str]], list[str]]:
    """The cost table as (title, header, rows, notes): :func:`render_cost` and
    :func:`cost_markdown` show the same figures."""
    header = ["stage", "backend", "evals", "calls", "items", "prompt tok", "generated tok", cp.unit]
    rows = [[s.stage, s.backend, str(s.evaluations or "-"), _count(s.calls), _count(s.items),
             _count(s.prompt_tokens), _count(s.generated_tokens), _hours(s.hours)] for s in cp.stages]  # fmt: skip
    rows.append(["total", "", str(cp.evaluations), *(_count(_sum(getattr(s, k) for s in cp.stages))
                 for k in ("calls", "items", "prompt_tokens", "generated_tokens")), _hours(cp.hours)])  # fmt: skip
    notes = [f"fitness items: {cp.items_source}; per item {cp.prompt_tokens_per_item:.0f} prompt tokens, "
             f"{cp.generated_tokens_per_item:.1f} generated (budget {cp.budget}); a call's longest answer "
             f"{cp.longest_tokens:.0f}" + (f", {cp.longest_steps:.0f} steps" if cp.longest_steps else "")
             + f" ({cp.figures_source})"]  # fmt: skip
    notes += [f"{s.stage}: {n}" for s in cp.stages for n in s.notes]
    return f"cost on one {cp.gpu} (estimator {cp.estimator})", header, rows, notes


def render_cost(cp: CostPlan, console) -> None:
    """The cost table on a rich ``console``."""
    from rich.table import Table

    title, header, rows, notes = cost_table(cp)
    t = Table(*header, title=title)
    for r in rows:
        t.add_row(*r)
    console.print(t)
    for n in notes:
        console.print(f"  {n}")


def cost_markdown(cp: CostPlan) -> str:
    """The cost table as Markdown (a CI job summary, a pull-request comment)."""
    title, header, rows, notes = cost_table(cp)
    lines = ["", f"**{title[0].upper()}{title[1:]}**", "", *markdown_grid(header, rows), "", *(f"- {n}" for n in notes)]
    return "\n".join(lines) + "\n"


def _hours(h: float | None) -> str:
    if h is None:
        return "?"
    return f"{h:,.0f}" if h >= 100 else f"{h:.3g}" + (f" ({h * 3600:.0f} s)" if h < 0.1 else "")


def _sum(values) -> float | None:
    values = list(values)
    return None if any(v is None for v in values) else sum(values)


def over_limit(path: str, cp: CostPlan, max_hours: float) -> str | None:
    """One line when the estimate exceeds ``max_hours``, or when there is none to hold against it
    (None: within it)."""
    total = cp.hours
    if total is None:
        st = next(s for s in cp.stages if s.hours is None)
        why = f" ({st.notes[0]})" if st.notes else ""
        return f"{path}: --max-hours {max_hours:g}: stage {st.stage} has no estimate{why}"
    if total <= max_hours:
        return None
    return (f"{path}: estimated {total:,.2f} {cp.unit} for {cp.evaluations} evaluations exceeds the runner's "
            f"{max_hours:g} h limit; choose a cheaper fitness.estimator or cap the night's evaluations")  # fmt: skip
