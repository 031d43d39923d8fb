"""Any lm-eval task or group through its Python API, on an in-memory or on-disk model.

    >>> results = run_lmeval(model, tokenizer, ["japanese_leaderboard"])        # doctest: +SKIP
    >>> results["ja_leaderboard_jnli"]["acc,none"], results["ja_leaderboard_jnli"]["acc_stderr,none"]

Results keep lm-eval's metric names (``acc,none``, ``acc_stderr,none``, ...). ``data`` maps a
task to a local JSON/JSONL file: a task YAML is generated that ``include``s the built-in task
(its prompt, few-shot setup and metrics) and reads the local file instead of the Hub, for offline
runs and tests. A task whose Hub dataset is behind a loading script (``Rakuten/JGLUE``,
``juletxara/mgsm``) reads the Hub's parquet conversion instead, through a generated task YAML
in the same way; one that cannot be read at all is left out and named with the reason
(docs/design.md#datasets-behind-scripts). ``evohub/score/lmeval_tasks/`` holds task YAMLs of our own:
``jp_stable/`` registers the paper's JP-LMEH as jp-stable ran it (:mod:`evohub.score.jp_stable`),
``jmmlu/`` JMMLU as the Swallow LLM Leaderboard reports it (:mod:`evohub.score.llm_jp_eval`).
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Sequence
from pathlib import Path

import yaml

from evohub.errors import EvohubError, ScoreError

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


def _cfg(task: str, tm) -> dict:
    info = tm.task_index.get(task)
    cfg = info.get("cfg") if isinstance(info, dict) else getattr(info, "cfg", None)
    return cfg or {}


def leaves(task: str, tm) -> list[str]:
    """The tasks a group (or tag) stands for, recursively; a task stands for itself."""
    members = _cfg(task, tm).get("task")
    if not isinstance(members, list):
        return [task]
    out: list[str] = []
    for m in members:
        name = m.get("task") if isinstance(m, dict) else m
        if isinstance(name, str):
            out += leaves(name, tm) if name in tm.task_index else [name]
    return out


def _new_manager(defaults: bool, extra: str | None = None, prompt_version: str | None = None):
    """lm-eval's task index: ours (and ``extra``), with its built-in tasks when ``defaults``;
    ``prompt_version`` reaches every task as metadata."""
    from lm_eval.tasks import TaskManager

    paths = [str(OUR_TASKS), *([extra] if extra else [])]
    meta = {"prompt_version": prompt_version} if prompt_version else None
    return TaskManager(include_path=paths, include_defaults=defaults, metadata=meta)


#: indexing lm-eval's built-in tasks parses some 10,000 YAML files (seconds): once per process,
#: and not at all for tasks of ours alone
_manager = functools.lru_cache(maxsize=4)(_new_manager)


def _index_for(tasks: Sequence[str]):
    """The smallest index that knows ``tasks``."""
    ours = _manager(False)
    return ours if all(t in ours.all_tasks for t in tasks) else _manager(True)


def check_tasks(tasks: Sequence[str]) -> None:
    """Raise (one line) for a name that is no lm-eval task or group."""
    tm = _index_for(tasks)
    missing = [t for t in tasks if t not in tm.all_tasks]
    if missing:
        raise ScoreError(f"lm-eval has no task or group {missing[0]!r}")


def task_datasets(tasks: Sequence[str]) -> dict[str, tuple[str, str | None]]:
    """``{task: (dataset_path, dataset_name)}`` of every task ``tasks`` (groups expanded) reads."""
    tm = _index_for(tasks)
    out = {}
    for t in tasks:
        if t not in tm.all_tasks:
            raise ScoreError(f"lm-eval has no task or group {t!r}")
        for leaf in leaves(t, tm):
            cfg = _cfg(leaf, tm)
            if cfg.get("dataset_path"):
                out[leaf] = (cfg["dataset_path"], cfg.get("dataset_name"))
    return out


def hub_access(path: str, name: str | None, revision: str | None = None) -> tuple[dict | None, str | None]:
    """How lm-eval reads a Hub dataset: ``(None, None)`` as its YAML says; ``(dataset kwargs, None)``
    from the parquet conversion when ``main`` is behind a loading script (``datasets`` >= 4
    refuses scripts; evohub never runs them); ``(None, reason)`` when it cannot be read at all.
    A task that pins a ``revision`` is read there or not at all (``swallow_jmmlu``: the last
    commit with plain CSV files)."""
    from evohub.hub import client

    if client.offline() or path in _PACKAGED or "/" not in path:
        return None, None
    try:
        files = client.listing(path, revision, "dataset").files
        if not client.unreadable(path, files):
            return None, None
        layout = None if revision else client.parquet_layout(path)
    except EvohubError as e:
        return None, str(e)
    config = name or "default"
    script = client.loading_script(path, files)
    if revision:
        return None, f"{path}@{revision} {f'is a loading script ({script})' if script else 'has no data files'}"
    what = f"is a loading script ({script}) and has" if script else "has no data files and"
    if layout is None:
        return None, f"{path} {what} no parquet conversion (refs/convert/parquet)"
    if config not in layout:
        return None, f"{path}'s parquet conversion has no config {config!r} (it has {', '.join(layout)})"
    return {"revision": client.PARQUET_REF, "data_dir": config}, None


_PACKAGED = ("json", "csv", "parquet", "text", "arrow")


def _write_task(out_dir: Path, base: Path, local: str, extra: dict) -> None:
    spec = {"task": local, "include": str(base), **extra}
    (out_dir / f"{local}.yaml").write_text(yaml.safe_dump(spec, allow_unicode=True, sort_keys=False))


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
        _write_task(out_dir, base, local, {
            "dataset_path": "json", "dataset_name": None,
            "dataset_kwargs": {"data_files": {name: str(Path(file).resolve()) for name in set(splits.values())}},
        })  # fmt: skip
        names[task] = local
    return names


def _hub_overrides(tasks: list[str], data: dict[str, str], tm, out_dir: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Tasks whose Hub dataset is behind a script: a task YAML reading its parquet conversion,
    or a reason it cannot run. Returns ({task: local task}, {task: reason})."""
    renamed, not_run = {}, {}
    for leaf in {leaf for t in tasks for leaf in leaves(t, tm)} - set(data):
        cfg = _cfg(leaf, tm)
        if not cfg.get("dataset_path"):
            continue
        pinned = (cfg.get("dataset_kwargs") or {}).get("revision")
        kwargs, reason = hub_access(cfg["dataset_path"], cfg.get("dataset_name"), pinned)
        if reason:
            not_run[leaf] = reason
        elif kwargs:
            local = f"{leaf}_parquet"
            _write_task(out_dir, _task_yaml(leaf, tm), local, {"dataset_name": None, "dataset_kwargs": kwargs})
            renamed[leaf] = local
    return renamed, not_run


def run_lmeval(
    model,
    tokenizer,
    tasks: Sequence[str],
    *,
    data: dict[str, str] | None = None,
    limit: int | float | None = None,
    batch_size: int = 8,
    num_fewshot: int | None = None,
    max_new_tokens: int | None = None,
    prompt_version: str | None = None,
) -> dict[str, dict]:
    """Evaluate ``model`` (a transformers model object) on lm-eval ``tasks``; returns lm-eval's
    per-task results, keyed by the task names asked for (a group whose tasks had to be changed
    is run task by task). Tasks that cannot be read are left out and named under ``"not_run"``
    with the reason; ``max_new_tokens`` caps generation (lm-eval's ``max_gen_toks``);
    ``prompt_version`` is the jp-stable tasks' (default :data:`jp_stable.DEFAULT_PROMPT`)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from evohub.score import jp_stable

    version = prompt_version or jp_stable.DEFAULT_PROMPT
    with tempfile.TemporaryDirectory(prefix="evohub-lmeval-") as tmp:
        check_tasks(tasks)
        tm = _index_for(tasks)
        defaults = tm is not _manager(False)
        asked = set(tasks) | {leaf for t in tasks for leaf in leaves(t, tm)}
        data = {k: v for k, v in (data or {}).items() if k in asked}  # others are other suites' tasks
        renamed = local_overrides(data, tm, Path(tmp)) if data else {}
        hub, not_run = _hub_overrides(list(tasks), data or {}, tm, Path(tmp))
        renamed |= hub
        changed = set(renamed) | set(not_run)
        wanted: list[str] = []
        for t in tasks:  # a group with a changed task runs task by task
            parts = leaves(t, tm) if changed & set(leaves(t, tm)) and t not in changed else [t]
            wanted += [renamed.get(p, p) for p in parts if p not in not_run]
        # local and conversion YAMLs live in tmp (an index of its own: tmp goes away)
        tm = _new_manager(defaults, tmp, version) if renamed else _manager(defaults, None, version)
        if not wanted:
            return {"not_run": not_run}
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        gen = {"max_gen_toks": max_new_tokens} if max_new_tokens else None
        with jp_stable.bound_to(lm.tokenizer, lm.max_length, lm.max_gen_toks, cap=max_new_tokens):
            out = lm_eval.simple_evaluate(model=lm, tasks=wanted, task_manager=tm, limit=limit, num_fewshot=num_fewshot,
                                          log_samples=False, verbosity="ERROR", bootstrap_iters=1000,
                                          gen_kwargs=gen)  # fmt: skip
    if out is None:
        raise ScoreError("lm-eval returned no results")
    back = {v: k for k, v in renamed.items()}
    results = {back.get(name, name): res for name, res in out["results"].items()}
    return results | ({"not_run": not_run} if not_run else {})
