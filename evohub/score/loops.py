"""Answer loops: an answer caught repeating itself is ended, and its loop written out to the budget
without decoding it (docs/design.md#answer-loops).

Greedy decoding that has repeated one stretch of tokens verbatim, again and again, keeps repeating
it: a weak merge asked the paper's math prompt writes ``19個です。19個です。…`` or the prompt's own
``### 応答:`` header until its 1024 tokens run out, and a scoring call waits for it. With a
``loop_span``, an answer whose last ``loop_span`` tokens are one period repeated (three times at
least) is stopped there, and :func:`continue_loop` writes the period on to the budget: the text is
the one full decoding would give as long as the loop holds, so the last number and the language
the task reads are the same, for a fraction of the decode steps.

    >>> loop_period([5, 1, 2, 3, 1, 2, 3, 1, 2, 3], span=9)
    3
    >>> continue_loop([5, 1, 2, 3, 1, 2, 3], 3, budget=10)
    [5, 1, 2, 3, 1, 2, 3, 1, 2, 3]
"""

from __future__ import annotations

from collections.abc import Sequence


def loop_period(tokens: Sequence[int], span: int) -> int | None:
    """The smallest period ``p`` (at most ``span // 3``) with which the last ``span`` of
    ``tokens`` repeat verbatim (``t[i] == t[i - p]`` across them), or None."""
    if len(tokens) < span or span < 3:
        return None
    tail = list(tokens[-span:])
    for p in range(1, span // 3 + 1):
        if tail[p:] == tail[:-p]:
            return p
    return None


def continue_loop(tokens: Sequence[int], period: int, budget: int) -> list[int]:
    """``tokens`` with their last ``period`` tokens repeated on until ``budget`` tokens."""
    out = list(tokens)
    while len(out) < budget:
        out.append(out[-period])
    return out


def first_loop(tokens: Sequence[int], span: int) -> tuple[int, int] | None:
    """(length, period) of the shortest prefix of ``tokens`` that ends in a loop, or None: where
    an answer decoded with ``span`` would have been stopped."""
    for n in range(span, len(tokens) + 1):
        if (p := loop_period(tokens[:n], span)) is not None:
            return n, p
    return None
