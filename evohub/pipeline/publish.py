"""A finished run as ONE Hub commit — weights, config, tokenizer, recipe, results, fitness curve,
compressed candidates log and score matrices, model card, eval results — tagged with the run id; and the run state
in a private dataset repo for runs that continue on another machine (docs/design.md#publishing).

    >>> done, card = publish_run(RunDir("runs/x"), "me/EvoLLM-JP", dry_run=True)   # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from evohub.errors import RunError, UsageError
from evohub.evolve.estimators import ESTIMATORS
from evohub.hub.card import CardMeta, Result, render_card
from evohub.hub.client import download_dataset_repo
from evohub.hub.commit import Published, check_repo_id, commit_files, push_dataset_files
from evohub.hub.pipelines import UNET, components
from evohub.merging.arch import num_decoder_layers
from evohub.merging.io import read_header
from evohub.merging.methods import METHODS
from evohub.models import KINDS
from evohub.pipeline.plan import human_count
from evohub.pipeline.pull import model_license
from evohub.pipeline.report import SHORT, run_cost, seconds_key, stage_matrices, stage_summary, token_curves
from evohub.pipeline.rundir import RunDir
from evohub.score.evaluate import score_rows, shown_metrics, shown_value
from evohub.score.suites import find_suite
from evohub.score.tasks import TASKS, get_task
from evohub.score.tasks.ja_vqa import PROMPT as VLM_PROMPT
from evohub.spec import JobSpec, ModelRef, Recipe
from evohub.spec.job import TASK_OPTIONS

log = logging.getLogger("evohub")
STAGE_NAMES = {"ps": "parameter space", "dfs": "data-flow space"}
#: the usage example of an LLM card (a VLM card uses its task's prompt)
LLM_EXAMPLE = "以下に、あるタスクを説明する指示があります。\n\n### 指示:\n1から10までの和は?\n\n### 応答:"


def _first_question(job: JobSpec, run: RunDir) -> str | None:
    """The card example's question: the first held-out question the evolved model answered right
    (its evaluation samples), else the first of the job's local held-out or fitness data."""
    for samples in sorted((run.root / "eval" / "evolved").glob("samples_*.jsonl")):
        for line in samples.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if row.get("correct") and isinstance(row.get("question"), str):
                return row["question"]
    ev = job.evaluation
    paths = [*(ev.data.values() if ev else ()), *(d.path for d in (job.fitness.validation, job.fitness.data) if d)]
    for row in _first_rows(paths):
        qas = row.get("qas") if isinstance(row, dict) else None
        q = qas[0].get("question") if isinstance(qas, list) and qas and isinstance(qas[0], dict) else None
        q = q or (row.get("question") if isinstance(row, dict) else None)
        if isinstance(q, str) and q:
            return q
    return None


def _first_rows(paths):
    """The first JSON row of each readable file of ``paths`` (a missing or broken one is skipped)."""
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                yield json.loads(f.readline())
        except (OSError, ValueError, TypeError):
            continue


def _example_prompt(job: JobSpec, run: RunDir, vision: bool) -> str:
    """The card's usage example: the job's own fitness prompt (what evolution scored), with a
    question from its local data where it has some."""
    fit = job.fitness
    options = TASKS.get(fit.task).options
    task = get_task(fit.task, **{k: getattr(fit, k) for k in ("prompt", "stop") if k in options and getattr(fit, k)})
    template = getattr(task, "prompt", None)
    question = _first_question(job, run)
    if vision:
        return (template or VLM_PROMPT).format(input=f"<image>\n{question or 'この画像には何が写っていますか?'}")
    if template and "{input}" in template:
        return template.format(input=question or "1から10までの和は?")
    return LLM_EXAMPLE


def install_line() -> str:
    """A pinned install of the evohub that made the model: its git source at the exact commit
    where the code is a clean checkout of a public remote, else the version (to install from its
    source); never a machine path or a credential."""
    import subprocess
    from importlib.metadata import version

    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""

    try:
        remote, commit, dirty = (
            git("remote", "get-url", "origin"),
            git("rev-parse", "HEAD"),
            git("status", "--porcelain"),
        )
    except (OSError, subprocess.SubprocessError):
        remote = commit = dirty = ""
    remote = re.sub(r"^(https?://)[^/@]+@", r"\1", remote)  # drop any credential
    if remote.startswith("git@github.com:"):
        remote = "https://github.com/" + remote.removeprefix("git@github.com:")
    if remote.startswith("https://") and re.fullmatch(r"[0-9a-f]{40}", commit) and not dirty:
        return f'pip install "evohub @ git+{remote.removesuffix("/")}@{commit}"'
    return f"# evohub {version('evohub')}, installed from its source (see its README)"


def run_id(run: RunDir) -> str:
    """The tag a published run's commit gets: ``evohub-<run dir>-<recipe hash>``."""
    digest = hashlib.sha256(run.recipe_path.read_bytes()).hexdigest()[:10]
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", run.root.resolve().name).strip("-.") or "run"
    return f"evohub-{name}-{digest}"


def score_files(run: RunDir) -> dict[str, Path]:
    """Each stage's score matrix, by the name its gzipped copy has in the commit (``scores-<stage>.jsonl.gz``)."""
    paths = {stage: run.scores_path(stage) for stage in STAGE_NAMES}
    return {f"scores-{stage}.jsonl.gz": p for stage, p in paths.items() if p.exists()}


#: a local data file larger than this is named on the card, not published with ``include_data``
DATA_LIMIT = 20 * 1024**2


def local_data(job: JobSpec) -> dict[Path, str]:
    """The job's local data files (fitness, validation, held-out evaluation) -> their path in the
    published commit (``data/<file name>``), when ``publish.include_data`` asks for them."""
    if job.publish is None or not job.publish.include_data:
        return {}
    fit = job.fitness
    paths = [d.path for d in (fit.data, fit.validation) if d is not None and d.path]
    paths += list(job.evaluation.data.values()) if job.evaluation else []
    out: dict[Path, str] = {}
    for p in dict.fromkeys(Path(x).resolve() for x in paths):
        if not p.is_file() or p.stat().st_size > DATA_LIMIT:
            continue
        name, k = f"data/{p.name}", 2
        while name in out.values():
            name, k = f"data/{p.stem}-{k}{p.suffix}", k + 1
        out[p] = name
    return out


def _data_shown(ref, run: RunDir, published: dict[Path, str]) -> str:
    """A dataset as the card names it: a Hub dataset as it is; a local file by its link in the
    commit when it is published, else by its file name only (no path of this machine)."""
    if ref.path is None:
        return ref.display()
    split = ref.display()[len(ref.path) :]  # "[train]", "[train[:16]]"
    name = published.get(Path(ref.path).resolve())
    return f"[`{name}`]({name}){split}" if name else f"`{Path(ref.path).name}`{split} (a local file)"


def publish_files(run: RunDir, readme: str, extra: dict[str, str],
                  data: dict[Path, str] | None = None) -> dict[str, bytes | Path]:  # fmt: skip
    """Everything a published run holds, by path in the repo (``data``: :func:`local_data`'s files)."""
    if not any((run.model_dir / f).exists() for f in ("config.json", "model_index.json")):
        raise RunError(f"{run.root}: no merged model in model/; run the job to the end first")
    files: dict[str, bytes | Path] = {  # a pipeline's components are folders
        p.relative_to(run.model_dir).as_posix(): p
        for p in sorted(run.model_dir.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(run.model_dir).parts)
    }
    for p in (run.recipe_path, run.results_path, run.fitness_plot, run.front_plot, run.samples_plot):
        if p.exists():
            files[p.name] = p
    if run.log_path.exists():
        files["candidates.jsonl.gz"] = gzip.compress(run.log_path.read_bytes(), mtime=0)
    for name, path in score_files(run).items():
        files[name] = gzip.compress(path.read_bytes(), mtime=0)
    files |= {name: path for path, name in (data or {}).items()}
    files |= {k: v.encode() for k, v in extra.items()}
    files["README.md"] = readme.encode()
    return files


# ----------------------------------------------------------------------------------------------
# The card's facts, gathered from the run


def _fmt(v) -> str:
    if isinstance(v, tuple | list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def _link(ref: ModelRef, run: RunDir) -> str:
    """A source as the card shows it: a Hub link, or a local path relative to the run directory."""
    return f"[{ref.repo}](https://huggingface.co/{ref.repo})" if ref.repo else f"`{ref.display(run.root)}`"


def _converted_from(converted: dict | None) -> str | None:
    """Where a converted model's weights came from, in words: the package that shipped them (its
    name and version) or the pickle files, each file read with its sha256."""
    if not converted:
        return None
    files = ", ".join(f"`{name}` (sha256 `{digest}`)" for name, digest in converted.get("from", {}).items())
    package = converted.get("package")
    if package:  # e.g. a GGUF shipped in a PyPI wheel
        where = " ".join(x for x in (package.get("index"), "package", package["name"], package["version"]) if x)
        return f"converted to safetensors from {files} in the {where}"
    return f"converted to safetensors from {files}"


def _sources(job: JobSpec, run: RunDir, licenses: dict[str, str | None]) -> tuple[dict | None, list[dict]]:
    entries = {e["name"]: e for e in run.lock()}

    def info(name: str, ref: ModelRef) -> dict:
        e = entries.get(name, {})
        return {"name": name, "ref": ref, "link": _link(ref, run), "revision": (e.get("revision") or "local")[:12],
                "license": licenses.get(name), "architecture": e.get("architecture"),
                "provenance": _converted_from(e.get("converted"))}  # fmt: skip

    rows = [info(name, ref) for name, ref in job.models()]
    return (rows[0] if job.base_model else None), rows[1:] if job.base_model else rows


@dataclass(frozen=True)
class Licence:
    """What the card declares: one licence for all sources as is; otherwise ``other`` with a name
    (``mixed``, or ``unknown`` when no source declares one) and a LICENSE file listing each."""

    id: str | None
    name: str | None = None
    note: str | None = None
    file: str | None = None  # the LICENSE file's text

    @property
    def link(self) -> str | None:
        return "LICENSE" if self.file else None


def _license(rows: list[dict]) -> Licence:
    found = {r["license"] for r in rows}
    if len(found) == 1 and None not in found:
        return Licence(found.pop())
    unknown = found == {None}
    listed = "\n".join(
        f"- {r['name']}: {r['license'] or 'unknown (its card declares none)'} — {r['link']}" for r in rows
    )
    what = "No source declares a licence" if unknown else "The sources carry different (or unknown) licences"
    each = "" if unknown else " " + "; ".join(f"{r['name']}: {r['license'] or 'unknown'}" for r in rows) + "."
    note = f"{what}; every source's terms apply to this merge: see [LICENSE](LICENSE).{each}"
    text = f"{what}. This merge is subject to the terms of every one of its sources:\n\n{listed}\n"
    return Licence("other", "unknown" if unknown else "mixed", note, text)


def _results_table(results: dict | None, paper_model: str | None = None) -> dict | None:
    """The card's results: per suite one row per reported number, every value on 0-100 (a suite
    that reports none shows its metrics by ``shown_value``), the average and, under it, the
    published figure for each model the suite's references name (docs/design.md#reported-results)."""
    if not results:
        return None
    names = list(results["models"])
    rows: dict[str, list[dict]] = {}
    not_run: dict[str, dict[str, str]] = {}
    notes: dict[str, list[str]] = {}
    for suite in results["suites"]:
        found = find_suite(suite)
        metrics: dict[str, list] = {}
        for i, name in enumerate(names):
            m = results["models"][name]["suites"].get(suite, {}).get("metrics", {})
            for key, v in _card_values(suite, m):
                metrics.setdefault(key, ["-"] * len(names))[i] = v
            not_run.setdefault(suite, {}).update(m.get("not_run") or {})
            if m.get("prompt_version") and name == names[0]:
                notes.setdefault(suite, []).append(f"jp-stable prompt version {m['prompt_version']}.")
        if found.references and metrics:
            paper = [_reference(found, name, results["models"][name].get("model", ""), paper_model) for name in names]
            what = found.average or found.reports[0].name  # the figure published: the average, or the one number
            if any(v != "-" for v in paper):
                metrics[f"{what}, published ({found.references[0][2]})"] = paper
        rows[suite] = [{"metric": k, "values": v} for k, v in metrics.items()]
    docs = {suite: find_suite(suite).doc for suite in results["suites"]}  # which protocol each is
    return {"suites": list(results["suites"]), "names": names, "rows": rows, "not_run": not_run, "notes": notes,
            "docs": docs}  # fmt: skip


def _card_values(suite: str, m: dict) -> list[tuple[str, str]]:
    if m.get("scores"):
        return score_rows(suite, m)
    shown = [k for k in shown_metrics(suite) if k not in ("ja_rate", "n")]
    flat = {k: m[k] for k in shown if k in m}
    for task, res in (m.get("lm_eval") or {}).items():
        flat |= {f"{task} {k}": v for k, v in res.items() if isinstance(v, float) and "stderr" not in k}
    return [(k, shown_value(k, v)) for k, v in flat.items()]


def _reference(suite, name: str, label: str, paper_model: str | None) -> str:
    """The published figure for a results column: the job's ``paper_reference`` for the evolved
    model, a source's by its Hub repo name."""
    want = paper_model if name == "evolved" else label.split("@")[0].split("/")[-1]
    return next((f"{v:.1f}" for model, v, _ in suite.references if model == want), "-")


def _results(results: dict | None, kind) -> list[Result]:
    """The evolved model's reported numbers that came from Hub datasets, one per number (a number
    measured on a local file is not published as the Hub dataset's)."""
    if not results:
        return []
    out = []
    for name, r in results["models"]["evolved"]["suites"].items():
        suite, m = find_suite(name), r["metrics"]
        by_name = {x["name"]: x for x in m.get("scores") or () if not x.get("local")}
        for rep in suite.reports:
            if rep.name not in by_name:
                continue
            d = rep.dataset
            notes = TASKS.get(suite.task).result.notes if suite.task else suite.doc
            if m.get("prompt_version"):
                notes += f"; prompt version {m['prompt_version']}"
            out.append(Result(dataset_id=d.repo, task_id=rep.task or suite.name, config=d.config,
                              split=d.split, revision=by_name[rep.name].get("revision") or d.revision,
                              metric=rep.metric.split(",")[0],
                              metric_type=rep.metric_type, task_type=kind.pipeline_tag,
                              value=by_name[rep.name]["value"], notes=notes))  # fmt: skip
    return out


def _model_shape(run: RunDir, config: dict) -> str:
    """The published model's real size: decoder layers and parameters (a pipeline: its UNet's),
    counted from its weights."""
    unet = "_class_name" in config and (run.model_dir / "unet").is_dir()
    folder = run.model_dir / "unet" if unet else run.model_dir
    params = sum(math.prod(e.shape) for f in sorted(folder.glob("*.safetensors")) for e in read_header(f).values())
    if unet:
        return f"a UNet of {human_count(params)} parameters"
    return f"{num_decoder_layers(config) or '?'} decoder layers, {human_count(params)} parameters"


def _pipeline_facts(job: JobSpec, run: RunDir, recipe: Recipe, sources: list[dict]) -> dict:
    """What a diffusion card adds: each group's weights, where each whole component comes from,
    the generation settings evolution scored with (the usage snippet's), the judge, the grid."""
    ps = recipe.parameter_space
    assert ps is not None
    names = [s["name"] for s in sources]
    patterns = [o.pattern for o in ps.models[0].overrides] if ps.models else []

    def weight(m, pattern: str | None) -> str:  # a model's weight in one group (its override's, else its own)
        return _fmt(next((o.weight for o in m.overrides if o.pattern == pattern), m.weight))

    groups = [
        {"name": "`" + p.replace("|", "\\|") + "`", "weights": [weight(m, p) for m in ps.models]} for p in patterns
    ]
    rest = "every other tensor" if patterns else "every tensor"
    groups.append({"name": rest, "weights": [weight(m, None) for m in ps.models]})
    primary = names[0] if names else "the first source"
    chosen = {c: ("base" if v == "base" else names[v]) for c, v in (recipe.components or {}).items()}
    index = run.read_json(run.model_dir / "model_index.json") or {}
    whole = [{"component": c, "source": chosen.get(c, primary)} for c in sorted(components(index)) if c != UNET]
    fit = job.fitness
    task = get_task(fit.task, **{k: getattr(fit, k) for k in TASK_OPTIONS})  # its settings, defaults filled in
    ref = job.judge_model()
    return {"groups": groups, "whole": whole, "steps": task.steps, "guidance": _fmt(task.guidance), "image_size": task.size,
            "judge": task.judge_name, "judge_link": _link(run.pinned(ref), run) if ref else None,
            "samples_plot": run.samples_plot.exists(), "example_prompt": _first_prompt(job, run),
            "loras": [{"name": n, "file": x.source.file, "scale": _fmt(x.scale)}
                      for n, x in zip([lo.key for lo in job.loras], recipe.loras, strict=True)]}  # fmt: skip


def _first_prompt(job: JobSpec, run: RunDir) -> str:
    """An image card's example prompt: the first held-out prompt (else the first fitness prompt)."""
    ev = job.evaluation
    paths = [*sorted((run.root / "eval" / "evolved").glob("samples_*.jsonl")), *(ev.data.values() if ev else ()),
             *(d.path for d in (job.fitness.data,) if d.path)]  # fmt: skip
    for row in _first_rows(paths):
        if isinstance(row, dict) and isinstance(row.get("prompt"), str):
            return row["prompt"].replace("\n", " ").replace('"', "'")
    return "富士山と桜、浮世絵風"


def _stages(job: JobSpec, run: RunDir) -> list[dict]:
    rows = run.log_rows()
    out = []
    for st in job.stages():
        opt = (job.parameter_space if st == "ps" else job.data_flow_space).optimizer  # type: ignore[union-attr]
        s = stage_summary(run, st, rows)
        best = _fmt(s.best_fitness) if s.evaluations > s.failed else "-"
        scored = f"{s.cost['items']:,}" if s.cost else None
        out.append({"stage": STAGE_NAMES[st], "x0": _fmt(opt.x0), "sigma0": _fmt(opt.sigma0), "popsize": s.popsize,
                    "evaluations": s.evaluations, "generations": s.generations, "failed": s.failed, "best": best,
                    "scored": scored})  # fmt: skip
    return out


def _run_cost(job: JobSpec, run: RunDir, results: dict | None) -> dict | None:
    """What evolution cost: results.json's ``cost``, else the run's ledger read now (its device
    then the one the evolved model was evaluated on, when known)."""
    if results and results.get("cost"):
        return results["cost"]
    device = ((results or {}).get("models", {}).get("evolved", {}).get("config") or {}).get("device")
    rows = run.log_rows()
    return run_cost([stage_summary(run, st, rows) for st in job.stages()], device)


def _duration(seconds: float, unit: str, parts: dict[str, float]) -> str:
    """``0.41 GPU-hours (PS 0.38, DFS 0.03)``: hours from 0.1 h on, else seconds (two digits
    under 10); each stage's share when there are several."""
    hours = seconds >= 360
    num = (lambda s: f"{s / 3600:.2f}") if hours else (lambda s: f"{s:,.0f}" if s >= 10 else f"{s:.2g}")
    each = f" ({', '.join(f'{SHORT.get(st, st)} {num(v)}' for st, v in parts.items())})" if len(parts) > 1 else ""
    what = f"{unit}-hours" if hours else f"{unit}-seconds"
    if not unit:
        what = "hours of evaluation" if hours else "seconds of evaluation"
    return f"{num(seconds)} {what}{each}"


def _estimator_note(fit) -> str:
    """How candidates were scored, when not on every item (docs/design.md#fitness-estimators)."""
    if fit.estimator == "full":
        return ""
    est = ESTIMATORS.get(fit.estimator)
    opts = ", ".join(f"{k} {v:g}" for k, v in est.settings(fit.estimator_options).items())
    return (f"; candidates were scored with the `{fit.estimator}` estimator ({opts}), and each stage's "
            "winner was chosen among candidates scored on every item")  # fmt: skip


def cost_line(cost: dict | None) -> str | None:
    """The card's sentence on what evolution's fitness cost (results.json's ``cost``), e.g.
    ``Evolution scored 25,650 fitness items (…) in 0.41 GPU-hours (PS 0.38, DFS 0.03).``"""
    if not cost:
        return None
    key = seconds_key(cost.get("device"))
    unit = key.removesuffix("seconds").removesuffix("_").upper()
    total, stages = cost["total"], cost["stages"]
    tokens = " and ".join(
        [f"{total['prompt_tokens']:,} prompt"]
        + ([f"{total['generated_tokens']:,} generated"] if total["generated_tokens"] else [])
    )
    line = (f"Evolution scored {total['items']:,} fitness items ({tokens} tokens) in "
            f"{_duration(total[key], unit, {st: c[key] for st, c in stages.items()})}.")  # fmt: skip
    if valid := total.get("validation"):
        parts = {st: c["validation"][key] for st, c in stages.items() if "validation" in c}
        whose = "each stage's" if len(stages) > 1 else "the"
        line += (f" Choosing {whose} winner on the validation split scored "
                 f"{valid['items']:,} more items in {_duration(valid[key], unit, parts)}.")  # fmt: skip
    return line


def _recipe_facts(recipe: Recipe, sources: list[dict], run: RunDir) -> dict:
    ps_models = []
    if recipe.parameter_space is not None:
        names = [s["name"] for s in sources]
        for i, m in enumerate(recipe.parameter_space.models):
            name = names[i] if i < len(names) else m.source.display(run.root)
            ps_models.append({"name": name, "weight": _fmt(m.weight), "density": _fmt(m.density)})
    dfs = None
    if (d := recipe.data_flow_space) is not None:
        dfs = {"hops": len(d.path), "from_a": sum(1 for w, _ in d.path if w == "a"), "from_b": sum(1 for w, _ in d.path if w == "b"),
               "a": "the parameter-space merge" if d.a == "ps" else d.a.display(run.root),
               "b": d.b if isinstance(d.b, str) else d.b.display(run.root),
               "min_scale": _fmt(min(d.scales)), "max_scale": _fmt(max(d.scales)),
               "summary": " ".join(f"{w}{i}" for w, i in d.path)}  # fmt: skip
    vocab = None
    if recipe.parameter_space is not None and recipe.parameter_space.vocab == "base":
        vocab = ("The sources' vocabularies differ: the embeddings and LM head were merged over the base "
                 "model's vocabulary; rows the output's architecture has beyond it are its own, unmerged.")  # fmt: skip
    ps = recipe.parameter_space
    density = bool(ps is not None and METHODS.get(ps.method).density)
    return {"recipe": recipe, "ps_models": ps_models, "dfs": dfs, "vocab_note": vocab, "has_density": density}


def build_card(run: RunDir, repo_id: str, licenses: dict[str, str | None]) -> tuple[str, dict[str, str]]:
    """(card text, {".eval_results/<name>.yaml": text}) for a finished run."""
    job, recipe = run.job(), run.recipe()
    results = run.read_json(run.results_path)
    config = run.read_json(run.model_dir / "config.json") or run.read_json(run.model_dir / "model_index.json") or {}
    base, sources = _sources(job, run, licenses)
    licence = _license(([base] if base else []) + sources)
    kind = KINDS.get(job.publish.card if job.publish else "llm")
    ev = job.evaluation
    entries = _results(results, kind)  # type: ignore[arg-type]
    evolved = (results or {}).get("models", {}).get("evolved", {})  # type: ignore[union-attr]
    fit = job.fitness
    meta = CardMeta(
        repo_id=repo_id, template=kind.card, pipeline_tag=kind.pipeline_tag,
        base_models=[s["ref"].repo for s in ([base] if base else []) + sources if s["ref"].repo],
        language=list(job.publish.language) if job.publish else ["ja"], license=licence.id,
        license_name=licence.name, license_link=licence.link,
        datasets=[d.repo for d in (fit.data, fit.validation) if d is not None and d.repo],
        results=entries, date=evolved.get("created"), library_name=kind.library,
    )  # fmt: skip
    example = _example_prompt(job, run, kind.vision)
    arch = (config.get("architectures") or [config.get("_class_name") or "a transformers model"])[0]
    primary = next((s["link"] for s in sources if s["architecture"] == arch), None)  # a VLM's own source
    data = local_data(job)
    context = {
        "title": repo_id.split("/")[-1], "repo_id": repo_id, "repo_name": repo_id.split("/")[-1],
        "description": job.description, "base": base, "sources": sources, "license_note": licence.note,
        "architecture": arch, "model_shape": _model_shape(run, config),
        "primary": primary or "its VLM source", "stages": _stages(job, run),
        "cost": cost_line(_run_cost(job, run, results)),  # type: ignore[arg-type]
        "score_files": list(score_files(run)),
        "front_plot": run.front_plot.exists(),
        "tokens_panel": token_curves(run.log_rows(), job.stages(), stage_matrices(run, job.stages())) is not None,
        "fitness": f"`{fit.task}` on {_data_shown(fit.data, run, data)}"
        + (f" (finalists re-scored on {_data_shown(fit.validation, run, data)}; the best on both pooled wins)"
           if fit.validation else "")
        + _estimator_note(fit),
        "fitness_task": fit.task, "results": _results_table(results, ev.paper_reference if ev else None), "example_prompt": example.replace("\n", "\\n"),
        "install": install_line(),
        **_recipe_facts(recipe, sources, run),
        **(_pipeline_facts(job, run, recipe, sources) if kind.library == "diffusers" else {}),
    }  # fmt: skip
    text, files = render_card(meta, context)
    return text, files | ({"LICENSE": licence.file} if licence.file else {})


def _licenses(job: JobSpec, run: RunDir, dry_run: bool) -> dict[str, str | None]:
    """Each model's licence: recorded in the lock at pull time; asked again only for older locks."""
    locked = {e["name"]: e for e in run.lock()}
    out = {}
    for name, ref in job.models():
        if "license" in locked.get(name, {}):
            out[name] = locked[name]["license"]
        else:
            out[name] = None if dry_run and ref.repo else model_license(run.pinned(ref) if ref.repo else ref)
    return out


def publish_run(
    run: RunDir,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool = False,
    force: bool = False,
    dry_run: bool = False,
) -> tuple[Published, str]:
    """Publish a finished run as ONE commit and tag it with the run id; returns what was (or, with
    ``dry_run``, would be) published, and the card text. A model already on the target branch is
    never overwritten without ``force``; ``revision`` names a branch (created if needed)."""
    try:
        check_repo_id(repo_id)
    except ValueError as e:
        raise UsageError(f"--repo: {e}") from e
    job = run.job()
    licenses = _licenses(job, run, dry_run)
    unknown = [name for name, lic in licenses.items() if lic is None]
    if unknown and not dry_run:
        log.warning(
            "the licence of %s is unknown (no card declares one); the card and LICENSE say so", ", ".join(unknown)
        )
    readme, eval_files = build_card(run, repo_id, licenses)
    files = publish_files(run, readme, eval_files, local_data(job))
    tag = run_id(run)
    if dry_run:
        return Published(repo_id, revision or "main", None, tag, sorted(files)), readme
    done = commit_files(repo_id, files, message=f"evohub: publish {job.name} ({tag})", tag=tag,
                        tag_message=f"evohub run {run.root.resolve().name}", revision=revision, private=private,
                        force=force)  # fmt: skip
    return done, readme


def push_state(run: RunDir, state_repo: str, message: str = "evohub: run state") -> None:
    """Upload the run's log, spec, lock, checkpoints, stage recipes and evaluation results to a
    private dataset repo (one commit)."""
    push_dataset_files(state_repo, run.state_files(), message)


def fetch_state(state_repo: str, run_dir: str | Path) -> bool:
    """Download a run's state into ``run_dir`` (which must not hold a run); False if there is none."""
    local = download_dataset_repo(state_repo)
    if local is None:
        return False
    found = False
    for p in local.rglob("*"):
        if p.is_file() and not p.name.startswith("."):
            dest = Path(run_dir) / p.relative_to(local)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dest)
            found = True
    return found
