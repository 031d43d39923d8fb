"""``evohub verify``: rebuild a published model from its recipe and compare it file by file
(docs/design.md#verify).

    >>> report = verify("me/EvoLLM-JP-v1-7B")          # doctest: +SKIP
    >>> report.ok, [f.name for f in report.files if not f.equal]

For people who download an Evo*-JP model: the recipe pins every Hub source to a commit, so the
sources are pulled at those commits, the model is rebuilt with ``evohub merge``'s engine, and
every weight file, the index and config.json are compared by sha256; a weight file that differs
is opened to name the tensors that do. ``--eval SUITE`` re-scores the rebuilt model and compares
the suite's metric with the published ``results.json`` within a tolerance.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from evohub.errors import RunError
from evohub.hub import client
from evohub.merging.build import merge_to_disk
from evohub.merging.io import read_header, sha256_file
from evohub.pipeline.pull import local_dir
from evohub.spec import Recipe, load_recipe

#: What a published model commit is compared on: its weights, their index, its config (a
#: pipeline: each component's, its model_index.json and its scheduler's settings).
COMPARED = ("*.safetensors", "*.safetensors.index.json", "config.json", "model_index.json", "scheduler_config.json")
#: What is fetched of a published model repo to verify it.
PUBLISHED = [*client.MODEL_PATTERNS, "recipe.yaml", "results.json"]


@dataclass
class FileCheck:
    name: str
    equal: bool
    detail: str = ""


@dataclass
class Report:
    source: str
    published: Path  # the published model's files, as verified (a Hub snapshot at the revision asked)
    files: list[FileCheck] = field(default_factory=list)
    scores: list[str] = field(default_factory=list)
    scores_ok: bool = True

    @property
    def ok(self) -> bool:
        return all(f.equal for f in self.files) and self.scores_ok


def _published_dir(target: str, revision: str | None) -> Path:
    """A local directory holding the published model: ``target`` itself, or its Hub snapshot."""
    if Path(target).is_dir():
        return Path(target)
    return client.download(target, revision, PUBLISHED)


def _recipe(published: Path, sources_dir: Path | None) -> Recipe:
    """The published recipe; its local paths (if any) resolved against ``sources_dir``."""
    path = published / "recipe.yaml"
    if not path.exists():
        raise RunError(f"{published}: no recipe.yaml; this is not a model evohub published")
    if sources_dir is None:
        return load_recipe(path)
    return Recipe.from_yaml(path.read_text(), str(path), base_dir=sources_dir)


def _differing_tensors(a: Path, b: Path) -> str:
    """Which tensors of two safetensors files differ (by their bytes), in words."""
    ha, hb = read_header(a), read_header(b)
    bad = sorted(set(ha) ^ set(hb))
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for name in sorted(set(ha) & set(hb)):
            ea, eb = ha[name], hb[name]
            fa.seek(ea.offset)
            fb.seek(eb.offset)
            if (ea.dtype, ea.shape) != (eb.dtype, eb.shape) or fa.read(ea.nbytes) != fb.read(eb.nbytes):
                bad.append(name)
    more = f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""
    return f"tensors differ: {', '.join(bad[:5])}{more}" if bad else "the header differs"


def _compare(published: Path, rebuilt: Path) -> list[FileCheck]:
    """Every compared file, at any depth (a pipeline's components are folders), by its path."""
    names = sorted({p.relative_to(d).as_posix() for pattern in COMPARED for d in (published, rebuilt)
                    for p in d.rglob(pattern) if ".cache" not in p.relative_to(d).parts})  # fmt: skip
    checks = []
    for name in names:
        a, b = published / name, rebuilt / name
        if not a.exists() or not b.exists():
            checks.append(FileCheck(name, False, "only in the " + ("rebuild" if b.exists() else "published model")))
            continue
        equal = sha256_file(a) == sha256_file(b)
        detail = "" if equal or not name.endswith(".safetensors") else _differing_tensors(a, b)
        checks.append(FileCheck(name, equal, detail))
    return checks


def verify(
    target: str,
    *,
    revision: str | None = None,
    sources_dir: Path | None = None,
    device: str = "cpu",
    progress: bool = False,
) -> Report:
    """Rebuild the model published at ``target`` (a Hub repo id or a local model directory) and
    compare it with what was published."""
    published = _published_dir(target, revision)
    recipe = _recipe(published, sources_dir)
    dirs = [local_dir(ref) for ref in recipe.inputs()]
    report = Report(target, published)
    with tempfile.TemporaryDirectory(prefix="evohub-verify-") as tmp:
        rebuilt = merge_to_disk(recipe, dirs, Path(tmp) / "model", device=device, progress=progress)
        report.files = _compare(published, rebuilt)
    return report


def _points(metric: str, value: float) -> float:
    """A metric on the 0–100 scale the card uses (accuracies are fractions in results.json)."""
    return 100 * value if metric.startswith("acc") else value


def rescore(report: Report, suites: list[str], data: dict[str, str], tolerance: float, device: str = "cpu") -> None:
    """Re-score the published model on ``suites`` and compare each suite's metric with its
    results.json (within ``tolerance`` points); adds lines and the verdict to ``report``."""
    from evohub.score.evaluate import evaluate
    from evohub.score.suites import find_suite

    published = report.published
    results = json.loads((published / "results.json").read_text()) if (published / "results.json").exists() else {}
    evolved_run = results.get("models", {}).get("evolved", {})
    evolved, settings = evolved_run.get("suites", {}), evolved_run.get("config", {})
    fresh = evaluate(
        published,
        suites,
        data=data,
        device=device,
        limit=settings.get("limit"),
        max_new_tokens=settings.get("max_new_tokens"),
    )["suites"]  # the published run's settings
    for name in suites:
        metric = find_suite(name).metric
        if metric is None or metric not in fresh[name]["metrics"]:
            report.scores.append(f"{name}: no single metric to compare")
            continue
        now = _points(metric, fresh[name]["metrics"][metric])
        then = evolved.get(name, {}).get("metrics", {}).get(metric)
        if then is None:
            report.scores.append(f"{name}: {metric} {now:.2f} (results.json has no {name} result to compare)")
            report.scores_ok = False
            continue
        diff = abs(now - _points(metric, then))
        ok = diff <= tolerance
        report.scores_ok &= ok
        report.scores.append(f"{name}: {metric} {now:.2f} vs published {_points(metric, then):.2f} "
                             f"({'within' if ok else 'beyond'} {tolerance:g} points)")  # fmt: skip
