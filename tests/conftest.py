from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "support"))  # tiny, hubserver, ref_merge
sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """A base and two fine-tunes of a 2-layer Mistral, saved as safetensors."""
    from tiny import make_mistral

    root = tmp_path_factory.mktemp("world")
    base = make_mistral(root / "base", seed=0)
    make_mistral(root / "ft1", seed=1, base=base)
    make_mistral(root / "ft2", seed=2, base=base)
    return root


@pytest.fixture
def run_cli(capsys):
    """Run ``evohub ARGS`` in-process; returns (exit code, stdout, stderr)."""
    from evohub.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse --help / usage errors
            code = e.code if isinstance(e.code, int) else 2
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def pytest_collection_modifyitems(config, items):
    """Opt-in tiers: tests marked ``real_weights`` (the whole real-weights example, about 20 min)
    run only when ``-m`` names them."""
    if "real_weights" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="the whole real-weights example (about 20 min): opt in with -m real_weights")
    for item in items:
        if "real_weights" in item.keywords:
            item.add_marker(skip)
