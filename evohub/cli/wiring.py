"""``evohub wiring``: a job spec's structure, run end to end on the tiny random world.

The recipe-PR workflow runs it on every job a pull request adds or changes: the spec's sources
become tiny fine-tunes of a tiny base (the same count and names); its search spaces, methods,
layer groups and stages are kept (layer groups and repeats capped to the tiny models), each
stage runs one small generation, fitness is language-model loss on random text, evaluation and
publishing are left out. What this checks is the wiring: that the spec's genomes decode, its
merges and folds build, and its stages chain.
"""

from __future__ import annotations

from pathlib import Path

import evohub
from evohub.local.tiny import build_random_world, random_texts
from evohub.spec import load_job
from evohub.spec.yamlio import dump_yaml


def wired_spec(spec_path: Path, root: Path) -> Path:
    """The spec rewritten onto the tiny world in ``root`` (built there), with a tiny budget."""
    spec = load_job(spec_path)
    root.mkdir(parents=True, exist_ok=True)
    dirs = build_random_world(root, spec.seed, fine_tunes=len(spec.sources))
    (root / "data.jsonl").write_text(random_texts(spec.seed, 16))
    data = spec.model_dump(mode="json", exclude_none=True)
    names = sorted(d for d in dirs if d != "base")
    data["base_model"] = {"path": str(dirs["base"])}
    data["sources"] = [{"name": s.key, "path": str(dirs[n])} for s, n in zip(spec.sources, names, strict=True)]
    data["dtype"] = "float32"
    for key in ("parameter_space", "data_flow_space"):
        if part := data.get(key):
            opt = part["optimizer"]
            pop = min(opt.get("popsize") or 4, 4)
            part["optimizer"] = {"x0": opt["x0"] if isinstance(opt.get("x0"), float) else 0.5, "sigma0": opt.get("sigma0", 1 / 6), "popsize": pop,
                                 "max_evals": pop}  # fmt: skip
    if data.get("parameter_space"):
        data["parameter_space"]["layer_groups"] = min(data["parameter_space"].get("layer_groups", 1), 4)
    if data.get("data_flow_space"):
        data["data_flow_space"]["repeats"] = min(data["data_flow_space"].get("repeats", 3), 2)
    data["fitness"] = {"task": "lm-loss", "data": {"path": str(root / "data.jsonl")}, "backend": "hf"}
    data.pop("evaluation", None)
    data.pop("publish", None)
    wired = root / "wiring.yaml"
    wired.write_text(dump_yaml(data))
    return wired


def check_wiring(spec_path: Path, root: Path, progress: bool = False) -> dict:
    """Run a job spec's structure end to end on the tiny world, with a tiny budget."""
    summary = evohub.run(wired_spec(spec_path, root), root / "run", device="cpu", progress=progress, publish=False)
    return {
        "spec": str(spec_path),
        "stages": [{"stage": st.stage, "evaluations": st.evaluations, "failed": st.failed} for st in summary.stages],
        "recipe": str(summary.run_dir / "recipe.yaml"),
        "model": str(summary.model_dir),
    }
