"""evohub merge vs mergekit-yaml, side by side in one run, plus the read floor.

    python bench/merge_bench.py --mergekit-venv bench/.venv-mergekit --runs 5

Builds the benchmark models (bench/make_models.py) if they are missing, then for linear, ties
and dare_ties with equal options (float32 arithmetic, bfloat16 output, normalize off):

- whole processes, alternating evohub / mergekit, ``--runs`` each: wall time and peak RSS
  (ru_maxrss of the child), medians;
- in-process: evohub's merge_to_disk (as ``evohub merge`` runs it, and with the fused kernels
  forced: EVOHUB_FUSED=1), mergekit's run_merge (in its own venv), and the floor: reading every
  input byte once; medians;
- in memory: one dare_ties candidate applied into a resident model (what evolution does per
  candidate), against mergekit's in-process merge of the same recipe;
- equality of the outputs for linear, task_arithmetic and ties (within one bfloat16 ulp; for
  ties, entries tied at the trimming threshold are chosen arbitrarily by mergekit's sort and are
  reported separately);
- with ``--scale``: the whole-process timings again at twice the layers.

Results go to bench/out/merge_results.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WEIGHTS = {"ft1": (0.6, 0.5), "ft2": (0.4, 0.7)}  # (weight, density)


def write_configs(root: Path, method: str) -> tuple[Path, Path]:
    """An evohub recipe and the equivalent mergekit config for ``method`` over root's models."""
    density = method in ("ties", "dare_ties")
    base = method != "linear"
    models = []
    mk_models = []
    for name, (w, d) in WEIGHTS.items():
        m = {"source": {"path": str(root / name)}, "weight": w}
        p = {"weight": w}
        if density:
            m["density"] = d
            p["density"] = d
        models.append(m)
        mk_models.append({"model": str(root / name), "parameters": p})
    recipe = {"evohub_recipe": 1, "dtype": "bfloat16", "seed": 0, "tokenizer_source": "base" if base else 0,
              "parameter_space": {"method": method, "normalize": False, "models": models}}  # fmt: skip
    mk = {"merge_method": method, "models": mk_models, "parameters": {"normalize": False},
          "dtype": "float32", "out_dtype": "bfloat16"}  # fmt: skip
    if base:
        recipe["base_model"] = {"path": str(root / "base")}
        mk["base_model"] = str(root / "base")
    r, c = root / f"recipe_{method}.yaml", root / f"mergekit_{method}.yaml"
    r.write_text(json.dumps(recipe))  # JSON is YAML
    c.write_text(json.dumps(mk))
    return r, c


def run_process(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of a child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def read_floor(root: Path, runs: int) -> float:
    files = [p for d in ("base", "ft1", "ft2") for p in (root / d).glob("*.safetensors")]
    buf = bytearray(max(p.stat().st_size for p in files))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        for p in files:
            with open(p, "rb", buffering=0) as f:
                f.readinto(buf)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


EVOHUB_INPROC = """
import sys, time, shutil, torch
from pathlib import Path
from evohub.spec import load_recipe
from evohub.merging.build import merge_to_disk
r = load_recipe(sys.argv[1]); out = Path(sys.argv[2]); times = []
for i in range(int(sys.argv[3])):
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter(); merge_to_disk(r, [Path(x.path) for x in r.inputs()], out); times.append(time.perf_counter() - t)
print(sorted(times)[len(times) // 2])
"""

MERGEKIT_INPROC = """
import sys, time, shutil, yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.options import MergeOptions
cfg = MergeConfiguration.model_validate(yaml.safe_load(open(sys.argv[1])))
times = []
for i in range(int(sys.argv[3])):
    shutil.rmtree(sys.argv[2], ignore_errors=True)
    t = time.perf_counter(); run_merge(cfg, sys.argv[2], options=MergeOptions(copy_tokenizer=False, quiet=True)); times.append(time.perf_counter() - t)
print(sorted(times)[len(times) // 2])
"""

RESIDENT = """
import sys, time, torch
from pathlib import Path
from transformers import AutoModelForCausalLM
from evohub.spec import load_recipe
from evohub.merging.build import open_inputs
from evohub.merging.ps import ResidentMerge
r = load_recipe(sys.argv[1]); dirs = [Path(x.path) for x in r.inputs()]
model = AutoModelForCausalLM.from_pretrained(dirs[0], dtype=torch.bfloat16)
params = dict(model.named_parameters())
rm = ResidentMerge(open_inputs(r, dirs), r)
times = []
for i in range(int(sys.argv[2])):
    ms = tuple(m.model_copy(update={"weight": m.weight + 0.01 * i}) for m in r.parameter_space.models)
    cand = r.model_copy(update={"parameter_space": r.parameter_space.model_copy(update={"models": ms})})
    t = time.perf_counter(); rm.apply(cand, params); times.append(time.perf_counter() - t)
print(sorted(times)[len(times) // 2])
"""


def python_of(venv: Path) -> str:
    return str(venv / "bin" / "python")


def compare(root: Path, method: str, ev: Path, mk: Path) -> dict:
    """Elements of evohub's output beyond one bf16 ulp of mergekit's (ties: and tie-ambiguous)."""
    import torch
    from safetensors import safe_open

    def load(d: Path) -> dict:
        out = {}
        for p in d.glob("*.safetensors"):
            with safe_open(str(p), "pt") as f:
                for k in f.keys():  # noqa: SIM118
                    out[k] = f.get_tensor(k).float()
        return out

    a, b = load(ev), load(mk)
    srcs = {n: load(root / n) for n in ("base", "ft1", "ft2")} if method == "ties" else {}
    beyond = ambiguous = total = 0
    for k in a:
        d = (a[k] - b[k]).abs()
        bad = d > b[k].abs() * 2**-7
        if method == "ties":
            amb = torch.zeros_like(bad)
            for name, (_, dens) in WEIGHTS.items():
                delta = (srcs[name][k] - srcs["base"][k]).abs().reshape(-1)
                n = delta.numel()
                kk = max(1, int(dens * n))
                thr = torch.kthvalue(delta, n - kk + 1).values
                amb |= (delta == thr).reshape(amb.shape)
            ambiguous += int((bad & amb).sum())
            bad &= ~amb
        beyond += int(bad.sum())
        total += a[k].numel()
    return {"elements": total, "beyond_1_ulp": beyond, "tie_ambiguous_differences": ambiguous}


def compare_in_child(root: Path, method: str, ev: Path, mk: Path) -> dict:
    """compare() in a child process: the parent stays small, so children's ru_maxrss (which
    starts from the parent's RSS at fork) measures the children alone."""
    out = subprocess.run(
        [sys.executable, __file__, "--compare", str(root), method, str(ev), str(mk)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return json.loads(out.splitlines()[-1])


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--compare":
        print(json.dumps(compare(Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4]), Path(sys.argv[5]))))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mergekit-venv", type=Path, default=HERE / ".venv-mergekit")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--scale", action="store_true", help="also time 2x the layers")
    p.add_argument("--out", type=Path, default=HERE / "out")
    a = p.parse_args()
    if not (a.mergekit_venv / "bin" / "mergekit-yaml").exists():
        raise SystemExit(
            f"no mergekit in {a.mergekit_venv}: python3 -m venv {a.mergekit_venv} && "
            f"{a.mergekit_venv}/bin/pip install -c .ci/constraints-cpu.txt mergekit==0.1.5"
        )
    evohub = str(Path(sys.executable).parent / "evohub")
    results: dict = {"runs": a.runs, "cpus": os.cpu_count(), "methods": {}}
    sizes = [8, 16] if a.scale else [8]
    for layers in sizes:
        root = a.out / f"models-{layers}L"
        if not (root / "ft2" / "model.safetensors").exists():
            subprocess.run(
                [sys.executable, str(HERE / "make_models.py"), str(root), "--layers", str(layers)],
                check=True,
            )
        results[f"read_floor_s_{layers}L"] = read_floor(root, a.runs)
        results[f"params_{layers}L"] = json.loads((root / "info.json").read_text())["params"]
        for method in ("linear", "ties", "dare_ties"):
            recipe, mkcfg = write_configs(root, method)
            ev_out, mk_out = root / f"evohub_{method}", root / f"mergekit_{method}"
            ev, mk = [], []
            for _ in range(a.runs):  # alternate, so drift affects both alike
                shutil.rmtree(ev_out, ignore_errors=True)
                ev.append(run_process([evohub, "merge", str(recipe), "--out", str(ev_out), "-q"]))
                shutil.rmtree(mk_out, ignore_errors=True)
                mk.append(run_process([str(a.mergekit_venv / "bin" / "mergekit-yaml"), str(mkcfg), str(mk_out)]))
            row = {
                "evohub_wall_s": statistics.median(x[0] for x in ev),
                "mergekit_wall_s": statistics.median(x[0] for x in mk),
                "evohub_rss_mb": statistics.median(x[1] for x in ev),
                "mergekit_rss_mb": statistics.median(x[1] for x in mk),
            }
            row["wall_ratio"] = row["evohub_wall_s"] / row["mergekit_wall_s"]
            row["rss_ratio"] = row["evohub_rss_mb"] / row["mergekit_rss_mb"]
            # in-process timings at every size (for scaling); the rest at the first size
            tmp = root / "inproc"
            row["evohub_inprocess_s"] = float(subprocess.run(
                [sys.executable, "-c", EVOHUB_INPROC, str(recipe), str(tmp), str(a.runs)],
                check=True, capture_output=True, text=True).stdout.split()[-1])  # fmt: skip
            row["mergekit_inprocess_s"] = float(subprocess.run(
                [python_of(a.mergekit_venv), "-c", MERGEKIT_INPROC, str(mkcfg), str(tmp), str(a.runs)],
                check=True, capture_output=True, text=True).stdout.split()[-1])  # fmt: skip
            row["inprocess_vs_floor"] = row["evohub_inprocess_s"] / results[f"read_floor_s_{layers}L"]
            # the fused kernels forced (a one-shot merge this small does not fuse: compiling in a
            # fresh process would cost more than it saves; evolution and 7B-sized merges do)
            row["evohub_inprocess_fused_s"] = float(subprocess.run(
                [sys.executable, "-c", EVOHUB_INPROC, str(recipe), str(tmp), str(a.runs)],
                check=True, capture_output=True, text=True, env=os.environ | {"EVOHUB_FUSED": "1"}).stdout.split()[-1])  # fmt: skip
            row["inprocess_fused_vs_floor"] = row["evohub_inprocess_fused_s"] / results[f"read_floor_s_{layers}L"]
            if method == "dare_ties" and layers == sizes[0]:
                row["resident_apply_s"] = float(subprocess.run(
                    [sys.executable, "-c", RESIDENT, str(recipe), str(a.runs)],
                    check=True, capture_output=True, text=True).stdout.split()[-1])  # fmt: skip
                row["resident_vs_mergekit_inprocess"] = row["resident_apply_s"] / row["mergekit_inprocess_s"]
            if method in ("linear", "ties") and layers == sizes[0]:
                row["equality"] = compare_in_child(root, method, ev_out, mk_out)
            results["methods"][f"{method}@{layers}L"] = row
            print(method, layers, json.dumps(row), flush=True)
        if layers == sizes[0]:  # task_arithmetic: equality only
            recipe, mkcfg = write_configs(root, "task_arithmetic")
            ev_out, mk_out = root / "evohub_task_arithmetic", root / "mergekit_task_arithmetic"
            for o in (ev_out, mk_out):
                shutil.rmtree(o, ignore_errors=True)
            run_process([evohub, "merge", str(recipe), "--out", str(ev_out), "-q"])
            run_process([str(a.mergekit_venv / "bin" / "mergekit-yaml"), str(mkcfg), str(mk_out)])
            results["task_arithmetic_equality"] = compare_in_child(root, "task_arithmetic", ev_out, mk_out)
    (a.out / "merge_results.json").write_text(json.dumps(results, indent=2))
    print_table(results)


def print_table(r: dict) -> None:
    print(
        "\n| method | layers | evohub wall s | mergekit wall s | ratio | evohub RSS MB | mergekit RSS MB | RSS ratio |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for key, row in r["methods"].items():
        m, layers = key.split("@")
        print(f"| {m} | {layers} | {row['evohub_wall_s']:.2f} | {row['mergekit_wall_s']:.2f} | {row['wall_ratio']:.2f} | "
              f"{row['evohub_rss_mb']:.0f} | {row['mergekit_rss_mb']:.0f} | {row['rss_ratio']:.2f} |")  # fmt: skip
    print()
    for key, row in r["methods"].items():
        if "evohub_inprocess_s" in row:
            print(f"{key}: in-process evohub {row['evohub_inprocess_s']:.3f} s, mergekit {row['mergekit_inprocess_s']:.3f} s, "
                  f"evohub / read floor {row['inprocess_vs_floor']:.2f}; fused forced {row['evohub_inprocess_fused_s']:.3f} s, "
                  f"{row['inprocess_fused_vs_floor']:.2f}x the floor")  # fmt: skip
        if "resident_apply_s" in row:
            print(
                f"{key}: resident apply {row['resident_apply_s']:.3f} s = {row['resident_vs_mergekit_inprocess']:.3f} x mergekit in-process"
            )
        if "equality" in row:
            print(f"{key}: equality {row['equality']}")
    print("task_arithmetic equality", r.get("task_arithmetic_equality"))
    if "params_16L" in r:
        ratio = r["params_16L"] / r["params_8L"]
        for m in ("linear", "ties", "dare_ties"):
            t8, t16 = (r["methods"][f"{m}@{n}L"]["evohub_inprocess_s"] for n in (8, 16))
            print(f"scaling {m}: in-process time x{t16 / t8:.2f} for x{ratio:.2f} parameters (8 -> 16 layers)")
    for k, v in r.items():
        if k.startswith("read_floor"):
            print(f"{k}: {v:.3f}")


if __name__ == "__main__":
    main()
