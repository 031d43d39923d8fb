"""The errors a user can meet, one family (docs/design.md#errors).

Every class here is an :class:`EvohubError`: something the user can act on, whose message is one
line per problem. The CLI prints ``evohub: error: <message>`` (or the ``file:line: ...`` lines as
they are) and exits with code 2; ``--debug`` shows the traceback. Bugs stay ordinary exceptions.

Each stage of the flow raises its own kind, so callers can catch what they can handle:

- :class:`SpecError`: a job spec or recipe (YAML, schema, cross-field rules, referenced files);
- :class:`MergeError`: models that cannot be merged (missing tensors, shapes, architectures);
- :class:`ScoreError`: a dataset, task or backend that cannot score;
- :class:`HubError`: a Hub request (missing repo, gated, offline, disk);
- :class:`RunError`: a run directory, lock or stage that cannot go on;
- :class:`UsageError`: a command-line argument;
- :class:`UnknownName`: a name no registry holds (a merge method, task, suite, ...).
"""

from __future__ import annotations


class EvohubError(Exception):
    """An error the user can act on; its message is one line."""

    exit_code = 2


class SpecError(EvohubError):
    """One or more problems in a YAML document, each as ``file:line: field.path: message``."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class MergeError(EvohubError):
    """Models that cannot be merged as the recipe says."""


class ScoreError(EvohubError):
    """Examples, a task or a backend that cannot score a model."""


class HubError(EvohubError):
    """A Hub request failed in a way the user can fix (missing repo, gated, offline, ...)."""


class RunError(EvohubError):
    """A run directory, its lock or one of its stages cannot go on."""


class UsageError(EvohubError):
    """A command-line argument that cannot be used."""


class UnknownName(EvohubError, KeyError):
    """A name that no registry of its kind holds; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
