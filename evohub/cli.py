"""The ``evohub`` command. Thin: parses arguments, imports the heavy modules only when needed.

Every user-fixable problem prints one line per problem and exits 2; ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

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
    else:
        render(plan)
    return EXIT_OK


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
    p.add_argument(
        "--strict", action="store_true", help="treat warnings (unpinned revisions) as errors"
    )

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
