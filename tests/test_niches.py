"""m2n2 (natural niches) and map-elites: the formulas against hand-worked numbers, the archives,
exact resume from the log and the score matrix, and the schema's rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evohub.errors import SpecError
from evohub.evolve.genome import PSGenome
from evohub.evolve.optimizers import OPTIMIZERS
from evohub.evolve.optimizers.m2n2 import M2N2, attraction, crossover, shared_fitness
from evohub.evolve.search import Log, Outcome, Scoring, run_stage
from evohub.spec import load, load_job

JOB = """\
evohub_job: 1
name: niches
seed: 5
base_model: {{path: base}}
sources:
  - {{name: one, path: ft1}}
  - {{name: two, path: ft2}}
dtype: float32
tokenizer_source: base
parameter_space:
  method: {method}
  layer_groups: 2
  patterns: [lm_head]
  weight: {{bounds: [0, 2]}}
{density}  optimizer: {optimizer}
fitness:
  task: ja-math
  data: {{path: data.jsonl}}
{extra}"""

M2N2_OPT = "{algorithm: m2n2, popsize: 6, max_evals: 48, options: {archive: 5}}"
ME_OPT = "{algorithm: map-elites, popsize: 6, max_evals: 48, descriptors: [{metric: ja_rate, bounds: [0, 1], bins: 4}]}"


@pytest.fixture
def world(tiny_world: Path) -> Path:
    (tiny_world / "data.jsonl").write_text('{"question": "1+1", "answer_number": 2}\n')
    return tiny_world


def job(world: Path, optimizer: str = M2N2_OPT, method: str = "task_arithmetic", extra: str = "") -> Path:
    density = "  density: {bounds: [0, 1]}\n" if method == "dare_ties" else ""
    p = world / "job.yaml"
    p.write_text(JOB.format(optimizer=optimizer, method=method, density=density, extra=extra))
    return p


def test_shared_fitness_and_attraction_by_hand():
    s = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 1]], dtype=float)
    # z = column sums (2, 1, 1): member 0 gets 1/2 + 1, member 1 1/2, member 2 1
    fit, norm = shared_fitness(s, alpha=1.0)
    assert fit.tolist() == [1.5, 0.5, 1.0]
    # attraction to member 1 (normalised row (0.5, 0, 0)): member 0 beats it on item 1, member 2 on item 2
    assert attraction(norm, 1).tolist() == [1.0, 0.0, 1.0]
    # alpha 0 switches competition off: plain sums; an item nobody solves counts as z = 1
    assert shared_fitness(s, alpha=0.0)[0].tolist() == [2.0, 1.0, 1.0]
    assert shared_fitness(np.zeros((2, 3)), alpha=1.0)[0].tolist() == [0.0, 0.0]
    # alpha 2: z = (4, 1, 1)
    assert shared_fitness(s, alpha=2.0)[0].tolist() == [1.25, 0.25, 1.0]


def test_crossover_splits_by_slot():
    p1, p2 = np.zeros(5), np.ones(5)
    slots = np.array([0, 0, 1, 1, 2])
    # slots before the split: (1 - w)·p1 + w·p2; from it on: w·p1 + (1 - w)·p2
    assert crossover(p1, p2, slots, split=1, w=0.25).tolist() == [0.25, 0.25, 0.75, 0.75, 0.75]
    assert crossover(p1, p2, slots, split=0, w=0.25).tolist() == [0.75] * 5
    assert crossover(p1 + 0.2, p2, slots, split=2, w=0.5).tolist() == pytest.approx([0.6] * 5)


class _Genome:
    def slots(self):
        return [0, 1]

    def source_genotypes(self):
        return [[1.0, 0.0], [0.0, 1.0]]


def test_competition_keeps_the_specialist_that_plain_fitness_drops():
    # three generalists (items 0-2) and a specialist solving items 2 and 3 (raw mean 0.5 < 0.75)
    def archive_after(alpha: float) -> list[list[int]]:
        o = M2N2([0.5, 0.5], 0.1, 4, 0, {"alpha": alpha, "archive": 3, "mutation": 0.0}, _Genome())
        X = o.ask()
        gen = [1, 1, 1, 0]
        o.tell(X, [0.0] * 4, None, [gen, gen, gen, [0, 0, 1, 1]])
        return [s.astype(int).tolist() for s in o.scores]

    # alpha 1: z = (3, 3, 4, 1); a generalist's share 1/3 + 1/3 + 1/4, the specialist's 1/4 + 1
    assert archive_after(1.0) == [[1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 1, 1]]
    # alpha 0 (no competition): the specialist has the lowest sum and goes
    assert archive_after(0.0) == [[1, 1, 1, 0]] * 3


def test_first_generation_seeds_the_sources_and_the_start(world: Path):
    spec = load_job(job(world))
    genome = PSGenome.for_job(spec)
    # task_arithmetic, weight bounds [0, 2]: a source alone is gene 0.5 on its weights, 0 on the other's
    assert genome.source_genotypes() == [[0.5] * 3 + [0.0] * 3, [0.0] * 3 + [0.5] * 3]
    models = genome.decode(genome.source_genotypes()[1]).parameter_space.models
    assert [m.weight for m in models] == [(0.0, 0.0), (1.0, 1.0)]
    assert genome.slots() == [0, 1, 2] * 2
    o = M2N2(genome.x0(), 1 / 6, 6, 1, OPTIMIZERS.get("m2n2").settings({}), genome)
    X = o.ask()
    assert X[:3] == [*genome.source_genotypes(), genome.x0()] and len(X) == 6
    dt = PSGenome.for_job(load_job(job(world, method="dare_ties")))
    assert dt.slots() == [0, 0, 1, 1, 2, 2] * 2
    assert dt.source_genotypes()[0] == [0.5, 1.0] * 3 + [0.0, 1.0] * 3


class Niches:
    """Twelve items; item j is solved when the weight of source (j % 2) in layer group (j // 2 % 2) is
    within 0.3 of 1.2 − 0.05·j: no single weight setting solves them all. Candidate 2 of
    generation 3 fails."""

    def __init__(self):
        self.calls = 0

    def evaluate(self, batch, done):
        for c in batch:
            self.calls += 1
            if (c.generation, c.index) == (3, 2):
                done(c, Outcome(None, {}, "boom", 0.0))
                continue
            ws = [m.weight for m in c.recipe.parameter_space.models]
            scores = [float(abs(ws[j % 2][j // 2 % 2] - (1.2 - 0.05 * j)) < 0.3) for j in range(12)]
            acc = sum(scores) / 12
            metrics = {"acc": acc, "acc_ja": acc, "ja_rate": float(ws[0][0] > ws[1][0])}
            done(c, Outcome(acc, metrics, None, 0.0, scores=scores))


def _scoring(path: Path) -> Scoring:
    return Scoring(item_range=(0.0, 1.0), matrix=path)


def test_m2n2_stage_is_deterministic_and_resumes_from_the_log_and_matrix(world: Path, tmp_path: Path):
    spec = load_job(job(world))
    genome, opt = PSGenome.for_job(spec), spec.parameter_space.optimizer
    ev = Niches()
    full = run_stage("ps", genome, opt, ev, Log(tmp_path / "a.jsonl"), tmp_path / "a.json", seed=5,
                     scoring=_scoring(tmp_path / "a.scores.jsonl"))  # fmt: skip
    assert ev.calls == full.evaluations == 48
    rows = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    ck = json.loads((tmp_path / "a.json").read_text())
    archive = ck["archive"]
    assert len(archive) == 5 and (3, 2) not in {(m["generation"], m["index"]) for m in archive}
    # the archive replayed independently from the log and the score matrix: each success joins in
    # order; past 5 members the first of the lowest shared fitness Σ_j s_ij / Σ_k s_kj goes
    matrix = (tmp_path / "a.scores.jsonl").read_text().splitlines()
    item_scores = {(m["g"], m["i"]): m["scores"] for m in map(json.loads, matrix)}
    names: list[tuple[int, int]] = []
    for r in rows:
        if r["error"] is None:
            names.append((r["generation"], r["index"]))
        if len(names) > 5:
            z = [sum(item_scores[n][j] for n in names) or 1 for j in range(12)]
            shared = [sum(item_scores[n][j] / z[j] for j in range(12)) for n in names]
            del names[shared.index(min(shared))]
    assert [(m["generation"], m["index"]) for m in archive] == names
    fitness = {(r["generation"], r["index"]): r["fitness"] for r in rows}
    # every child after generation 0 lies between its parents: mixes of archive genotypes, in the cube
    assert all(0.0 <= v <= 1.0 for r in rows for v in r["genotype"])
    assert full.best_fitness == max(f for f in fitness.values() if f is not None)
    # killed inside generation 4 (after the matrix row of candidate 4/2, before its log row)
    cut = 4 * 6 + 2
    part, scores = tmp_path / "b.jsonl", tmp_path / "b.scores.jsonl"
    part.write_text("".join((tmp_path / "a.jsonl").read_text().splitlines(keepends=True)[:cut]) + '{"sta')
    scores.write_text("".join((tmp_path / "a.scores.jsonl").read_text().splitlines(keepends=True)[: cut + 1]))
    ev = Niches()
    res = run_stage("ps", genome, opt, ev, Log(part), tmp_path / "b.json", seed=5, scoring=_scoring(scores))
    assert ev.calls == 48 - cut - 1
    assert part.read_text() == (tmp_path / "a.jsonl").read_text()
    assert json.loads((tmp_path / "b.json").read_text())["archive"] == archive
    assert res.best.recipe == full.best.recipe
    run_stage("ps", genome, opt, Niches(), Log(tmp_path / "c.jsonl"), tmp_path / "c.json", seed=6,
                      scoring=_scoring(tmp_path / "c.scores.jsonl"))  # fmt: skip
    assert [json.loads(x)["genotype"] for x in (tmp_path / "c.jsonl").read_text().splitlines()][6:] != [
        r["genotype"] for r in rows
    ][6:]


def test_m2n2_refuses_an_evaluator_without_item_scores(world: Path, tmp_path: Path):
    class NoItems:
        def evaluate(self, batch, done):
            for c in batch:
                done(c, Outcome(0.5, {"acc": 0.5}, None, 0.0))

    spec = load_job(job(world))
    with pytest.raises(Exception, match="evaluator gave none"):
        run_stage("ps", PSGenome.for_job(spec), spec.parameter_space.optimizer, NoItems(), Log(tmp_path / "l"),
                  tmp_path / "c.json", seed=5, scoring=_scoring(tmp_path / "s"))  # fmt: skip


def test_map_elites_keeps_each_cells_best_and_resumes(world: Path, tmp_path: Path):
    spec = load_job(job(world, ME_OPT))
    genome, opt = PSGenome.for_job(spec), spec.parameter_space.optimizer
    full = run_stage("ps", genome, opt, Niches(), Log(tmp_path / "a.jsonl"), tmp_path / "a.json", seed=5)
    rows = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    ck = json.loads((tmp_path / "a.json").read_text())
    # an independent archive from the log: ja_rate in [0, 1] cut into 4 cells (1.0 in the last)
    best: dict[int, float] = {}
    for r in rows:
        if r["error"] is None:
            cell = min(int(r["metrics"]["ja_rate"] * 4), 3)
            best[cell] = max(best.get(cell, -1.0), r["fitness"])
    assert {e["cell"]: e["fitness"] for e in ck["elites"]} == best and len(best) == 2
    assert ck["coverage"] == 0.5 and ck["qd_score"] == pytest.approx(sum(best.values()))
    for e in ck["elites"]:  # each elite is the first logged row of its cell's best fitness
        r = next(r for r in rows if (r["generation"], r["index"]) == (e["generation"], e["index"]))
        assert r["fitness"] == e["fitness"]
    assert full.best_fitness == max(best.values())
    part = tmp_path / "b.jsonl"
    part.write_text("".join((tmp_path / "a.jsonl").read_text().splitlines(keepends=True)[:20]))
    ev = Niches()
    res = run_stage("ps", genome, opt, ev, Log(part), tmp_path / "b.json", seed=5)
    assert ev.calls == 28 and part.read_text() == (tmp_path / "a.jsonl").read_text()
    assert json.loads((tmp_path / "b.json").read_text())["elites"] == ck["elites"]
    assert res.best.recipe == full.best.recipe


def problems(path: Path) -> list[str]:
    with pytest.raises(SpecError) as e:
        load(path)
    return e.value.problems


@pytest.mark.parametrize(
    "optimizer,extra,words",
    [
        (M2N2_OPT, "  estimator: race\n", "without a minibatch"),
        (M2N2_OPT, "  minibatch: 1\n", "without a minibatch"),
        ("{algorithm: m2n2, max_evals: 8, options: {alpha: -1}}", "", "alpha must be at least 0"),
        ("{algorithm: m2n2, max_evals: 8, options: {beta: 1}}", "", "no option 'beta' (its options: alpha, archive"),
        ("{algorithm: m2n2, max_evals: 8, objectives: [acc, ja_rate]}", "", "m2n2 takes no 'objectives'"),
        ("{max_evals: 8, options: {alpha: 1}}", "", "cma-es takes no 'options'"),
        ("{algorithm: map-elites, max_evals: 8}", "", "1 to 3 distinct task metrics"),
        (
            "{algorithm: map-elites, max_evals: 8, descriptors: [{metric: ja_rat, bounds: [0, 1]}]}",
            "",
            "did you mean 'ja_rate'",
        ),
        ("{algorithm: map-elites, max_evals: 8, descriptors: [{metric: acc, bounds: [1, 0]}]}", "", "lower first"),
        (ME_OPT, "  estimator: race\n", "use the full estimator"),
    ],
)
def test_schema_errors(world: Path, optimizer, extra, words):
    found = problems(job(world, optimizer, extra=extra))
    assert len(found) == 1 and words in found[0], found


def test_m2n2_is_refused_for_a_data_flow_stage_and_unbounded_items(world: Path):
    text = (
        job(world)
        .read_text()
        .replace(
            "fitness:", "data_flow_space:\n  a: ps\n  b: two\n  optimizer: {algorithm: m2n2, max_evals: 8}\nfitness:"
        )
    )
    p = world / "dfs.yaml"
    p.write_text(text)
    found = problems(p)
    assert len(found) == 1 and "data_flow_space.optimizer.algorithm" in found[0] and "only ps" in found[0], found
    p.write_text(job(world).read_text().replace("task: ja-math", "task: lm-loss") + "  backend: hf\n")
    assert any("unbounded" in f for f in problems(p))


DEMO = Path(__file__).resolve().parents[1] / "jobs" / "demo-world"
DEMO_JOB = f"""\
evohub_job: 1
name: kill
seed: 0
base_model: {{path: {DEMO}/base}}
sources:
  - {{name: math, path: {DEMO}/math}}
  - {{name: japanese, path: {DEMO}/japanese}}
dtype: float32
tokenizer_source: base
parameter_space:
  method: task_arithmetic
  layer_groups: 4
  weight: {{bounds: [0, 2.5]}}
  optimizer: {{popsize: 6, max_evals: 18, %s}}
fitness:
  task: ja-math
  data: {{path: {DEMO}/fitness.jsonl}}
  validation: {{path: {DEMO}/validation.jsonl}}
  backend: hf
  prompt: "問 {{input}} 答 "
  stop: []
  max_new_tokens: 8
  batch_size: 64
"""


def _timeless(path: Path) -> list[dict]:  # timings differ between runs; everything else must not
    rows = map(json.loads, path.read_text().splitlines())
    return [{k: v for k, v in r.items() if k != "seconds" and not k.endswith("_s")} for r in rows]


@pytest.mark.parametrize(
    "optimizer",
    [
        "algorithm: m2n2",
        "algorithm: nsga2, objectives: [acc, acc_strict]",
        "algorithm: map-elites, descriptors: [{metric: acc_strict, bounds: [0, 0.5], bins: 5}]",
    ],
)
def test_a_run_killed_with_sigkill_resumes_to_the_same_log(tmp_path: Path, optimizer: str):
    import os
    import signal
    import subprocess
    import sys
    import time

    job = tmp_path / "job.yaml"
    job.write_text(DEMO_JOB % optimizer)
    cmd = [sys.executable, "-m", "evohub", "run", str(job), "--device", "cpu", "-q"]
    env = os.environ | {"PYTHONUNBUFFERED": "1", "EVOHUB_THREADS": "1"}
    subprocess.run([*cmd, "--run-dir", str(tmp_path / "full")], check=True, env=env, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--run-dir", str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    log = killed / "candidates.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 8:  # inside generation 1
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 8 <= len(log.read_text().splitlines()) < 18
    out = subprocess.run([*cmd, "--run-dir", str(killed), "--resume"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert _timeless(log) == _timeless(tmp_path / "full" / "candidates.jsonl")
    scores = "stages/ps/scores.jsonl"
    assert _timeless(killed / scores) == _timeless(tmp_path / "full" / scores)
    assert (killed / "recipe.yaml").read_text() == (tmp_path / "full" / "recipe.yaml").read_text()
    ck = json.loads((killed / "stages/ps/checkpoint.json").read_text())
    full = json.loads((tmp_path / "full" / "stages/ps/checkpoint.json").read_text())
    mine = {"archive", "front", "elites"} & set(full)
    assert mine and {k: ck[k] for k in mine} == {k: full[k] for k in mine}
    from evohub.pipeline.publish import build_card, publish_files
    from evohub.pipeline.rundir import RunDir

    run = RunDir(tmp_path / "full")
    card, _ = build_card(run, "me/evo", {})
    if "nsga2" in optimizer:  # the front is plotted, published and shown on the card
        assert "front.png" in publish_files(run, card, {}) and "![Pareto front](front.png)" in card
    else:
        assert not run.front_plot.exists() and "front.png" not in card


def test_plan_and_help_name_the_optimiser_and_its_settings(world: Path, run_cli):
    code, out, err = run_cli("plan", job(world), "--json")
    assert code == 0, err
    stages = json.loads(out)["stages"]
    assert [s["optimizer"] for s in stages] == ["m2n2 (alpha=1, archive=5, mutation=0.05)"]
    assert stages[0]["dims_detail"].startswith("task_arithmetic: 2 sources x ")  # the operator, then its genes
    code, out, err = run_cli("plan", job(world, ME_OPT), "--json")
    assert json.loads(out)["stages"][0]["optimizer"] == ("map-elites (descriptors ja_rate (4 bins); line_sigma=0.2)")
    code, out, _ = run_cli("validate", "--help")  # the vocabulary a job spec may name
    assert code == 0 and "optimisers: cma-es | m2n2 | map-elites | nsga2" in out
