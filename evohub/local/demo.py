"""The embedded default: the demo job on the local world, every stage of a real job.

``evohub demo`` runs ``demo.yaml`` (``jobs/demo.yaml``; shipped with the package) on the trained
world of :mod:`evohub.local.world` (``--train-world`` retrains it from its seed): validate → plan →
pull (local) → evolve the parameter space, then a data-flow path → merge the winner → evaluate
it, its sources and the untuned merge on 300 held-out problems → card → publish to a local Hub
(:mod:`evohub.local.hubserver`, through the real huggingface_hub client) → ``evohub verify`` of the
published model → a table. Offline, CPU, about a minute.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from rich.console import Console
from rich.table import Table
from transformers import AutoModelForCausalLM, AutoTokenizer

import evohub
from evohub.errors import RunError
from evohub.local import hubserver
from evohub.local.world import build_world, write_splits
from evohub.pipeline.compare import PS_WINNER
from evohub.pipeline.plan import render
from evohub.pipeline.verify import verify
from evohub.spec import warnings_for

#: the demo job and its world, shipped inside the package (links to jobs/ in a checkout)
DEMO_JOB = Path(__file__).parent / "demo.yaml"
QUESTIONS = ("12+34", "57+38", "81+19")


def smaller(spec_path: Path, root: Path, max_evals: int) -> Path:
    """A copy of the job whose stages have a budget of at most ``max_evals`` candidates each."""
    spec = evohub.load_job(spec_path)
    update = {}
    for key in ("parameter_space", "data_flow_space"):
        part = getattr(spec, key)
        if part is not None:
            cap = min(part.optimizer.max_evals or max_evals, max_evals)
            update[key] = part.model_copy(update={"optimizer": part.optimizer.model_copy(update={"max_evals": cap})})
    out = root / "demo-small.yaml"
    out.write_text(spec.model_copy(update=update).to_yaml())
    return out


def _spec_path(root: Path, seed: int, train_world: bool, max_evals: int | None, say) -> Path:
    """The demo job: the shipped one, or a copy pointing at a world retrained from ``seed``, or
    with a smaller budget."""
    if not DEMO_JOB.exists():
        raise RunError(f"{DEMO_JOB}: missing; reinstall evohub (the demo job ships with the package)")
    spec_path = _retrained(root, seed, say) if train_world else DEMO_JOB
    return smaller(spec_path, root, max_evals) if max_evals else spec_path


def _retrained(root: Path, seed: int, say) -> Path:
    world = root / "world"
    say(f"train the local world in {world} (seed {seed}; about 3.5 min on 2 cores, then cached)")
    build_world(world, seed)
    write_splits(world, seed)
    text = DEMO_JOB.read_text().replace("demo-world/", f"{world.resolve()}/").replace("seed: 0", f"seed: {seed}")
    spec_path = root / "demo.yaml"
    spec_path.write_text(text)
    return spec_path


def scores_table(summary, console, title: str = "Japanese arithmetic (問 a+b 答 → the sum, then です)") -> dict:
    """The held-out ja-math table of a run, and the evolved model's gains; returns acc_ja by model."""
    table = Table("model", "acc_ja (right, in Japanese)", "acc (right)", "answers in Japanese", title=title)
    scores = {}
    for name, res in (summary.results or {}).get("models", {}).items():
        m = res["suites"]["ja-math"]["metrics"]
        scores[name] = m["acc_ja"]
        table.add_row(name, f"{100 * m['acc_ja']:.1f}", f"{100 * m['acc']:.1f}", f"{100 * m['ja_rate']:.1f}")
    console.print(table)
    others = {k: v for k, v in scores.items() if k not in ("evolved", "untuned merge", PS_WINNER)}
    if others:
        best = max(others, key=others.get)  # type: ignore[arg-type]
        console.print(
            f"evolved: {100 * scores['evolved']:.1f}%, {100 * (scores['evolved'] - others[best]):+.1f} points over the "
            f"best source ({best}) and {100 * (scores['evolved'] - scores.get('untuned merge', 0)):+.1f} over the untuned merge"
        )
    if PS_WINNER in scores:
        console.print(f"the data-flow stage added {100 * (scores['evolved'] - scores[PS_WINNER]):+.1f} points to the "
                      f"parameter-space winner ({100 * scores[PS_WINNER]:.1f}%)")  # fmt: skip
    return scores


def _examples(model_dir: Path, console) -> None:
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    for q in QUESTIONS:
        ids = tok(f"問 {q} 答 ", return_tensors="pt").input_ids
        out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
        reply = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        right = f"{sum(int(x) for x in q.split('+'))}です"
        mark = "[green]right[/green]" if reply.strip() == right else f"[red]wrong[/red] (the answer is {right})"
        console.print(f"問 {q} 答 → {reply}   {mark}")


class Steps:
    """Numbered steps on the console (``say("...")`` prints the next one)."""

    def __init__(self, console: Console):
        self.console, self.n = console, 0

    def __call__(self, what: str) -> None:
        self.n += 1
        self.console.print(f"\n[bold]{self.n}. {what}[/bold]")


def published_run(spec_path: Path, root: Path, say: Steps, progress: bool = True):
    """Validate and plan the job at ``spec_path``, run it afresh in ``root/run``, publish it to a
    local Hub (``root/hf``, exported to ``root/hub``) and ``evohub verify`` what was published:
    rebuilt from its recipe, every file compared. Returns the run's summary."""
    console = say.console
    say("validate the job spec")
    spec = evohub.load_job(spec_path)
    for w in warnings_for(spec, spec_path):
        console.print(w)
    console.print(f"ok: {spec_path} (job spec {spec.name!r})")
    say("plan the job")
    render(evohub.plan(spec), console)
    run_dir = root / "run"
    shutil.rmtree(run_dir, ignore_errors=True)  # an example runs whole each time
    stages = " then ".join(s.upper() for s in spec.stages())
    say(f"run it: pull (local) → evolve {stages} → merge the best → evaluate on held-out problems → card → "
        "publish to a local Hub")  # fmt: skip
    with hubserver.serve(root / "hf") as hub:
        summary = evohub.run(spec_path, run_dir, device="cpu", progress=progress)
        if summary.published:
            repo = summary.published["repo"]
            hub.export(repo, root / "hub" / repo)
            say("evohub verify: rebuild the published model from its recipe and compare every file")
            report = verify(repo, sources_dir=summary.run_dir)
            for f in report.files:
                console.print(
                    f"{'equal    ' if f.equal else 'DIFFERENT'} {f.name}" + (f"  ({f.detail})" if f.detail else "")
                )
            if not report.ok:
                raise RunError(f"{repo}: the published model does not rebuild from its recipe")
            console.print("verified: the rebuild is identical")
    return summary


def report_published(summary, root: Path, console: Console) -> None:
    if summary.published:
        p = summary.published
        console.print(f"\npublished to the local Hub: {p['repo']} commit {str(p['commit'])[:12]}, tag {p['tag']} "
                      f"(copied to {root / 'hub' / p['repo']})")  # fmt: skip
    console.print(f"recipe: {summary.run_dir / 'recipe.yaml'}   fitness curve: {summary.run_dir / 'fitness.png'}")


def run_demo(root: Path, seed: int = 0, train_world: bool = False, max_evals: int | None = None,
             progress: bool = True) -> int:  # fmt: skip
    """The demo: the demo job on the local world, published to a local Hub, with a comparison."""
    console = Console()
    root.mkdir(parents=True, exist_ok=True)
    say = Steps(console)
    spec_path = _spec_path(root, seed, train_world, max_evals, say)
    summary = published_run(spec_path, root, say, progress)
    say("the evolved merge against its sources and the untuned merge (held-out test split)")
    scores_table(summary, console)
    say("examples from the evolved model")
    _examples(summary.model_dir, console)
    report_published(summary, root, console)
    console.print("\n[green]demo complete[/green]")
    return 0
