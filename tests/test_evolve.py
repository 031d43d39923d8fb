from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evohub.evolve.genome import DFSGenome, PSGenome
from evohub.evolve.pool import InProcessPool
from evohub.evolve.search import Log, Outcome, run_stage
from evohub.spec import JobSpec, load_job

REPO = Path(__file__).resolve().parents[1]

JOB = """\
evohub_job: 1
name: tiny
seed: 1
base_model: {{path: base}}
sources:
  - {{name: one, path: ft1}}
  - {{name: two, path: ft2}}
dtype: float32
tokenizer_source: base
parameter_space:
  method: {method}
  layer_groups: 2
  weight: {{bounds: [0, 1]}}
{density}  optimizer: {{max_evals: {evals}, popsize: 6}}
{extra}fitness:
  task: lm-loss
  data: {{path: fit.jsonl, split: "train[:16]"}}
  validation: {{path: fit.jsonl, split: "train[16:]"}}
  backend: hf
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from tiny import make_mistral

    root = tmp_path_factory.mktemp("evo")
    base = make_mistral(root / "base", seed=0, tokenizer=True)
    make_mistral(root / "ft1", seed=1, base=base, noise=0.05, tokenizer=True)
    make_mistral(root / "ft2", seed=2, base=base, noise=0.05, tokenizer=True)
    rng = random.Random(0)
    rows = [json.dumps({"text": " ".join(f"t{rng.randrange(60)}" for _ in range(12))}) for _ in range(20)]
    (root / "fit.jsonl").write_text("\n".join(rows) + "\n")
    return root


def job_file(world: Path, name: str, method: str = "dare_ties", evals: int = 18, extra: str = "") -> Path:
    p = world / name
    density = "  density: {bounds: [0.1, 1]}\n" if method in ("ties", "dare_ties", "dare_linear") else ""
    p.write_text(JOB.format(method=method, evals=evals, extra=extra, density=density))
    return p


class Synthetic:
    """A known optimum: fitness = −Σ (weight − target)² over the decoded recipe."""

    def __init__(self, target):
        self.target = target
        self.calls = 0

    def evaluate(self, batch, done):
        for c in batch:
            self.calls += 1
            ws = [
                w
                for m in c.recipe.parameter_space.models
                for w in (m.weight if isinstance(m.weight, tuple) else (m.weight,))
            ]
            done(
                c,
                Outcome(-sum((w - t) ** 2 for w, t in zip(ws, self.target, strict=True)), {}, None, 0.0),
            )


def test_cma_reaches_a_known_optimum(world, tmp_path):
    spec = load_job(job_file(world, "lin.yaml", method="linear", evals=400))
    genome = PSGenome.for_job(spec)
    assert genome.dims == 4 and genome.x0() == [0.5] * 4
    target = [0.9, 0.15, 0.3, 0.7]
    ev = Synthetic(target)
    res = run_stage(
        "ps",
        genome,
        spec.parameter_space.optimizer,
        ev,
        Log(tmp_path / "c.jsonl"),
        tmp_path / "ck.json",
        seed=1,
    )
    assert ev.calls == res.evaluations == 400
    got = [w for m in res.best.recipe.parameter_space.models for w in m.weight]
    assert max(abs(g - t) for g, t in zip(got, target, strict=True)) < 0.02, got
    ck = json.loads((tmp_path / "ck.json").read_text())
    assert ck["evaluations"] == 400 and ck["best_fitness"] == pytest.approx(res.best_fitness)


def test_replayed_resume_is_exact_and_evaluates_nothing_twice(world, tmp_path):
    spec = load_job(job_file(world, "lin.yaml", method="linear", evals=60))
    genome, opt = PSGenome.for_job(spec), spec.parameter_space.optimizer
    target = [0.2, 0.4, 0.6, 0.8]
    full = run_stage(
        "ps",
        genome,
        opt,
        Synthetic(target),
        Log(tmp_path / "full.jsonl"),
        tmp_path / "a.json",
        seed=3,
    )
    # stop after 27 candidates (inside generation 4), then resume from the same log
    part = tmp_path / "part.jsonl"
    part.write_text(
        "".join((tmp_path / "full.jsonl").read_text().splitlines(keepends=True)[:27]) + '{"stage": "ps", "gen'
    )
    ev = Synthetic(target)
    res = run_stage("ps", genome, opt, ev, Log(part), tmp_path / "b.json", seed=3)
    assert ev.calls == 60 - 27  # the cut-off row was dropped, nothing else re-evaluated
    assert part.read_text() == (tmp_path / "full.jsonl").read_text()
    assert res.best.recipe == full.best.recipe
    other = run_stage("ps", genome, opt, Synthetic(target), Log(tmp_path / "o.jsonl"), tmp_path / "c.json", seed=4)
    assert other.best.genotype != full.best.genotype  # the seed matters


def test_dfs_genome_paths():
    from evohub.spec import DFSSearch, ModelRef

    search = DFSSearch(a="x", b="y", repeats=2, scales={"bounds": [0.5, 2.0]}, optimizer={"generations": 1})
    ref = ModelRef.model_construct(path="/b", repo=None, revision=None)
    g = DFSGenome(search=search, layers_a=3, layers_b=2, a=ref, b=ref, base=None, seed=0, dtype="float32")
    assert (g.M, g.T, g.dims) == (5, 10, 10 + 25)
    path, scales = g.path(g.x0())  # the start point is model A itself, scale 1
    assert path == [("a", 0), ("a", 1), ("a", 2)] and scales == pytest.approx([1.0, 1.0, 1.0])
    x = [0.0] * g.dims
    for t in (3, 4, 6):  # b0, b1 in repetition 1; a1 in repetition 2
        x[t] = 1.0
    x[g.T + 0 * 5 + 3] = 1.0  # scale a0 -> b0 = 2.0
    path, scales = g.path(x)
    assert path == [("a", 0), ("b", 0), ("b", 1), ("a", 1), ("a", 2)]  # ends at A's last layer
    assert scales[:2] == pytest.approx([1.0, 2.0]) and scales[2] == pytest.approx(0.5)
    capped = DFSGenome(
        search=search.model_copy(update={"max_path_length": 3}),
        layers_a=3,
        layers_b=2,
        a=ref,
        b=ref,
        base=None,
        seed=0,
        dtype="float32",
    )
    assert capped.path(x)[0] == [("a", 0), ("b", 0), ("a", 2)]


def _strip(row: dict) -> dict:  # timings differ between runs; everything else must not
    return {k: v for k, v in row.items() if k != "seconds" and not k.endswith("_s")} | {
        "metrics": {k: v for k, v in row["metrics"].items() if not k.endswith("_s")}
    }


def test_run_killed_with_sigkill_resumes_to_the_same_result(world, tmp_path):
    job = job_file(
        world,
        "ps_dfs.yaml",
        evals=18,
        extra="data_flow_space:\n  a: ps\n  b: two\n  repeats: 2\n  optimizer: {max_evals: 16, popsize: 8}\n",
    )
    cmd = [sys.executable, "-m", "evohub", "run", str(job), "--device", "cpu", "-q"]
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    subprocess.run([*cmd, "--run-dir", str(tmp_path / "full")], check=True, env=env, capture_output=True)
    kill_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        [*cmd, "--run-dir", str(kill_dir)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    log = kill_dir / "candidates.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 9:  # inside PS generation 1
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = len(log.read_text().splitlines())
    assert 9 <= killed_at < 34, killed_at
    out = subprocess.run([*cmd, "--run-dir", str(kill_dir), "--resume"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    full_rows = [_strip(json.loads(x)) for x in (tmp_path / "full" / "candidates.jsonl").read_text().splitlines()]
    resumed = [_strip(json.loads(x)) for x in log.read_text().splitlines()]
    assert resumed == full_rows and len(full_rows) == 18 + 16
    assert (kill_dir / "recipe.yaml").read_text() == (tmp_path / "full" / "recipe.yaml").read_text()
    for f in ("fitness.png", "model/model.safetensors.index.json", "stages/dfs/validation.json"):
        assert (kill_dir / f).exists()
    for stage in ("ps", "dfs"):  # every finalist, the start point and CMA's mean too, has both scores
        rows = json.loads((kill_dir / "stages" / stage / "validation.json").read_text())
        assert [r["recipe_hash"] for r in rows if r["generation"] < 0] == ["x0", "mean"]
        assert all(r["fitness"] is not None and r["fitness_items"] > 0 and r["validation_items"] > 0 for r in rows)
        full = json.loads((tmp_path / "full" / "stages" / stage / "validation.json").read_text())
        keep = ("generation", "index", "genotype", "fitness", "validation")  # the resumed mean is the same
        assert [{k: r[k] for k in keep} for r in rows] == [{k: r[k] for k in keep} for r in full]


def test_resume_refuses_another_spec_and_run_refuses_an_existing_dir(world, tmp_path, run_cli):
    job = job_file(world, "small.yaml", method="linear", evals=6)
    code, _, err = run_cli("run", job, "--run-dir", tmp_path / "r", "--device", "cpu", "-q")
    assert code == 0, err
    code, _, err = run_cli("run", job, "--run-dir", tmp_path / "r", "--device", "cpu", "-q")
    assert code == 2 and "--resume" in err
    other = job_file(world, "other.yaml", method="linear", evals=12)
    code, _, err = run_cli("run", other, "--run-dir", tmp_path / "r", "--resume", "-q")
    assert code == 2 and "differs from the spec" in err


class _Flaky:
    """Fails always when gene 0 < 0.35, once (then succeeds) when it is in [0.35, 0.5)."""

    def __init__(self):
        self.calls: dict = {}

    def evaluate(self, genotype, recipe, generation, split="fitness"):
        key = tuple(genotype)
        self.calls[key] = self.calls.get(key, 0) + 1
        if genotype[0] < 0.35 or (genotype[0] < 0.5 and self.calls[key] == 1):
            return Outcome(None, {}, "RuntimeError: boom", 1.5,
                           cost={"merge_s": 0.5, "generated_tokens": 7, "longest_tokens": 5, "items": 9})  # fmt: skip
        return Outcome(-sum(genotype), {}, None, 1.0,
                       cost={"merge_s": 0.25, "generated_tokens": 3, "longest_tokens": 2, "items": 4})  # fmt: skip


def test_failing_candidates_are_retried_once_then_recorded(world, tmp_path):
    spec = load_job(job_file(world, "lin.yaml", method="linear", evals=30))
    genome = PSGenome.for_job(spec)
    flaky = _Flaky()
    pool = InProcessPool(None)  # type: ignore[arg-type]
    pool._worker = flaky  # type: ignore[assignment]
    log = Log(tmp_path / "c.jsonl")
    res = run_stage("ps", genome, spec.parameter_space.optimizer, pool, log, tmp_path / "ck.json", seed=1)
    rows = log.stage_rows("ps")
    always = [r for r in rows if r["genotype"][0] < 0.35]
    once = [r for r in rows if 0.35 <= r["genotype"][0] < 0.5]
    assert always and once and res.evaluations == len(rows) == 30
    assert all(r["error"] == "RuntimeError: boom" and r["fitness"] is None for r in always)
    assert all(r["error"] is None and r["fitness"] is not None for r in once)
    assert sum(flaky.calls.values()) == 30 + len(always) + len(once)  # each failure tried twice
    # the ledger counts every attempt's time and tokens; a call's longest answer is the last attempt's
    assert all((r["seconds"], r["merge_s"], r["generated_tokens"], r["longest_tokens"]) == (3.0, 1.0, 14, 5)
               for r in always)  # fmt: skip
    assert all((r["seconds"], r["merge_s"], r["generated_tokens"], r["longest_tokens"]) == (2.5, 0.75, 10, 2)
               for r in once)  # fmt: skip
    assert res.best_fitness == max(r["fitness"] for r in rows if r["fitness"] is not None)


def test_a_failed_call_reports_what_it_spent(world, tmp_path):
    """A call that fails after scoring some rows (out of memory in its second batch, say) reports
    its merge seconds and the tokens its backend counted: the ledger's cost of that attempt."""
    from evohub.evolve.search import Candidate
    from evohub.pipeline.job import start_run
    from evohub.pipeline.pull import pull
    from evohub.pipeline.stages import worker_spec

    spec, run = start_run(job_file(world, "fail.yaml", evals=6), tmp_path / "run", resume=False)
    pull(spec, run)
    genome = PSGenome.for_job(spec, pin=run.pinned)
    worker = worker_spec(spec, run, "ps").build()
    ran = worker.task.run

    def out_of_memory(backend, rows, **kwargs):
        ran(backend, rows[:2], **kwargs)
        raise RuntimeError("CUDA out of memory")

    worker.task.run = out_of_memory
    x = genome.x0()
    c = Candidate("ps", 0, 0, tuple(x), genome.decode(x))
    out = worker.evaluate(c.genotype, c.recipe, (0, 1, 2, 3))
    assert out.fitness is None and out.error.startswith("RuntimeError: CUDA out of memory")
    # the demo job's lm-loss reads its rows (tokens counted as prompt tokens) and generates none
    assert out.cost["prompt_tokens"] == 22 and out.cost["generated_tokens"] == 0 and out.cost["merge_s"] > 0
    assert "items" not in out.cost and out.cost["longest_tokens"] == 0 and out.seconds >= out.cost["merge_s"]


@pytest.mark.slow
def test_ray_pool_matches_in_process_and_survives_a_dead_actor(world, tmp_path):
    ray = pytest.importorskip("ray")
    from evohub.evolve.pool import RayPool
    from evohub.evolve.search import Candidate
    from evohub.pipeline.job import start_run
    from evohub.pipeline.pull import pull
    from evohub.pipeline.stages import worker_spec

    spec, run = start_run(job_file(world, "ray.yaml", evals=6), tmp_path / "run", resume=False)
    pull(spec, run)
    genome = PSGenome.for_job(spec, pin=run.pinned)
    rng = random.Random(0)
    cands = [
        Candidate("ps", 0, i, g := tuple(rng.random() for _ in range(genome.dims)), genome.decode(g)) for i in range(4)
    ]
    local: dict = {}
    InProcessPool(worker_spec(spec, run, "ps")).evaluate(cands, lambda c, o: local.__setitem__(c.index, o.fitness))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        pool = RayPool(worker_spec(spec, run, "ps", threads=1), actors=2)
        remote: dict = {}
        pool.evaluate(cands, lambda c, o: remote.__setitem__(c.index, o.fitness))
        assert remote == local  # the same fitness per candidate, bit for bit
        ray.kill(pool.actors[0])  # an actor dies: it is replaced and the work still finishes
        again: dict = {}
        pool.evaluate(cands, lambda c, o: again.__setitem__(c.index, o.fitness))
        assert again == local and pool.replaced >= 1
        pool.close()
    finally:
        ray.shutdown()


def test_plan_counts_match_the_genome(world):
    spec = JobSpec.from_yaml(job_file(world, "p.yaml").read_text(), base_dir=world)
    assert PSGenome.for_job(spec).dims == 2 * 2 * 2


def test_run_evaluates_the_winner_and_the_sources(world, tmp_path, run_cli):
    (world / "mgsm.jsonl").write_text(
        "".join(json.dumps({"question": f"t{i} t{i + 1}", "answer_number": i}) + "\n" for i in range(4))
    )
    extra = "evaluation:\n  suites: [mgsm-ja]\n  backend: hf\n  data: {mgsm-ja: mgsm.jsonl}\n  limit: 2\n  max_new_tokens: 3\n"
    job = job_file(world, "eval.yaml", method="linear", evals=6, extra=extra)
    code, out, err = run_cli("run", job, "--run-dir", tmp_path / "r", "--device", "cpu", "-q")
    assert code == 0, err
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert set(res["models"]) == {"evolved", "base", "one", "two", "untuned merge"}
    for r in res["models"].values():
        assert r["suites"]["mgsm-ja"]["metrics"]["n"] == 2
    assert (tmp_path / "r" / "eval" / "evolved" / "samples_mgsm-ja.jsonl").exists()
    assert "held-out evaluation" in out


def test_max_evals_caps_one_call_and_the_stage_resumes_to_the_same_result(world, tmp_path):
    spec = load_job(job_file(world, "lin.yaml", method="linear", evals=60))
    genome, opt = PSGenome.for_job(spec), spec.parameter_space.optimizer
    target = [0.2, 0.4, 0.6, 0.8]
    full = run_stage("ps", genome, opt, Synthetic(target), Log(tmp_path / "full.jsonl"), tmp_path / "a.json", seed=3)
    assert full.complete
    log, calls = Log(tmp_path / "capped.jsonl"), []
    for cap in (27, 27, 27):  # 27 + 27 + the last 6: each call evaluates at most its cap
        ev = Synthetic(target)
        res = run_stage("ps", genome, opt, ev, log, tmp_path / "b.json", seed=3, max_evals=cap)
        calls.append((ev.calls, res.complete))
    assert calls == [(27, False), (27, False), (6, True)]  # the first two pause mid-generation, untold
    assert (tmp_path / "capped.jsonl").read_text() == (tmp_path / "full.jsonl").read_text()
    assert res.best.recipe == full.best.recipe and res.evaluations == 60


def test_a_capped_run_is_not_final_and_resumes(world, tmp_path, run_cli):
    job = job_file(world, "cap.yaml", method="linear", evals=8)
    run = tmp_path / "r"
    code, out, err = run_cli("run", job, "--run-dir", run, "--device", "cpu", "-q", "--max-evals", "4")
    assert code == 0, err
    assert "paused at the --max-evals cap after 4 evaluations" in out and "--resume" in out
    assert not (run / "stages" / "ps" / "recipe.yaml").exists() and not (run / "recipe.yaml").exists()
    assert not (run / "model").exists()
    code, _, err = run_cli("run", job, "--run-dir", run, "--device", "cpu", "-q", "--no-evolve", "--resume")
    assert code == 2 and "stage ps of" in err and "is not finished" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("run", job, "--run-dir", run, "--device", "cpu", "-q", "--resume", "--max-evals", "4")
    assert code == 0, err
    assert (run / "recipe.yaml").exists() and (run / "model" / "config.json").exists()
    whole = tmp_path / "whole"
    code, _, err = run_cli("run", job, "--run-dir", whole, "--device", "cpu", "-q")
    assert code == 0, err
    strip = lambda p: [_strip(json.loads(x)) for x in (p / "candidates.jsonl").read_text().splitlines()]  # noqa: E731
    assert strip(run) == strip(whole) and (run / "recipe.yaml").read_text() == (whole / "recipe.yaml").read_text()
    code, _, err = run_cli("run", job, "--run-dir", tmp_path / "nowhere", "--resume", "-q")
    assert code == 2 and "holds no run to resume" in err


def test_a_time_budget_that_ends_a_stage_says_so(world, tmp_path, caplog):
    import logging

    spec = load_job(job_file(world, "lin.yaml", method="linear", evals=400))
    opt = spec.parameter_space.optimizer.model_copy(update={"max_hours": 10 / 3600})  # 10 s of evaluation

    class Slow(Synthetic):  # each candidate takes a (recorded) second
        def evaluate(self, batch, done):
            super().evaluate(batch, lambda c, out: done(c, Outcome(out.fitness, {}, None, 1.0)))

    with caplog.at_level(logging.INFO, logger="evohub"):
        res = run_stage("ps", PSGenome.for_job(spec), opt, Slow([0.5] * 4), Log(tmp_path / "t.jsonl"),
                        tmp_path / "t.json", seed=1)  # fmt: skip
    assert res.evaluations < 400
    assert any("max_hours budget" in r.getMessage() and "of 400 evaluations" in r.getMessage() for r in caplog.records)
