"""User-facing errors: one line each, exit code 2 from the CLI.

Raise :class:`EvohubError` (or a subclass) for anything the user can fix: a bad spec, a missing
file, a model that does not fit a recipe. The CLI prints ``evohub: error: <message>`` and exits
with code 2; ``--debug`` shows the traceback. Bugs stay ordinary exceptions.
"""

from __future__ import annotations


class EvohubError(Exception):
    """An error the user can act on; its message is one line."""

    exit_code = 2


class SpecError(EvohubError):
    """One or more problems in a YAML document, each as ``file:line: field.path: message``."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))
