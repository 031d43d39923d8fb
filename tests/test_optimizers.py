from __future__ import annotations

import json
from pathlib import Path

import pytest

from evohub.errors import SpecError
from evohub.evolve.genome import PSGenome
from evohub.evolve.optimizers import OPTIMIZERS
from evohub.evolve.optimizers.nsga2 import NSGA2, front_rows, nondominated_ranks
from evohub.evolve.search import Log, Outcome, run_stage
from evohub.pipeline.report import plot_front
from evohub.spec import load, load_job

JOB = """\
evohub_job: 1
name: tiny
seed: 3
base_model: {{path: base}}
sources:
  - {{name: one, path: ft1}}
  - {{name: two, path: ft2}}
dtype: float32
tokenizer_source: base
parameter_space:
  method: linear
  layer_groups: 2
  weight: {{bounds: [0, 1]}}
  optimizer: {optimizer}
fitness:
  task: {task}
  data: {{path: data.jsonl, split: "train[:8]"}}
{extra}"""

NSGA2_OPT = "{algorithm: nsga2, popsize: 6, max_evals: 40, objectives: [neg_nll, -tokens]}"


@pytest.fixture
def world(tiny_world: Path) -> Path:
    (tiny_world / "data.jsonl").write_text('{"question": "1+1", "answer_number": 2, "text": "a b"}\n')
    return tiny_world


def job(world: Path, optimizer: str = NSGA2_OPT, task: str = "lm-loss", extra: str = "", name="job.yaml") -> Path:
    p = world / name
    extra = ("  backend: hf\n" if task == "lm-loss" else "") + extra
    p.write_text(JOB.format(optimizer=optimizer, task=task, extra=extra))
    return p


class TwoGoals:
    """Two conflicting goals over the weights: neg_nll wants them high, tokens wants them low;
    the fitness (neg_nll) is what is logged. Candidate 1 of generation 1 fails."""

    def __init__(self):
        self.calls = 0

    def evaluate(self, batch, done):
        for c in batch:
            self.calls += 1
            ws = [w for m in c.recipe.parameter_space.models for w in m.weight]
            if (c.generation, c.index) == (1, 1):
                done(c, Outcome(None, {}, "boom", 0.0))
                continue
            good = -sum((w - 0.9) ** 2 for w in ws)
            cost = sum(w**2 for w in ws)
            done(c, Outcome(good, {"neg_nll": good, "ppl": 1.0, "tokens": cost}, None, 0.0))


def test_nondominated_ranks_on_a_hand_made_set():
    # maximise both: (3, 1), (1, 3) and (2, 2) are the front; (1, 1) is dominated by (2, 2);
    # (0, 0) by everything; (2, 2) twice ties (neither dominates)
    pts = [(3, 1), (1, 3), (2, 2), (1, 1), (0, 0), (2, 2)]
    assert nondominated_ranks(pts) == [0, 0, 0, 1, 2, 0]
    rows = [
        {"generation": 0, "index": i, "fitness": p[0], "error": None, "metrics": {"a": p[0], "b": -p[1]}}
        for i, p in enumerate(pts)
    ]
    rows.append({"generation": 0, "index": 6, "fitness": None, "error": "boom", "metrics": {}})
    front = front_rows(rows, ["a", "-b"])  # b minimised: (a, -b) maximised
    assert [r["index"] for r in front] == [0, 2, 5, 1]  # best fitness first, ties by index
    # the winner rule 'select': '-b' puts the lowest b first (b is minus the second coordinate),
    # 'b' the highest; ties by fitness, then index
    assert [r["index"] for r in front_rows(rows, ["a", "-b"], select="-b")] == [1, 2, 5, 0]
    assert [r["index"] for r in front_rows(rows, ["a", "-b"], select="b")] == [0, 2, 5, 1]


def test_the_winner_rule_picks_on_the_front(world: Path, tmp_path: Path):
    spec = load_job(job(world, NSGA2_OPT.replace("}", ", select: -tokens}")))
    genome, opt = PSGenome.for_job(spec), spec.parameter_space.optimizer
    res = run_stage("ps", genome, opt, TwoGoals(), Log(tmp_path / "l.jsonl"), tmp_path / "c.json", seed=3)
    assert res.front and res.best_fitness == res.front[0]["fitness"]
    tokens = [r["metrics"]["tokens"] for r in res.front]
    assert tokens[0] == min(tokens) and res.best_fitness < max(r["fitness"] for r in res.front)


def test_same_seed_asks_the_same_genotypes():
    def asks(seed: int) -> list:
        o, out = NSGA2([0.5] * 3, 1 / 6, 6, seed, ["a", "-b"]), []
        for _ in range(4):
            X = o.ask()
            out.append(X)
            o.tell(X, [0.0] * 6, [{"a": x[0] + x[1], "b": x[0] ** 2 + x[2]} for x in X])
        return out

    first = asks(7)
    assert first == asks(7) and first != asks(8)
    assert all(len(X) == 6 and all(0 <= v <= 1 for x in X for v in x) for X in first)


def test_nsga2_stage_front_winner_and_exact_resume(world: Path, tmp_path: Path):
    spec = load_job(job(world))
    genome, opt = PSGenome.for_job(spec), spec.parameter_space.optimizer
    ev = TwoGoals()
    full = run_stage("ps", genome, opt, ev, Log(tmp_path / "full.jsonl"), tmp_path / "a.json", seed=3)
    assert ev.calls == full.evaluations == 40 and full.complete
    rows = [json.loads(x) for x in (tmp_path / "full.jsonl").read_text().splitlines()]
    assert [r["fitness"] for r in rows if r["error"]] == [None]
    # the winner: the best fitness on the final front, which holds more than one trade-off
    assert full.front and len(full.front) > 1
    assert full.best_fitness == full.front[0]["fitness"] == max(r["fitness"] for r in full.front)
    ck = json.loads((tmp_path / "a.json").read_text())
    assert ck["objectives"] == ["neg_nll", "-tokens"] and ck["front"]
    assert ck["best_fitness"] == max(r["fitness"] for r in rows if r["fitness"] is not None)
    # killed after 15 rows (inside generation 2) with a torn last line; resumed from the log
    part = tmp_path / "part.jsonl"
    part.write_text("".join((tmp_path / "full.jsonl").read_text().splitlines(keepends=True)[:15]) + '{"stage"')
    ev = TwoGoals()
    res = run_stage("ps", genome, opt, ev, Log(part), tmp_path / "b.json", seed=3)
    assert ev.calls == 40 - 15
    assert part.read_text() == (tmp_path / "full.jsonl").read_text()
    assert res.best.recipe == full.best.recipe
    assert json.loads((tmp_path / "b.json").read_text())["front"] == ck["front"]
    plot_front(rows, tmp_path / "front.png", {"ps": (opt.objectives, full.front[0]["recipe_hash"])})
    assert (tmp_path / "front.png").read_bytes()[:4] == b"\x89PNG"
    other = run_stage("ps", genome, opt, TwoGoals(), Log(tmp_path / "o.jsonl"), tmp_path / "c.json", seed=4)
    assert other.best.genotype != full.best.genotype  # the seed matters


def problems(path: Path) -> list[str]:
    with pytest.raises(SpecError) as e:
        load(path)
    return e.value.problems


@pytest.mark.parametrize(
    "optimizer,task,extra,words",
    [
        ("{algorithm: nsga2, max_evals: 20, objectives: [neg_nll]}", "lm-loss", "", "at least 2 distinct"),
        ("{algorithm: nsga2, max_evals: 20}", "lm-loss", "", "at least 2 distinct"),
        ("{algorithm: nsga2, max_evals: 20, objectives: [acc, ja_rat]}", "ja-math", "", "did you mean 'ja_rate'"),
        ("{max_evals: 20, objectives: [acc, ja_rate]}", "ja-math", "", "cma-es takes no 'objectives'"),
        ("{algorithm: nsga2, max_evals: 20, objectives: [acc, ja_rate], select: ac}", "ja-math", "", "no metric 'ac'"),
        ("{max_evals: 20, select: acc}", "ja-math", "", "cma-es takes no 'select'"),
        ("{algorithm: nsga2, max_evals: 20, sigma0: 0.2, objectives: [acc, ja_rate]}", "ja-math", "", "no 'sigma0'"),
        (
            "{algorithm: nsga2, max_evals: 20, objectives: [acc, ja_rate]}",
            "ja-math",
            "  estimator: race\n",
            "use the full estimator",
        ),
    ],
)
def test_schema_errors(world: Path, optimizer, task, extra, words):
    found = problems(job(world, optimizer, task, extra))
    assert len(found) == 1 and words in found[0], found
    assert "optimizer" in found[0] or "estimator" in found[0]


def test_a_valid_nsga2_spec_and_the_registry(world: Path):
    spec = load_job(job(world, "{algorithm: nsga2, max_evals: 20, objectives: [acc, -ja_rate]}", "ja-math"))
    assert spec.parameter_space.optimizer.objectives == ("acc", "-ja_rate")
    assert OPTIMIZERS.get("nsga2").fields == ("popsize", "objectives", "select")


def test_cma_recommends_its_mean_mapped_into_the_cube_as_pycma_does():
    from evohub.evolve.optimizers.cma import CMAES

    es = CMAES([0.5] * 4, 0.5, 8, seed=3)
    for _ in range(6):  # an optimum outside the cube pulls the mean out of it
        X = es.ask()
        es.tell(X, [-sum((x - 1.3) ** 2 for x in g) for g in X])
    rec = es.recommend()
    assert any(m > 1 for m in es.es.mean) and all(0 <= r <= 1 for r in rec)
    assert rec == pytest.approx(list(es.es.result.xfavorite))
