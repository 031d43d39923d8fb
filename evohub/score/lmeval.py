"""Any lm-eval task or group through its Python API, on an in-memory or on-disk model.

    >>> results = run_lmeval(model, tokenizer, ["japanese_leaderboard"])        # doctest: +SKIP
    >>> results["ja_leaderboard_jnli"]["acc,none"], results["ja_leaderboard_jnli"]["acc_stderr,none"]

Results keep lm-eval's metric names (``acc,none``, ``acc_stderr,none``, ...). ``data`` maps a
task to a local JSON/JSONL file: a task YAML is generated that ``include``s the built-in task
(its prompt, few-shot setup and metrics) and reads the local file instead of the Hub, for offline
runs and tests. ``evohub/score/lmeval_tasks/`` holds task YAMLs of our own (JCoLA, the
paper's ninth JP-LMEH task, which lm-eval lacks).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import yaml

from evohub.errors import ScoreError

OUR_TASKS = Path(__file__).parent / "lmeval_tasks"


def _task_yaml(task: str, tm) -> Path:
    """The YAML file lm-eval loads ``task`` from."""
    info = tm.task_index.get(task)
    if info is None:
        raise ScoreError(f"lm-eval has no task {task!r}")
    path = info.get("yaml_path") if isinstance(info, dict) else getattr(info, "yaml_path", None)
    if not path or path == -1:
        raise ScoreError(f"lm-eval task {task!r} is not defined by a YAML file; it cannot take local data")
    return Path(path)


def local_overrides(data: dict[str, str], tm, out_dir: Path) -> dict[str, str]:
    """Write one task YAML per override; returns {original task: local task name}."""
    names = {}
    for task, file in data.items():
        base = _task_yaml(task, tm)
        split = yaml.safe_load(base.read_text().replace("!function", "")) or {}
        splits = {
            k: split.get(k)
            for k in ("test_split", "validation_split", "training_split", "fewshot_split")
            if split.get(k)
        }
        local = f"{task}_local"
        spec = {
            "task": local,
            "include": str(base),
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": {name: str(Path(file).resolve()) for name in set(splits.values())}},
        }
        (out_dir / f"{local}.yaml").write_text(yaml.safe_dump(spec, allow_unicode=True, sort_keys=False))
        names[task] = local
    return names


def run_lmeval(
    model,
    tokenizer,
    tasks: Sequence[str],
    *,
    data: dict[str, str] | None = None,
    limit: int | float | None = None,
    batch_size: int = 8,
    num_fewshot: int | None = None,
) -> dict[str, dict]:
    """Evaluate ``model`` (a transformers model object) on lm-eval ``tasks``; returns lm-eval's
    per-task results, keyed by the task names asked for."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    include = [str(OUR_TASKS)]
    with tempfile.TemporaryDirectory(prefix="evohub-lmeval-") as tmp:
        tm = TaskManager(include_path=include, verbosity="ERROR")
        renamed = local_overrides(data or {}, tm, Path(tmp)) if data else {}
        if renamed:
            tm = TaskManager(include_path=[*include, tmp], verbosity="ERROR")
        wanted = [renamed.get(t, t) for t in tasks]
        missing = [t for t in wanted if t not in tm.all_tasks]
        if missing:
            raise ScoreError(f"lm-eval has no task or group {missing[0]!r}")
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        out = lm_eval.simple_evaluate(model=lm, tasks=wanted, task_manager=tm, limit=limit, num_fewshot=num_fewshot,
                                      log_samples=False, verbosity="ERROR", bootstrap_iters=1000)  # fmt: skip
    if out is None:
        raise ScoreError("lm-eval returned no results")
    back = {v: k for k, v in renamed.items()}
    return {back.get(name, name): res for name, res in out["results"].items()}
