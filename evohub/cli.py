"""The ``evohub`` command. Thin: parses arguments, imports the heavy modules only when needed.

Every user-fixable problem prints one line per problem and exits 2; ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from evohub import __version__

EXIT_OK, EXIT_USAGE = 0, 2

DESCRIPTION = """\
evohub evolves model-merging recipes (Evolutionary Model Merge, arXiv 2403.13187) and publishes
the winners to the Hugging Face Hub. A job spec (jobs/*.yaml) says what may be merged and how to
judge it; a recipe (recipe.yaml) is one concrete merge."""


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line with exit code 2 (argparse's own code)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# ----------------------------------------------------------------------------------------------
# Commands. Each takes the parsed arguments and returns an exit code.


def cmd_validate(args: argparse.Namespace) -> int:
    from evohub.errors import SpecError
    from evohub.spec import JobSpec, load, warnings_for

    failed = 0
    for path in args.files:
        try:
            doc = load(path)
        except SpecError as e:
            failed += 1
            for line in e.problems:
                print(line, file=sys.stderr)
            continue
        warnings = warnings_for(doc, path)
        if args.strict and warnings:
            failed += 1
            for w in warnings:
                print(w.replace(": warning: ", ": error (--strict): ", 1), file=sys.stderr)
            continue
        if not args.quiet:
            for w in warnings:
                print(w, file=sys.stderr)
        what = f"job spec {doc.name!r}" if isinstance(doc, JobSpec) else "recipe"
        print(f"ok: {path} ({what})")
    return EXIT_USAGE if failed else EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    import json

    from evohub.plan import make_plan, render
    from evohub.spec import load_job

    plan = make_plan(load_job(args.job))
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2))
    elif args.markdown:
        from evohub.plan import render_markdown

        print(render_markdown(plan), end="")
    else:
        render(plan)
    return EXIT_OK


def cmd_jobs(args: argparse.Namespace) -> int:
    import json

    from evohub.spec import load_job

    rows = []
    for path in sorted(Path(args.dir).glob("*.yaml")):
        spec = load_job(path)
        if args.nightly and not spec.nightly:
            continue
        stages = [s for s, part in (("ps", spec.parameter_space), ("dfs", spec.data_flow_space)) if part]
        rows.append({"file": str(path), "name": spec.name, "nightly": spec.nightly, "stages": stages})
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(f"{r['file']}\t{r['name']}\t{'+'.join(r['stages'])}{chr(9) + 'nightly' if r['nightly'] else ''}")
    return EXIT_OK


def cmd_wiring(args: argparse.Namespace) -> int:
    import json
    import tempfile

    from evohub.demo import check_wiring

    for job in args.jobs:
        with tempfile.TemporaryDirectory(prefix="evohub-wiring-") as tmp:
            report = check_wiring(Path(job), Path(args.dir or tmp) / Path(job).stem, progress=not args.quiet)
        print(json.dumps(report))
    return EXIT_OK


def cmd_merge(args: argparse.Namespace) -> int:
    import time

    from evohub.hub import snapshot
    from evohub.merge.build import input_refs, merge_to_disk
    from evohub.merge.io import parse_size
    from evohub.spec import load_recipe

    recipe = load_recipe(args.recipe)
    shard = parse_size(args.shard_size)
    device = _device(args.device)
    dirs = [snapshot(ref) for ref in input_refs(recipe)]
    start = time.perf_counter()
    out = merge_to_disk(
        recipe,
        dirs,
        args.out,
        device=device,
        shard_bytes=shard,
        force=args.force,
        progress=not args.quiet,
    )
    if not args.quiet:
        print(f"merged {args.recipe} into {out} in {time.perf_counter() - start:.1f} s")
    return EXIT_OK


def cmd_export_mergekit(args: argparse.Namespace) -> int:
    from evohub.merge.arch import num_decoder_layers
    from evohub.merge.export import to_mergekit
    from evohub.spec import load_recipe, read_local_config

    recipe = load_recipe(args.recipe)
    layers = args.layers
    if layers is None and recipe.parameter_space is not None:
        ref = recipe.base_model or recipe.parameter_space.models[0].source
        cfg = read_local_config(ref)
        layers = num_decoder_layers(cfg) if cfg else None
    text = to_mergekit(recipe, layers=layers)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        print(text, end="")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from evohub.job import run_job

    summary = run_job(
        args.job,
        args.run_dir,
        resume=args.resume,
        max_evals=args.max_evals,
        device=_device(args.device),
        ray_actors=args.ray,
        progress=not args.quiet,
        publish=not args.no_publish,
        state_repo=args.state_repo,
    )
    table = Table(
        "stage",
        "evaluations",
        "generations",
        "failed",
        "best fitness",
        "validation",
        "time",
        title=f"run {summary.run_dir}",
    )
    for st in summary.stages:
        val = f"{st.validation:.4g}" if st.validation is not None else "-"
        table.add_row(
            st.stage,
            str(st.evaluations),
            str(st.generations),
            str(st.failed),
            f"{st.best_fitness:.4g}",
            val,
            f"{st.seconds:.1f} s",
        )
    console = Console()
    console.print(table)
    if summary.results:
        from evohub.evaluate import table_rows

        ev = Table("model", "suite", "metric", "value", title="held-out evaluation")
        for name, res in summary.results["models"].items():
            for row in table_rows(res):
                ev.add_row(name, *row)
        console.print(ev)
    console.print(
        f"recipe: {summary.run_dir / 'recipe.yaml'}\nmodel:  {summary.model_dir}\nfitness curve: {summary.run_dir / 'fitness.png'}"
    )
    if summary.published:
        p = summary.published
        console.print(f"published: {p['repo']}@{p['revision']} commit {str(p['commit'])[:12]} tag {p['tag']}")
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from evohub.errors import EvohubError

    if args.predictions:
        from evohub.evaluate import rescore_predictions

        print(json.dumps(rescore_predictions(args.task or "ja-math", args.predictions), indent=2))
        return EXIT_OK
    if not args.model or not args.suite:
        raise EvohubError("give a MODEL directory and at least one --suite (or --task TASK --predictions FILE)")
    from rich.console import Console
    from rich.table import Table

    from evohub.evaluate import evaluate, table_rows

    data = {}
    for item in args.data or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise EvohubError(f"--data {item!r}: expected NAME=FILE (a suite such as mgsm-ja, or an lm-eval task)")
        data[name] = path
    out = args.out or str(Path(args.model) / "eval")
    results = evaluate(args.model, args.suite, backend=args.backend, device=_device(args.device), data=data,
                       limit=args.limit, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, out_dir=out)  # fmt: skip
    table = Table("suite", "metric", "value", title=f"evaluation of {args.model}")
    for row in table_rows(results):
        table.add_row(*row)
    Console().print(table)
    print(f"results: {Path(out) / 'results.json'}")
    return EXIT_OK


def cmd_publish(args: argparse.Namespace) -> int:
    from evohub.hub import publish_run

    done, card = publish_run(
        args.run_dir, args.repo, revision=args.revision, private=args.private, force=args.force, dry_run=args.dry_run
    )
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


def cmd_card(args: argparse.Namespace) -> int:
    from evohub.hub import publish_run

    _, card = publish_run(args.run_dir, args.repo, dry_run=True)
    if args.output:
        Path(args.output).write_text(card)
    else:
        print(card)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from evohub.demo import run

    return run(
        Path(args.dir), seed=args.seed, train_world=args.train_world, max_evals=args.max_evals, progress=not args.quiet
    )


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _device(name: str) -> str:
    if name == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            from evohub.errors import EvohubError

            raise EvohubError(f"--device {name}: no CUDA device is available here; use --device cpu")
    return name


# ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="evohub",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'evohub COMMAND --help' for a command's options. Docs: README.md.",
    )
    parser.add_argument("--version", action="version", version=f"evohub {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def add(
        name: str, func: Callable[[argparse.Namespace], int], help: str, description: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help,
            description=description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help="show full tracebacks on errors",
        )
        p.set_defaults(func=func)
        return p

    p = add(
        "validate",
        cmd_validate,
        "check job specs and recipes",
        "Check job specs (evohub_job: 1) and recipes (evohub_recipe: 1) against their schemas.\n"
        "Each problem is printed as 'file:line: field: what is wrong'; exit code 2 if any file fails.\n"
        "Hub revisions that are not 40-hex commits are reported as 'unpinned' warnings.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="YAML files to check")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print warnings")
    p.add_argument("--strict", action="store_true", help="treat warnings (unpinned revisions) as errors")

    p = add(
        "plan",
        cmd_plan,
        "show the size and cost of a job before running it",
        "Print the search-space dimensions and evaluations of each stage, the parameter count and\n"
        "size of each source (from its config.json: local directory or Hub), and the accelerator\n"
        "memory, host memory and disk the run needs. Hub configs are fetched into the HF cache\n"
        "(set HF_HUB_OFFLINE=1 to use only the cache).",
    )
    p.add_argument("job", metavar="JOB", help="job spec (jobs/*.yaml)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--markdown", action="store_true", help="print the plan as Markdown (CI summaries, PR comments)")

    p = add(
        "jobs",
        cmd_jobs,
        "list the job specs in a directory",
        "List job specs (file, name, stages, nightly flag); --nightly keeps the ones the nightly\n"
        "workflow runs, --json prints them for a CI matrix.",
    )
    p.add_argument("dir", nargs="?", default="jobs", metavar="DIR", help="directory of job specs (default jobs)")
    p.add_argument("--nightly", action="store_true", help="only specs with nightly: true")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add(
        "wiring",
        cmd_wiring,
        "run a job spec's structure end to end on a tiny local world",
        "Check a job spec's wiring without its models: the sources become tiny local fine-tunes,\n"
        "the search spaces and stages stay (layer groups and repeats capped), each stage runs one\n"
        "small generation scored by language-model loss, and the winner is merged. Offline, CPU,\n"
        "seconds. Pull requests that add a job run this.",
    )
    p.add_argument("jobs", nargs="+", metavar="JOB", help="job specs")
    p.add_argument("--dir", metavar="DIR", help="keep the worlds and runs here (default: a temporary directory)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    p = add(
        "merge",
        cmd_merge,
        "build a merged model from a recipe",
        "Rebuild the model a recipe (evohub_recipe: 1) describes, bit-for-bit: tensors are read\n"
        "lazily from each source's safetensors, merged in float32 and written as sharded\n"
        "safetensors in the recipe's dtype, with config.json, generation_config.json, the\n"
        "tokenizer files of tokenizer_source and the recipe itself. Hub sources are downloaded\n"
        "(safetensors and configs only) into the HF cache. The output appears only when complete.",
    )
    p.add_argument("recipe", metavar="RECIPE", help="recipe.yaml")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (must be empty or absent)")
    p.add_argument("--device", default="cpu", help="where to compute: cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--shard-size", default="2GB", metavar="SIZE", help="maximum shard size (default 2GB)")
    p.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")

    p = add(
        "export-mergekit",
        cmd_export_mergekit,
        "print a parameter-space recipe as a mergekit config",
        "Translate a parameter-space recipe into a mergekit YAML config (merge_method, models,\n"
        "weights and densities per layer group as mergekit filters, normalize, dtypes), so that\n"
        "mergekit users can reproduce it. DARE masks cannot carry over: mergekit draws its own.",
    )
    p.add_argument("recipe", metavar="RECIPE", help="recipe.yaml")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    p.add_argument(
        "--layers",
        type=int,
        help="decoder layers of the model (read from a local config if omitted)",
    )

    p = add(
        "run",
        cmd_run,
        "run a job: pull, evolve, merge the best",
        "Run a job spec in a run directory (default runs/<name>): pull the sources (pinned in\n"
        "job.lock.yaml), evolve each search stage with CMA-ES (every candidate appended to\n"
        "candidates.jsonl, a checkpoint after every generation), choose the best (on the\n"
        "validation split when the spec has one), write recipe.yaml and fitness.png, and merge the\n"
        "winner into model/. --resume continues a stopped run exactly where it was; nothing\n"
        "already evaluated is evaluated again.",
    )
    p.add_argument("job", metavar="JOB", help="job spec (jobs/*.yaml)")
    p.add_argument("--run-dir", metavar="DIR", help="run directory (default runs/<job name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    p.add_argument(
        "--max-evals",
        type=_positive,
        metavar="N",
        help="cap each stage's evaluations (below the spec's budget)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto)")
    p.add_argument(
        "--ray",
        type=int,
        metavar="N",
        help="evaluate on N Ray actors (RAY_ADDRESS joins a cluster; one GPU each on cuda)",
    )
    p.add_argument("--no-publish", action="store_true", help="stop before publishing (the spec's publish section)")
    p.add_argument(
        "--state-repo", metavar="ID", help="Hub dataset repo: push the run state every generation; --resume fetches it"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    p = add(
        "publish",
        cmd_publish,
        "publish a finished run to the Hub in one commit",
        "Publish a finished run: ONE commit to --repo holding the merged model (sharded\n"
        "safetensors, config, tokenizer), recipe.yaml, results.json, fitness.png, the compressed\n"
        "candidates log, a model card (cards/*.md.j2) and .eval_results/, tagged with the run id.\n"
        "Refuses to overwrite a model already on the target branch unless --force; --revision\n"
        "publishes to a branch. The token comes from HF_TOKEN or the HF cache (hf auth login).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory")
    p.add_argument("--repo", required=True, metavar="ID", help="model repo id (owner/name)")
    p.add_argument("--revision", metavar="BRANCH", help="publish to this branch (created if needed)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--force", action="store_true", help="publish over a model already on the branch")
    p.add_argument("--dry-run", action="store_true", help="print the file list and the card; upload nothing")

    p = add(
        "card",
        cmd_card,
        "render a finished run's model card",
        "Render the model card a publish would upload (cards/*.md.j2 through ModelCard), to stdout\n"
        "or -o FILE. Licenses are read from the sources' cards (the Hub, or a local README.md).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory")
    p.add_argument("--repo", required=True, metavar="ID", help="the repo id the card names")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")

    p = add(
        "evaluate",
        cmd_evaluate,
        "evaluate a model on held-out suites, or re-score saved outputs",
        "Evaluate a model directory on suites: mgsm-ja (the paper's MGSM-JA protocol: acc, and acc_ja\n"
        "which also requires a Japanese answer), jp-lmeh (lm-eval japanese_leaderboard + JCoLA),\n"
        "jcola, lmeval:<task>; for VLMs ja-vg-vqa-500 and ja-vlm-bench-itw (the paper's VQA protocol,\n"
        "ROUGE-L over MeCab tokens, non-Japanese answers scored as empty). Writes results.json\n"
        "(metrics, config, versions) and per-sample JSONL to --out (default MODEL/eval) and prints\n"
        "a table. --data NAME=FILE reads a suite's or an lm-eval task's examples from a local\n"
        "JSON/JSONL file instead of the Hub.\n"
        "With --task ja-math|ja-vqa --predictions FILE.jsonl (rows: output and answer_number, or\n"
        "output and answer), re-score saved outputs and print the metrics as JSON.",
    )
    p.add_argument("model", nargs="?", metavar="MODEL", help="model directory")
    p.add_argument(
        "--suite",
        action="append",
        help="mgsm-ja | ja-math | jp-lmeh | jcola | lmeval:<task> | ja-vg-vqa-500 | ja-vlm-bench-itw (repeatable)",
    )
    p.add_argument("--backend", choices=["hf", "vllm"], default="hf", help="generation backend (default hf)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto)")
    p.add_argument(
        "--data",
        action="append",
        metavar="NAME=FILE",
        help="local examples for a suite or lm-eval task",
    )
    p.add_argument("--limit", type=_positive, metavar="N", help="only the first N examples of each suite/task")
    p.add_argument(
        "--max-new-tokens",
        type=_positive,
        metavar="N",
        help="generation budget (default: each suite's protocol: MGSM-JA 1024, VQA 512)",
    )
    p.add_argument("--batch-size", type=_positive, default=8, metavar="N", help="batch size (default 8)")
    p.add_argument("--out", metavar="DIR", help="where results.json and samples go (default MODEL/eval)")
    p.add_argument(
        "--task", choices=["ja-math", "ja-vqa"], help="with --predictions: the task to score (default ja-math)"
    )
    p.add_argument(
        "--predictions",
        metavar="FILE",
        help="re-score saved outputs (JSONL: output, answer_number | answer)",
    )

    p = add(
        "demo",
        cmd_demo,
        "run the embedded default job (jobs/demo.yaml) on the local world",
        "Run jobs/demo.yaml on the local world in jobs/demo-world: a tiny base and two fine-tunes\n"
        "(math, Japanese) of it. Evolution merges them into a model that does Japanese arithmetic,\n"
        "which no source does; the run is evaluated on held-out problems against its sources and\n"
        "the untuned merge, and published to a local Hub. Offline, CPU, about a minute.",
    )
    p.add_argument(
        "--dir", default=".cache/evohub-demo", help="where the run and the local Hub go (default .cache/evohub-demo)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of a retrained world (with --train-world)")
    p.add_argument(
        "--train-world",
        action="store_true",
        help="retrain the world from its seed (about 3.5 min) instead of jobs/demo-world",
    )
    p.add_argument(
        "--max-evals", type=_positive, metavar="N", help="cap each stage's evaluations (a quicker, weaker run)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    debug = args.debug or os.environ.get("EVOHUB_DEBUG") == "1"
    from evohub.errors import EvohubError

    try:
        return args.func(args)
    except EvohubError as e:
        if debug:
            raise
        for line in str(e).splitlines() or [type(e).__name__]:
            print(f"evohub: error: {line}" if not _has_location(line) else line, file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        if debug:
            raise
        print("evohub: interrupted", file=sys.stderr)
        return 130


def _has_location(line: str) -> bool:
    """True for 'file:line: ...' lines, which are printed as they are."""
    head = line.split(": ", 1)[0]
    return ":" in head and head.rsplit(":", 1)[1].isdigit()


if __name__ == "__main__":
    sys.exit(main())
