"""One function per verb of the ``evohub`` command: each takes the parsed arguments, calls the
public API (:mod:`evohub.api`) or a stage, prints what the user asked for, returns an exit code.

Heavy modules are imported inside the verbs that need them, so ``evohub validate`` never loads
torch and a bad argument is refused before anything heavy loads.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from evohub.cli import EXIT_OK, EXIT_USAGE
from evohub.errors import SpecError, UsageError


def _device(name: str) -> str:
    if name == "auto" or name.startswith("cuda"):
        import torch

        if name == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: no CUDA device is available here; use --device cpu")
    return name


def _console():
    from rich.console import Console

    return Console()


def validate(args: argparse.Namespace) -> int:
    from evohub.hub.client import offline
    from evohub.spec import JobSpec, load, warnings_for
    from evohub.spec.load import check_remote

    failed = 0
    if args.strict and offline():
        print("evohub: warning: HF_HUB_OFFLINE is set: Hub references are not checked", file=sys.stderr)
    for path in args.files:
        try:
            doc = load(path)
        except SpecError as e:
            failed += 1
            for line in e.problems:
                print(line, file=sys.stderr)
            continue
        warnings = warnings_for(doc, path)
        if args.strict:
            errors = [w.replace(": warning: ", ": error (--strict): ", 1) for w in warnings]
            errors += [] if offline() else check_remote(doc, path)
            if errors:
                failed += 1
                print("\n".join(errors), file=sys.stderr)
                continue
        if not args.quiet:
            for w in warnings:
                print(w, file=sys.stderr)
        what = f"job spec {doc.name!r}" if isinstance(doc, JobSpec) else "recipe"
        print(f"ok: {path} ({what})")
    return EXIT_USAGE if failed else EXIT_OK


def plan(args: argparse.Namespace) -> int:
    import evohub
    from evohub.pipeline.plan import render, render_markdown

    if (args.max_hours or args.max_evals or args.measured) and not args.gpu:
        raise UsageError(
            "--max-hours, --max-evals and --measured need --gpu NAME (the device the hours are counted on)"
        )
    job = evohub.load_job(args.job)
    p = evohub.plan(job)
    gp = cost = None
    if args.gpu:
        from evohub.pipeline.cost import PROFILES, estimate_cost, measured_figures
        from evohub.pipeline.gpu import GPUS, gpu_plan

        if args.gpu not in GPUS and args.gpu not in PROFILES:
            raise UsageError(f"--gpu {args.gpu!r}: unknown GPU (known: {', '.join([*GPUS, 'cpu'])})")
        costed = [f for f, v in (("--max-hours", args.max_hours), ("--max-evals", args.max_evals),
                                 ("--measured", args.measured)) if v]  # fmt: skip
        if costed and args.gpu not in PROFILES:
            raise UsageError(f"{costed[0]}: no cost profile for {args.gpu} (profiles: {', '.join(PROFILES)})")
        gp = gpu_plan(job, p, args.gpu) if args.gpu in GPUS else None
        measured = measured_figures(args.measured) if args.measured else None
        cost = estimate_cost(job, p, args.gpu, args.max_evals, measured) if args.gpu in PROFILES else None
    if args.json:
        extra = ({"gpu": gp.to_dict()} if gp else {}) | ({"cost": cost.to_dict()} if cost else {})
        print(json.dumps(p.to_dict() | extra, indent=2))
    elif args.markdown:
        print(render_markdown(p), end="")
        if gp is not None:
            from evohub.pipeline.gpu import gpu_markdown

            print(gpu_markdown(gp), end="")
        if cost is not None:
            from evohub.pipeline.cost import cost_markdown

            print(cost_markdown(cost), end="")
    else:
        render(p, _console())
        if gp is not None:
            from evohub.pipeline.gpu import render_gpu

            render_gpu(gp, _console())
        if cost is not None:
            from evohub.pipeline.cost import render_cost

            render_cost(cost, _console())
    if gp is not None:
        from evohub.pipeline.gpu import refusal

        if why := refusal(job, gp):
            print(why, file=sys.stderr)
            return EXIT_USAGE
    if cost is not None and args.max_hours:
        from evohub.pipeline.cost import over_limit

        if why := over_limit(args.job, cost, args.max_hours):
            print(why, file=sys.stderr)
            return EXIT_USAGE
    return EXIT_OK


def jobs(args: argparse.Namespace) -> int:
    from evohub.spec import load_job

    if not Path(args.dir).is_dir():
        raise UsageError(f"{args.dir}: no such directory of job specs")
    rows = []
    for path in sorted(Path(args.dir).glob("*.yaml")):
        spec = load_job(path)
        if not args.nightly or spec.nightly:
            rows.append({"file": str(path), "name": spec.name, "nightly": spec.nightly, "stages": spec.stages()})
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(f"{r['file']}\t{r['name']}\t{'+'.join(r['stages'])}{chr(9) + 'nightly' if r['nightly'] else ''}")
    return EXIT_OK


def list_kinds(args: argparse.Namespace) -> int:
    from evohub.cli.kinds import KIND_TABLES, markdown, text

    names = [args.kind] if args.kind else list(KIND_TABLES)
    unknown = [n for n in names if n not in KIND_TABLES]
    if unknown:
        raise UsageError(f"no kind {unknown[0]!r} (kinds: {', '.join(KIND_TABLES)})")
    print((markdown if args.markdown else text)(names), end="")
    return EXIT_OK


def wiring(args: argparse.Namespace) -> int:
    import tempfile

    from evohub.cli.wiring import check_wiring

    for job in args.jobs:
        with tempfile.TemporaryDirectory(prefix="evohub-wiring-") as tmp:
            report = check_wiring(Path(job), Path(args.dir or tmp) / Path(job).stem, progress=not args.quiet)
        print(json.dumps(report))
    return EXIT_OK


def merge(args: argparse.Namespace) -> int:
    import evohub

    device = _device(args.device)
    start = time.perf_counter()
    out = evohub.merge(args.recipe, args.out, device=device, shard_bytes=args.shard_size, force=args.force,
                       progress=not args.quiet)  # fmt: skip
    if not args.quiet:
        print(f"merged {args.recipe} into {out} in {time.perf_counter() - start:.1f} s")
    return EXIT_OK


def export_mergekit(args: argparse.Namespace) -> int:
    from evohub.merging.arch import num_decoder_layers
    from evohub.merging.export import to_mergekit
    from evohub.spec import load_recipe, local_config

    recipe = load_recipe(args.recipe)
    layers = args.layers
    if layers is None and recipe.parameter_space is not None:
        cfg = local_config(recipe.base_model or recipe.parameter_space.models[0].source)
        layers = num_decoder_layers(cfg) if cfg else None
    text = to_mergekit(recipe, layers=layers)
    if args.output:
        Path(args.output).write_text(text)
    else:
        print(text, end="")
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    from rich.table import Table

    import evohub
    from evohub.score.evaluate import table_rows

    summary = evohub.run(args.job, args.run_dir, resume=args.resume, max_evals=args.max_evals,
                         device=_device(args.device), ray_actors=args.ray, progress=not args.quiet,
                         publish=not args.no_publish, state_repo=args.state_repo, evolve=not args.no_evolve)  # fmt: skip
    from evohub.pipeline.plan import human_count

    table = Table("stage", "evals", "gens", "failed", "best", "valid.", "items", "gen. tokens", "time",
                  title=f"run {summary.run_dir}")  # fmt: skip
    for st in summary.stages:
        val = f"{st.validation:.4g}" if st.validation is not None else "-"
        items, tokens = (
            (human_count(st.cost["items"]), human_count(st.cost["generated_tokens"])) if st.cost else ("-", "-")
        )
        table.add_row(st.stage, str(st.evaluations), str(st.generations), str(st.failed), f"{st.best_fitness:.4g}",
                      val, items, tokens, f"{st.seconds:.1f} s")  # fmt: skip
    console = _console()
    console.print(table)
    if summary.paused:
        st = summary.stages[-1]
        console.print(f"stage {summary.paused} paused at the --max-evals cap after {st.evaluations} evaluations; "
                      f"run again with --resume to continue (nothing final was written)")  # fmt: skip
        return EXIT_OK
    if summary.results:
        ev = Table("model", "suite", "metric", "value", title="held-out evaluation")
        for name, res in summary.results["models"].items():
            for row in table_rows(res):
                ev.add_row(name, *row)
        console.print(ev)
    console.print(f"recipe: {summary.run_dir / 'recipe.yaml'}\nmodel:  {summary.model_dir}\n"
                  f"fitness curve: {summary.run_dir / 'fitness.png'}")  # fmt: skip
    if summary.published:
        p = summary.published
        console.print(f"published: {p['repo']}@{p['revision']} commit {str(p['commit'])[:12]} tag {p['tag']}")
    return EXIT_OK


def _data_overrides(items: list[str] | None) -> dict[str, str]:
    data = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--data {item!r}: expected NAME=FILE (a suite such as mgsm-ja, or an lm-eval task)")
        data[name] = path
    return data


def evaluate(args: argparse.Namespace) -> int:
    if args.predictions:
        from evohub.score.evaluate import rescore_predictions

        print(json.dumps(rescore_predictions(args.task or "ja-math", args.predictions), indent=2))
        return EXIT_OK
    if not args.model or not args.suite:
        raise UsageError("give a MODEL directory and at least one --suite (or --task TASK --predictions FILE)")
    from rich.table import Table

    import evohub
    from evohub.score.evaluate import table_rows

    out = args.out or str(Path(args.model) / "eval")
    results = evohub.evaluate(args.model, args.suite, backend=args.backend, device=_device(args.device),
                              data=_data_overrides(args.data), limit=args.limit, max_new_tokens=args.max_new_tokens,
                              batch_size=args.batch_size, out_dir=out, prompt_version=args.prompt_version)  # fmt: skip
    table = Table("suite", "metric", "value", title=f"evaluation of {args.model}")
    for row in table_rows(results):
        table.add_row(*row)
    _console().print(table)
    print(f"results: {Path(out) / 'results.json'}")
    return EXIT_OK


def publish(args: argparse.Namespace) -> int:
    import evohub

    done, card = evohub.publish(args.run_dir, args.repo, revision=args.revision, private=args.private,
                                force=args.force, dry_run=args.dry_run)  # fmt: skip
    if args.dry_run:
        print(f"would publish {len(done.files)} files to {done.repo_id}@{done.revision}, tagged {done.tag}:")
        for f in done.files:
            print(f"  {f}")
        print("\n" + card)
    else:
        print(
            f"published {len(done.files)} files to {done.repo_id}@{done.revision} in commit {done.commit}, tagged {done.tag}"
        )
    return EXIT_OK


def card(args: argparse.Namespace) -> int:
    import evohub

    _, text = evohub.publish(args.run_dir, args.repo, dry_run=True)
    if args.output:
        Path(args.output).write_text(text)
    else:
        print(text)
    return EXIT_OK


def verify(args: argparse.Namespace) -> int:
    from evohub.pipeline.verify import rescore
    from evohub.pipeline.verify import verify as rebuild_and_compare

    device = _device(args.device)
    report = rebuild_and_compare(args.target, revision=args.revision, device=device, progress=not args.quiet,
                                 sources_dir=Path(args.sources_dir) if args.sources_dir else None)  # fmt: skip
    for f in report.files:
        print(f"{'equal    ' if f.equal else 'DIFFERENT'} {f.name}" + (f"  ({f.detail})" if f.detail else ""))
    if args.eval:
        rescore(report, args.eval, _data_overrides(args.data), args.tolerance, device)
        for line in report.scores:
            print(line)
    print(f"{args.target}: " + ("verified: the rebuild is identical" if report.ok else "NOT verified"))
    return EXIT_OK if report.ok else 1


def demo(args: argparse.Namespace) -> int:
    from evohub.local.demo import run_demo

    return run_demo(Path(args.dir), seed=args.seed, train_world=args.train_world, max_evals=args.max_evals,
                    progress=not args.quiet)  # fmt: skip


def example(args: argparse.Namespace) -> int:
    if args.name == "sdxl-tiny":
        from evohub.local.sdxl_example import run_example as run_sdxl

        if args.layers or args.steps:
            raise UsageError("--layers and --steps apply to the real-weights example")
        return run_sdxl(Path(args.dir or ".cache/evohub-sdxl-tiny"), seed=args.seed, max_evals=args.max_evals,
                        progress=not args.quiet)  # fmt: skip
    from evohub.local.real_weights import run_example

    return run_example(Path(args.dir or ".cache/evohub-real-weights"), seed=args.seed, layers=args.layers,
                       steps=args.steps, max_evals=args.max_evals, progress=not args.quiet)  # fmt: skip


def rehearse(args: argparse.Namespace) -> int:
    from evohub.local.rehearse import main_rehearse
    from evohub.spec import load_job

    if args.record and not args.live:
        raise UsageError("--record writes what --live reads: add --live")
    work = Path(args.dir) if args.dir else Path(".cache/evohub-rehearse") / load_job(args.job).name
    vllm = None if args.backend is None else args.backend == "vllm"
    return main_rehearse(Path(args.job), work, args.live, Path(args.record) if args.record else None, vllm)
