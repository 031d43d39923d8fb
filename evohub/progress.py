"""Progress for long work: a tqdm bar on a terminal, plain lines in logs (docs/design.md#errors).

    >>> with bar(400, "evolve ps", "cand", initial=120) as b:     # doctest: +SKIP
    ...     b.update(9)

Where stderr is not a terminal (CI logs, ``nohup``, a pipe), redrawn bars fill the log with
carriage returns and cursor codes; there the same calls write one line to the ``evohub`` logger
at most every tenth of the work or every 30 s, and once at the end.
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("evohub")


class _Lines:
    """tqdm's update/set_postfix/close, written as occasional plain lines."""

    def __init__(self, total: int, desc: str, unit: str, initial: int):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.postfix = ""
        self._shown, self._at = initial, time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        step = max(1, self.total // 10)
        if self.n - self._shown >= step or time.monotonic() - self._at >= 30:
            self._line()

    def set_postfix(self, **kw) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in kw.items())

    def _line(self) -> None:
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        log.info("%s: %d/%d %s%s%s", self.desc, self.n, self.total, self.unit, pct,
                 f"; {self.postfix}" if self.postfix else "")  # fmt: skip
        self._shown, self._at = self.n, time.monotonic()

    def close(self) -> None:
        if self.n != self._shown:
            self._line()

    def __enter__(self) -> _Lines:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bar(total: int, desc: str, unit: str, *, initial: int = 0, disable: bool = False):
    """A progress bar (tqdm on a terminal, plain log lines elsewhere); ``disable`` shows nothing."""
    from tqdm.auto import tqdm

    if disable or sys.stderr.isatty():
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=disable)
    return _Lines(total, desc, unit, initial)
