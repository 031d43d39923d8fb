"""Merging beside a busy process: evohub (torch's default threads, and threads fitted to the free
CPUs) and mergekit-yaml, each idle and with one CPU-bound process running, in one run.

    .venv/bin/python bench/load_bench.py --runs 3                 # ties over the bench's 3 x 58M models

"Default threads" is evohub as it was (torch's pool sized from all cores):
``EVOHUB_THREADS=<cores>`` in the child's environment. "Fitted" is the
default now (evohub.threads). The busy process is ``python -c "while True: pass"``. Medians of
``--runs`` whole processes per cell, alternating tools; the slowdown is busy / idle.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from merge_bench import run_process, write_configs  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mergekit-venv", type=Path, default=HERE / ".venv-mergekit")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--method", default="ties")
    p.add_argument("--out", type=Path, default=HERE / "out")
    a = p.parse_args()
    root = a.out / "models-8L"
    if not (root / "ft2" / "model.safetensors").exists():
        subprocess.run([sys.executable, str(HERE / "make_models.py"), str(root), "--layers", "8"], check=True)
    recipe, mkcfg = write_configs(root, a.method)
    evohub = str(Path(sys.executable).parent / "evohub")
    cores = str(os.cpu_count())
    tools = {
        "evohub, default threads": ([evohub, "merge", str(recipe), "--out", str(root / "ev"), "--force", "-q"],
                                    {"EVOHUB_THREADS": cores}),
        "evohub, fitted threads": ([evohub, "merge", str(recipe), "--out", str(root / "ev"), "--force", "-q"], {}),
    }  # fmt: skip
    mk = a.mergekit_venv / "bin" / "mergekit-yaml"
    if mk.exists():
        tools["mergekit-yaml"] = ([str(mk), str(mkcfg), str(root / "mk")], {})
    results: dict = {"runs": a.runs, "cpus": os.cpu_count(), "method": a.method, "cells": {}}
    for load in ("idle", "busy"):
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load == "busy" else None
        try:
            times: dict[str, list[float]] = {t: [] for t in tools}
            for _ in range(a.runs):
                for name, (cmd, env) in tools.items():
                    if name == "mergekit-yaml":
                        subprocess.run(["rm", "-rf", str(root / "mk")], check=True)
                    wall, _ = run_process(cmd, env=os.environ | env)
                    times[name].append(wall)
            for name, ts in times.items():
                results["cells"].setdefault(name, {})[load] = statistics.median(ts)
        finally:
            if hog is not None:
                hog.kill()
    for cell in results["cells"].values():
        cell["slowdown"] = cell["busy"] / cell["idle"]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
