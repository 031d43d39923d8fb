"""Model cards for published runs: Jinja templates in ``cards/`` (``llm``, ``vlm``; both extend
``base.md.j2``) rendered into a huggingface_hub ModelCard.

    >>> card, eval_files = build_card("runs/x", "me/EvoLLM-JP", licenses)   # doctest: +SKIP
    >>> card.save("README.md")

Metadata (``ModelCardData``): ``base_model`` (the Hub sources), ``base_model_relation: merge``,
tags, language, the license inherited from the sources (``other`` when they differ, each listed
in the body with a link), library and pipeline, the fitness datasets, and every evaluation result
twice: as ``.eval_results/*.yaml`` (the Hub's current format, built with ``EvalResultEntry``)
and as ``model-index`` for older tools.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from evohub.errors import EvohubError
from evohub.evolve.rundir import RunFiles
from evohub.spec import ModelRef, Recipe

#: the templates: ``evohub/cards`` links to the repository's ``cards/`` and wheels carry a copy
CARDS = Path(__file__).parent / "cards"
TAGS = ["merge", "evolutionary-model-merge", "evohub"]
#: Hub datasets of the suites (and the lm-eval task config) for eval results.
SUITE_DATASETS = {
    "mgsm-ja": ("juletxara/mgsm", "ja", "test"),
    "ja-vg-vqa-500": ("SakanaAI/JA-VG-VQA-500", None, "test"),
    "ja-vlm-bench-itw": ("SakanaAI/JA-VLM-Bench-In-the-Wild", None, "test"),
}
#: metrics shown in the results table: accuracies as %, ROUGE (already × 100) as they are
TABLE_METRICS = ("acc_ja", "acc", "acc_ja_strict", "acc_strict", "rougeL", "rouge1", "rouge2")


def _fmt(v) -> str:
    if isinstance(v, tuple | list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def _link(ref: ModelRef) -> str:
    return f"[{ref.repo}](https://huggingface.co/{ref.repo})" if ref.repo else f"`{ref.path}`"


def _sources(run: RunFiles, licenses: dict[str, str | None]) -> tuple[dict | None, list[dict]]:
    job = run.job()
    entries = {e["name"]: e for e in run.lock()}

    def info(name: str, ref: ModelRef) -> dict:
        e = entries.get(name, {})
        return {
            "name": name,
            "ref": ref,
            "link": _link(ref),
            "revision": (e.get("revision") or "local")[:12],
            "license": licenses.get(name),
            "architecture": e.get("architecture"),
        }

    base = info("base", job.base_model) if job.base_model else None
    return base, [info(s.key, s.ref()) for s in job.sources]


def _license(base: dict | None, sources: list[dict]) -> tuple[str | None, str | None]:
    """(license for the metadata, a note for the body)."""
    rows = ([base] if base else []) + sources
    found = {r["license"] for r in rows}
    if len(found) == 1 and None not in found:
        return found.pop(), None
    listed = "; ".join(f"{r['name']}: {r['license'] or 'unknown'} ({r['link']})" for r in rows)
    return (
        "other",
        f"The sources carry different (or unknown) licenses, all of which apply to this merge: {listed}.",
    )


def _results_table(results: dict | None) -> dict | None:
    if not results:
        return None
    names = list(results["models"])
    rows: dict[str, list[dict]] = {}
    for suite in results["suites"]:
        metrics: dict[str, list] = {}
        for i, name in enumerate(names):
            m = results["models"][name]["suites"].get(suite, {}).get("metrics", {})
            flat = {k: v for k, v in m.items() if k in TABLE_METRICS}
            for task, res in (m.get("lm_eval") or {}).items():
                flat |= {f"{task} {k}": v for k, v in res.items() if isinstance(v, float) and "stderr" not in k}
            for k, v in flat.items():
                metrics.setdefault(k, ["-"] * len(names))[i] = (
                    f"{100 * v:.1f}" if k.startswith("acc") else f"{v:.1f}" if k.startswith("rouge") else f"{v:.4f}"
                )
        rows[suite] = [{"metric": k, "values": v} for k, v in metrics.items()]
    return {"suites": list(results["suites"]), "names": names, "rows": rows}


def _eval_results(results: dict | None, date: str | None):
    """(EvalResultEntry list, legacy EvalResult list) for the evolved model."""
    from huggingface_hub import EvalResult, EvalResultEntry

    if not results:
        return [], []
    entries, legacy = [], []
    for suite, r in results["models"]["evolved"]["suites"].items():
        m = r["metrics"]
        if suite in SUITE_DATASETS and ("acc_ja" in m or "rougeL" in m):
            ds, config, split = SUITE_DATASETS[suite]
            if "acc_ja" in m:
                value, metric, kind, task_type = round(100 * m["acc_ja"], 2), "acc_ja", "accuracy", "text-generation"
                note = "acc_ja (%): correct and Japanese (fastText lid.176 P(ja) > 0.5); zero-shot CoT, greedy (Akiba et al., 2024)"
            else:
                value, metric, kind, task_type = round(m["rougeL"], 2), "rougeL", "rouge", "image-text-to-text"
                note = ("ROUGE-L F x 100 over MeCab tokens; a non-Japanese answer scores as empty; "
                        "5 beams, repetition penalty 1.5 (Akiba et al., 2024)")  # fmt: skip
            entries.append(EvalResultEntry(dataset_id=ds, task_id=config or suite, value=value, date=date, notes=note))
            legacy.append(EvalResult(task_type=task_type, dataset_type=ds, dataset_name=ds.split("/")[-1], dataset_config=config,
                                     dataset_split=split, metric_type=kind, metric_name=metric, metric_value=value))  # fmt: skip
        for task, res in (m.get("lm_eval") or {}).items():
            for key, value in res.items():
                if isinstance(value, float) and "stderr" not in key and math.isfinite(value):
                    legacy.append(EvalResult(task_type="text-generation", dataset_type=task, dataset_name=task,
                                             metric_type=key.split(",")[0], metric_name=key, metric_value=round(value, 4)))  # fmt: skip
    return entries, legacy


def build_card(run_dir: str | Path, repo_id: str, licenses: dict[str, str | None]):
    """(ModelCard, {".eval_results/<name>.yaml": text}) for a finished run."""
    import jinja2
    from huggingface_hub import ModelCard, ModelCardData, eval_result_entries_to_yaml

    run = RunFiles(Path(run_dir))
    job = run.job()
    recipe_path = run.root / "recipe.yaml"
    if not recipe_path.exists():
        raise EvohubError(f"{run.root}: no recipe.yaml; the run has not finished")
    recipe = Recipe.from_yaml(recipe_path.read_text(), str(recipe_path))
    results = json.loads((run.root / "results.json").read_text()) if (run.root / "results.json").exists() else None
    config = json.loads((run.root / "model" / "config.json").read_text())
    base, sources = _sources(run, licenses)
    license_id, license_note = _license(base, sources)
    card_kind = job.publish.card if job.publish else "llm"
    template = CARDS / f"{card_kind}.md.j2"
    if not template.exists():
        raise EvohubError(f"{template}: no such card template")
    entries, legacy = _eval_results(results, (results or {}).get("models", {}).get("evolved", {}).get("created"))
    card_data = ModelCardData(
        base_model=[s["ref"].repo for s in ([base] if base else []) + sources if s["ref"].repo] or None,
        tags=TAGS,
        language=list(job.publish.language) if job.publish else ["ja"],
        license=license_id,
        license_name="mixed" if license_id == "other" else None,
        library_name="transformers",
        pipeline_tag="image-text-to-text" if card_kind == "vlm" else "text-generation",
        datasets=[d.repo for d in (job.fitness.data, job.fitness.validation) if d is not None and d.repo] or None,
        eval_results=legacy or None,
        model_name=repo_id.split("/")[-1],
    )
    card_data.base_model_relation = "merge"
    log = [json.loads(x) for x in run.log_path.read_text().splitlines()] if run.log_path.exists() else []
    stages = []
    for st, part in (("ps", job.parameter_space), ("dfs", job.data_flow_space)):
        if part is None:
            continue
        rows = [r for r in log if r["stage"] == st]
        ok = [r["fitness"] for r in rows if r["fitness"] is not None]
        opt = part.optimizer
        stages.append({"stage": {"ps": "parameter space", "dfs": "data-flow space"}[st], "x0": opt.x0, "sigma0": _fmt(opt.sigma0),
                       "popsize": rows and max(r["index"] for r in rows) + 1, "evaluations": len(rows),
                       "generations": len({r["generation"] for r in rows}), "failed": len(rows) - len(ok),
                       "best": _fmt(max(ok)) if ok else "-"})  # fmt: skip
    ps_models = []
    if recipe.parameter_space is not None:
        names = [s["name"] for s in sources]
        for i, m in enumerate(recipe.parameter_space.models):
            ps_models.append(
                {
                    "name": names[i] if i < len(names) else m.source.display(),
                    "weight": _fmt(m.weight),
                    "density": _fmt(m.density),
                }
            )
    dfs = None
    if recipe.data_flow_space is not None:
        d = recipe.data_flow_space
        dfs = {"hops": len(d.path), "from_a": sum(1 for w, _ in d.path if w == "a"), "from_b": sum(1 for w, _ in d.path if w == "b"),
               "a": "the parameter-space merge" if d.a == "ps" else d.a.display(), "b": d.b if isinstance(d.b, str) else d.b.display(),
               "min_scale": _fmt(min(d.scales)), "max_scale": _fmt(max(d.scales)),
               "summary": " ".join(f"{w}{i}" for w, i in d.path)}  # fmt: skip
    fit = job.fitness
    if card_kind == "vlm":
        from evohub.score.tasks.ja_vqa import PROMPT

        example = PROMPT.format(input="<image>\nこの画像には何が写っていますか?")
    else:
        example = "以下に、あるタスクを説明する指示があります。\n\n### 指示:\n1から10までの和は?\n\n### 応答:"
    arch = (config.get("architectures") or ["a transformers model"])[0]
    primary = next((s["link"] for s in sources if s["architecture"] == arch), None)  # a VLM's own source
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(CARDS), keep_trailing_newline=True)
    content = env.get_template(template.name).render(
        card_data=card_data.to_yaml(),
        title=repo_id.split("/")[-1],
        repo_id=repo_id,
        repo_name=repo_id.split("/")[-1],
        description=job.description,
        base=base,
        sources=sources,
        license_note=license_note,
        recipe=recipe,
        ps_models=ps_models,
        dfs=dfs,
        architecture=arch,
        primary=primary or "its VLM source",
        stages=stages,
        fitness=f"`{fit.task}` on {fit.data.display()}"
        + (f" (best chosen on {fit.validation.display()})" if fit.validation else ""),
        fitness_task=fit.task,
        results=_results_table(results),
        example_prompt=example.replace("\n", "\\n"),
    )
    card = ModelCard(content)
    files = {}
    if entries:
        files[".eval_results/evohub.yaml"] = yaml.safe_dump(
            eval_result_entries_to_yaml(entries), allow_unicode=True, sort_keys=False
        )
    return card, files
