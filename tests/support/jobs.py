"""The shipped job specs that run as they are (the Makefile's JOBS): every jobs/*.yaml but those
whose local models an example builds (not in git: `make real-weights`)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: jobs reading a world that an example builds; tests/test_real_weights.py covers them
BUILT_BY_EXAMPLES = frozenset({"real-weights.yaml"})


def runnable_jobs() -> list[Path]:
    return sorted(p for p in (REPO / "jobs").glob("*.yaml") if p.name not in BUILT_BY_EXAMPLES)
