"""Fitness estimators (docs/design.md#fitness-estimators) and the score matrix
(docs/design.md#per-item-scores-and-the-cost-ledger), on a synthetic item world: a candidate's
chance on item j is a known logistic function of its distance to an optimum, so every estimator
can be checked against the true full-set score."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from evohub.errors import RunError, SpecError
from evohub.evolve.estimators import ESTIMATORS, Calls, PlanInputs, planned_items
from evohub.evolve.estimators.irt import anchors_of, fit_items
from evohub.evolve.estimators.race import MEASURED_SHARE, decide, half_width
from evohub.evolve.genome import PSGenome
from evohub.evolve.matrix import ScoreMatrix, totals
from evohub.evolve.search import Log, Outcome, Scoring, run_stage
from evohub.spec import JobSpec

N_ITEMS = 240
TARGET = (0.8, 0.2, 0.6, 0.3)


def spec(estimator: str = "full", evals: int = 60, popsize: int = 6, **options) -> JobSpec:
    return JobSpec.model_validate({
        "evohub_job": 1, "name": "items", "seed": 5, "base_model": {"path": "/x/base"},
        "sources": [{"name": "one", "path": "/x/one"}, {"name": "two", "path": "/x/two"}],
        "dtype": "float32",
        "parameter_space": {"method": "task_arithmetic", "layer_groups": 2, "weight": {"bounds": [0, 1]},
                            "optimizer": {"max_evals": evals, "popsize": popsize}},
        "fitness": {"task": "ja-math", "data": {"path": "/x/fit.jsonl"}, "backend": "hf", "estimator": estimator,
                    "estimator_options": options},
    })  # fmt: skip


class Items:
    """A synthetic evaluator: P(item j right) = σ(4·(1 − 3·d²) − b_j), d the recipe's weights'
    distance to TARGET; the draw is a fixed function of (weights, j), so a call is reproducible."""

    def __init__(self):
        rng = np.random.default_rng(0)
        self.b = rng.normal(0, 1.5, N_ITEMS)
        self.calls: list[tuple] = []

    @staticmethod
    def weights(recipe) -> list[float]:
        G = recipe.parameter_space.layer_groups  # a reference's weight is one number for every group
        return [
            w
            for m in recipe.parameter_space.models
            for w in (m.weight if isinstance(m.weight, tuple) else (m.weight,) * G)
        ]

    def p(self, recipe) -> np.ndarray:
        d2 = sum((w - t) ** 2 for w, t in zip(self.weights(recipe), TARGET, strict=True))
        return 1 / (1 + np.exp(-(4 * (1 - 3 * d2) - self.b)))

    def truth(self, recipe) -> float:
        return float(self.p(recipe).mean())

    def evaluate(self, batch, done):
        for c in batch:
            self.calls.append((c.generation, c.index, c.items))
            p = self.p(c.recipe)
            key = int(abs(hash(tuple(round(w, 9) for w in self.weights(c.recipe)))) % 2**32)
            u = np.random.default_rng(key).random(N_ITEMS)
            items = list(c.items)
            scores = [float(u[j] < p[j]) for j in items]
            cost = {"items": len(items), "prompt_tokens": 10 * len(items), "generated_tokens": 3 * len(items)}
            done(c, Outcome(sum(scores) / len(scores), {"acc_ja": sum(scores) / len(scores)}, None, 0.01, scores, cost))


def run(tmp_path: Path, job: JobSpec, name: str, max_evals: int | None = None, ev: Items | None = None):
    genome = PSGenome.for_job(job)
    fit = job.fitness
    scoring = Scoring(estimator=fit.estimator, options=dict(fit.estimator_options), pool=tuple(range(N_ITEMS)),
                      item_range=(0.0, 1.0), item_binary=True,
                      references=tuple((str(k), r) for k, r in genome.references()),
                      matrix=tmp_path / name / "scores.jsonl")  # fmt: skip
    (tmp_path / name).mkdir(exist_ok=True)
    ev = ev or Items()
    res = run_stage("ps", genome, job.parameter_space.optimizer, ev, Log(tmp_path / name / "c.jsonl"),
                    tmp_path / name / "ck.json", seed=job.seed, max_evals=max_evals, scoring=scoring)  # fmt: skip
    return res, ev


def lines(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k != "seconds" and not k.endswith("_s")}
            for x in path.read_text().splitlines()]  # fmt: skip


def test_hoeffding_serfling_bound_closes_on_the_whole_pool():
    widths = [half_width(n, 200, 1.0, 10, 7, 0.05) for n in (10, 50, 100, 199, 200)]
    assert widths == sorted(widths, reverse=True) and widths[-1] == 0.0
    assert widths[0] == pytest.approx(math.sqrt((1 - 9 / 200) * math.log(2 * 10 * 7 / 0.05) / 20))


def test_race_decisions_reject_only_the_surely_worse():
    mean = {0: 0.9, 1: 0.85, 2: 0.5, 3: 0.1}
    assert decide(mean, 0.1, slots=2) == {0: "accepted", 1: "accepted", 2: "rejected", 3: "rejected"}
    assert decide(mean, 0.3, slots=2) == {3: "rejected"}  # 0.1 + .3 < 0.85 - .3 and 0.9 - .3: two better
    assert decide(mean, 0.5, slots=2) == {}


@pytest.mark.parametrize("estimator", ["minibatch", "race", "irt", "gmp-irt"])
def test_cheaper_estimators_score_less_and_pick_the_winner_on_full_scores(tmp_path, estimator):
    job = spec(estimator, evals=60, **({"size": 24} if estimator == "minibatch" else {}))
    res, ev = run(tmp_path, job, estimator)
    full, _ = run(tmp_path, spec("full", evals=60), "full")
    m = ScoreMatrix(tmp_path / estimator / "scores.jsonl")
    share = m.cost()["items"] / ScoreMatrix(tmp_path / "full" / "scores.jsonl").cost()["items"]
    assert share < {"minibatch": 0.4, "race": 0.9, "irt": 0.5, "gmp-irt": 0.5}[estimator]  # audits, calibration
    # the winner is a candidate scored on every item, its fitness the full-set mean (not an estimate)
    assert res.ranked and res.best_fitness == pytest.approx(res.ranked[0]["full"])
    assert m.full_score(res.best.generation, res.best.index, list(range(N_ITEMS))) == res.best_fitness
    # and it is good: close to what scoring everything found
    assert ev.truth(res.best.recipe) > full.best_fitness - 0.1
    ck = json.loads((tmp_path / estimator / "ck.json").read_text())
    assert ck["cost"] == totals(m.rows) and ck["estimator"] == estimator and ck["audited"]


class Floor(Items):
    """The same world near its floor: every chance scaled down (by 0.1, about 1 right of 24 items)."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def p(self, recipe) -> np.ndarray:
        return super().p(recipe) * self.scale


def test_a_stage_says_when_its_items_are_too_few_to_rank_its_candidates(tmp_path, caplog):
    blind = re.compile(r"in generations (\d+)-(\d+) its candidates got ([\d.]+) of their 24 items right on average: "
                       r"too few to rank them")  # fmt: skip
    with caplog.at_level("WARNING", logger="evohub"):
        run(tmp_path, spec("minibatch", evals=60, size=24), "floor-mb", ev=Floor(0.1))
    said = [m for r in caplog.records if (m := blind.search(r.getMessage()))]
    assert len(said) == 1  # once, for the third generation in a row under 2 right each
    first, last, right = int(said[0][1]), int(said[0][2]), float(said[0][3])
    assert last - first == 2 and 1.0 <= right < 2.0
    caplog.clear()
    with caplog.at_level("WARNING", logger="evohub"):
        run(tmp_path, spec("minibatch", evals=60, size=24), "twice-mb", ev=Floor(0.2))  # 2 right or more each
        run(tmp_path, spec("full", evals=60), "floor-full", ev=Floor(0.1))  # as few right, but on every item
        run(tmp_path, spec("minibatch", evals=60, size=24), "mid-mb")  # the ordinary world: many right
    assert not [r for r in caplog.records if blind.search(r.getMessage())]


@pytest.mark.parametrize("estimator", ["minibatch", "race", "irt"])
def test_resume_in_capped_calls_and_after_a_crash_is_bit_identical(tmp_path, estimator):
    job = spec(estimator, evals=48, **({"size": 24} if estimator == "minibatch" else {}))
    run(tmp_path, job, "once")
    for _ in range(6):  # the same run in capped calls
        res, _ = run(tmp_path, job, "capped", max_evals=9)
        if res.complete:
            break
    assert res.complete
    assert lines(tmp_path / "capped" / "c.jsonl") == lines(tmp_path / "once" / "c.jsonl")
    assert lines(tmp_path / "capped" / "scores.jsonl") == lines(tmp_path / "once" / "scores.jsonl")
    # a crash inside generation 3: both files cut, the matrix's last row torn
    crash = tmp_path / "crash"
    crash.mkdir()
    log_rows = (tmp_path / "once" / "c.jsonl").read_text().splitlines(keepends=True)
    (crash / "c.jsonl").write_text("".join(r for r in log_rows if json.loads(r)["generation"] < 3))
    calls = (tmp_path / "once" / "scores.jsonl").read_text().splitlines(keepends=True)
    cut = max(k for k, r in enumerate(calls) if json.loads(r)["at"] == 3) - 1
    (crash / "scores.jsonl").write_text("".join(calls[:cut]) + calls[cut][:40])
    res, ev = run(tmp_path, job, "crash")
    assert lines(crash / "c.jsonl") == lines(tmp_path / "once" / "c.jsonl")
    assert lines(crash / "scores.jsonl") == lines(tmp_path / "once" / "scores.jsonl")
    assert len(ev.calls) == len(calls) - cut  # only the lost calls were scored again


def test_race_tells_every_rejected_candidate_less_than_every_parent(tmp_path):
    run(tmp_path, spec("race", evals=30, block=16), "r")
    rows = [json.loads(x) for x in (tmp_path / "r" / "c.jsonl").read_text().splitlines()]
    for g in {r["generation"] for r in rows}:
        gen = [r for r in rows if r["generation"] == g]
        rejected = [r.get("tell", r["fitness"]) for r in gen if r["metrics"]["race"] == "rejected"]
        kept = [r.get("tell", r["fitness"]) for r in gen if r["metrics"]["race"] != "rejected"]
        assert rejected and kept and max(rejected) < min(kept)
    assert any(r["items"] < N_ITEMS for r in rows if r["metrics"]["race"] == "rejected")  # stopped early


def test_irt_predicts_held_out_models_from_their_anchors():
    from evohub.evolve.estimators.irt import _sigmoid, ability, population

    rng = np.random.default_rng(1)
    theta, alpha, beta = rng.normal(0, 1, 60), rng.lognormal(0, 0.3, 400), rng.normal(0, 1.2, 400)
    Y = (rng.random((60, 400)) < 1 / (1 + np.exp(-(np.outer(theta, alpha) - beta)))).astype(float)
    fitted, a, b = fit_items(Y[:40], 1, seed=0)
    assert np.corrcoef(fitted[:, 0], theta[:40])[0, 1] > 0.95 and np.corrcoef(b, beta)[0, 1] > 0.9
    pos, w = anchors_of(b, 50, np.random.default_rng(0))
    assert len(pos) == len(set(pos)) == 50 and w.sum() == pytest.approx(1.0)
    ranks = np.argsort(np.argsort(b))[pos]  # one anchor from each stratum of 8 items in difficulty order
    assert sorted(ranks // 8) == list(range(50))
    rest = np.setdiff1d(np.arange(400), pos)
    err, blind = [], []
    for y in Y[40:]:  # held-out models, seen on the anchors only
        t = ability(y[pos], a[pos], b[pos], prior=population(fitted))
        est = 50 / 400 * y[pos].mean() + (1 - 50 / 400) * _sigmoid(a[rest] @ t - b[rest]).mean()
        err.append(abs(est - y.mean()))
        blind.append(abs(Y[:40].mean() - y.mean()))  # the calibration models' mean: no anchors used
    assert np.mean(err) < 0.045 and np.mean(err) < 0.4 * np.mean(blind), (np.mean(err), np.mean(blind))


def test_spec_checks_estimator_options_and_what_the_task_scores():
    with pytest.raises(Exception, match="no option 'anchor'"):
        spec("irt", anchor=10)
    with pytest.raises(Exception, match="delta must be at most 1"):
        spec("race", delta=2)
    lm = spec("irt").model_dump(mode="json") | {}
    lm["fitness"] = lm["fitness"] | {"task": "lm-loss"}
    with pytest.raises(Exception, match="irt needs right/wrong item scores"):
        JobSpec.model_validate(lm)
    mb = spec("race").model_dump(mode="json")
    mb["fitness"]["minibatch"] = 10
    with pytest.raises(Exception, match="drop 'minibatch'"):
        JobSpec.model_validate(mb)
    two = spec("gmp-irt").model_dump(mode="json")
    two["data_flow_space"] = {"a": "ps", "b": "two", "optimizer": {"max_evals": 8}}
    with pytest.raises(Exception, match="gmp-irt combines the sources' abilities"):
        JobSpec.model_validate(two)  # its data-flow stage would fail after the whole PS stage
    JobSpec.model_validate(two | {"fitness": two["fitness"] | {"estimator": "irt"}})
    assert SpecError  # the loader turns these into one line each (tests/test_spec.py)


def test_a_stage_without_the_reference_models_an_estimator_needs_is_refused(tmp_path):
    job = spec("gmp-irt")
    genome = PSGenome.for_job(job)
    scoring = Scoring(estimator="gmp-irt", pool=tuple(range(N_ITEMS)), item_range=(0.0, 1.0),
                      references=genome.references()[:1], matrix=tmp_path / "s.jsonl")  # fmt: skip
    ev = Items()
    with pytest.raises(RunError, match="gmp-irt needs 2 reference models"):
        run_stage("ps", genome, job.parameter_space.optimizer, ev, Log(tmp_path / "c.jsonl"), tmp_path / "ck.json",
                  seed=0, scoring=scoring)  # fmt: skip
    assert ev.calls == []


def test_planned_calls_follow_each_estimator():
    """A call is one merge and its items: the cost model's unit (docs/design.md#cost-model)."""
    inputs = PlanInputs(n_items=1069, popsize=9, evaluations=1000, references=4)
    settings = lambda name: ESTIMATORS.get(name).settings({})  # noqa: E731
    calls = lambda name, inp=inputs: ESTIMATORS.get(name).planned_calls(inp, settings(name))  # noqa: E731
    audits = Calls((111 // 10 + 1) * 2, 1069)
    assert calls("full") == [Calls(1000, 1069)]
    mb = PlanInputs(n_items=1069, popsize=9, evaluations=1000, references=4, minibatch=200)
    assert calls("full", mb) == [Calls(1000, 200)]
    assert calls("irt") == [Calls(4 + 9, 1069), Calls(1000 - 9, 30), audits]
    assert planned_items(calls("irt")) == (4 + 9) * 1069 + (1000 - 9) * 30 + 24 * 1069
    assert calls("minibatch") == [Calls(1000, 100), audits]
    # 100 generations: an audit after every 10th, the last one the final audit too; a night capped
    # at 500 evaluations audits after generations 10-50 only
    whole = PlanInputs(n_items=1069, popsize=10, evaluations=1000, references=4)
    assert calls("minibatch", whole)[1] == Calls(10 * 2, 1069)
    night = PlanInputs(n_items=1069, popsize=10, evaluations=500, references=4, complete=False)
    assert calls("minibatch", night)[1] == Calls(5 * 2, 1069)
    # a race merges its candidate again for every block it races on
    (blocks, race_audits) = calls("race")
    assert blocks.items == 32 and race_audits == audits
    assert blocks.count == pytest.approx(1000 * 1069 * MEASURED_SHARE / 32)


def test_the_matrix_drops_a_torn_row_and_answers_replayed_calls(tmp_path):
    m = ScoreMatrix(tmp_path / "s.jsonl")
    m.append({"g": 0, "i": 1, "at": 0, "why": "fitness", "items": [3, 4], "scores": [1.0, 0.0], "error": None,
              "prompt_tokens": 7, "generated_tokens": 2, "longest_tokens": 2, "seconds": 0.5})  # fmt: skip
    with open(tmp_path / "s.jsonl", "a") as f:
        f.write('{"g": 0, "i": 2, "at"')
    again = ScoreMatrix(tmp_path / "s.jsonl")
    assert len(again.rows) == 1 and again.get(0, 1, (3, 4))["scores"] == [1, 0] and again.get(0, 1, (4, 3)) is None
    assert again.known(0, 1) == {3: 1, 4: 0} and again.full_score(0, 1, [3, 4]) == 0.5
    assert again.cost() == {"calls": 1, "items": 2, "prompt_tokens": 7, "generated_tokens": 2, "longest_tokens": 2,
                            "steps": 0, "merge_s": 0.0, "generate_s": 0.0, "score_s": 0.0, "seconds": 0.5}  # fmt: skip


def test_the_hf_backend_counts_the_tokens_it_read_and_generated():
    """The demo world's tokenizer is one token a character: a row's generated tokens are its answer's
    characters and the end of sequence, or the whole budget when it never ends."""
    import torch

    from evohub.local.world import target_rows
    from evohub.score.backends.hf import HFBackend
    from evohub.score.tasks import get_task

    world = Path(__file__).resolve().parents[1] / "jobs" / "demo-world"
    be = HFBackend.load(world / "math", "cpu", torch.float32, batch_size=16)
    rows = target_rows(40, seed=3)
    task = get_task("ja-math", prompt="問 {input} 答 ", stop=[])
    scored = task.run(be, rows, max_new_tokens=8)
    prompts = [len(be.tokenizer("問 " + r["question"] + " 答 ").input_ids) for r in rows]
    assert be.usage["prompt_tokens"] == sum(prompts)
    lengths = [min(len(s["output"]) + 1, 8) for s in scored.samples]
    assert be.usage["generated_tokens"] == sum(lengths)
    assert be.usage["longest_tokens"] == max(lengths) and min(lengths) < max(lengths)
    # decode steps: each batch (16 rows, in order of prompt length) runs to its longest answer
    order = sorted(range(len(rows)), key=lambda i: prompts[i])
    assert be.usage["steps"] == sum(max(lengths[i] for i in order[s : s + 16]) for s in range(0, len(rows), 16))
    assert be.usage["generate_s"] > 0 and scored.items == [
        float(s["correct"] and s["p_ja"] > 0.5) for s in scored.samples
    ]
    assert sum(scored.items) / len(rows) == scored.metrics["acc_ja"]


def test_each_call_records_its_own_longest_answer(tmp_path):
    """A call decodes as many steps as its longest answer (docs/design.md#cost-model): the worker
    records that per call, not the longest the backend has ever generated."""
    from evohub.evolve.genome import PSGenome
    from evohub.pipeline.job import start_run
    from evohub.pipeline.pull import pull
    from evohub.pipeline.stages import worker_spec

    spec, run = start_run(Path(__file__).resolve().parents[1] / "jobs" / "demo.yaml", tmp_path / "run", resume=False)
    pull(spec, run)
    worker = worker_spec(spec, run, "ps").build()
    genome = PSGenome.for_job(spec, pin=run.pinned)
    x = genome.x0()
    many = worker.evaluate(x, genome.decode(x), items=range(40))
    assert many.cost["items"] == 40 and many.cost["generated_tokens"] / 40 < many.cost["longest_tokens"] <= 8
    shorter = []
    for i in range(40):
        one = worker.evaluate(x, genome.decode(x), items=[i])
        assert one.cost["longest_tokens"] == one.cost["generated_tokens"] == one.cost["steps"]
        shorter += [i] if one.cost["generated_tokens"] < many.cost["longest_tokens"] else []
    assert shorter  # some answer of the 40 was shorter than their longest: it was measured afresh


def test_the_winner_pools_each_finalists_fitness_and_validation_items():
    """A 64-item validation split must not overrule 1069 full-set fitness items; an estimate (no
    fitness items) and a start point whose fitness failed are judged on validation alone."""
    from evohub.pipeline.stages import pick_winner, pooled

    def row(name, fitness, n_fit, validation, n_val):
        return {"name": name, "fitness": fitness, "fitness_items": n_fit, "validation": validation,
                "validation_items": n_val, "items": n_fit + n_val}  # fmt: skip

    full_set = [row("a", 0.45, 1069, 0.30, 64), row("b", 0.40, 1069, 0.40, 64)]
    assert pooled(full_set[0]) == pytest.approx((0.45 * 1069 + 0.30 * 64) / 1133)
    assert pick_winner(full_set, "none")["name"] == "a"  # validation alone would pick b
    estimates = [row("a", 0.50, 0, 0.30, 450), row("b", 0.40, 0, 0.40, 450)]  # minibatch estimates: no weight
    assert pick_winner(estimates, "none")["name"] == "b"
    few = [row("a", 0.50, 20, 0.30, 450), row("b", 0.40, 20, 0.40, 450)]  # 450 validation items outweigh 20
    assert pick_winner(few, "none")["name"] == "b"
    start = [row("a", 0.45, 1069, 0.30, 64), row("x0", None, 0, 0.50, 64)]
    assert pick_winner(start, "none")["name"] == "x0"  # no fitness (it failed): validation alone
    start = [row("a", 0.45, 1069, 0.30, 64), row("x0", 0.445, 1069, 0.40, 64)]
    assert pick_winner(start, "none")["name"] == "x0"
    old = [{"name": "a", "fitness": 0.45, "validation": 0.30, "items": 64},
           {"name": "b", "fitness": 0.40, "validation": 0.40, "items": 64}]  # fmt: skip
    assert pick_winner(old, "none")["name"] == "b"  # a validation.json from before: validation alone
    with pytest.raises(RunError, match="none scored"):
        pick_winner([row("a", 0.4, 10, None, 0)], "none scored")


@pytest.mark.parametrize("estimator", ["full", "minibatch", "irt"])
def test_the_plan_counts_the_calls_a_whole_and_a_capped_stage_make(tmp_path, estimator):
    """`evohub plan --max-evals N` plans a night as `evohub run --max-evals N` runs it: ``full`` stops
    at the cap, an audited estimator ends the generation the cap falls in and audits only at the
    stage's end (after generation 10 here: one audit, which is the final one)."""
    from types import SimpleNamespace

    from evohub.pipeline.cost import _stage_calls

    job = spec(estimator, evals=60, **({"size": 24} if estimator == "minibatch" else {}))
    st = SimpleNamespace(name="parameter_space", evaluations=60, popsize=6)
    audit_rows = {}
    for name, cap in (("whole", None), ("capped", 9)):
        run(tmp_path, job, name, max_evals=cap)
        made = lines(tmp_path / name / "scores.jsonl")
        evals, planned, _ = _stage_calls(job, st, N_ITEMS, "", cap, references=3)
        assert evals == len(lines(tmp_path / name / "c.jsonl"))
        audits = planned.pop() if ESTIMATORS.get(estimator).audited else Calls(0, N_ITEMS)
        scored = [r for r in made if r["why"] != "audit"]
        assert sorted((c.count, c.items) for c in planned if c.count) == sorted(
            {(sum(len(r["items"]) == n for r in scored), n) for r in scored for n in [len(r["items"])]}
        )
        # an audit scores a candidate's items not yet scored: at most the pool
        audited = [r for r in made if r["why"] == "audit"]
        assert len(audited) == audits.count and all(len(r["items"]) <= audits.items for r in audited)
        audit_rows[name] = len(audited)
    assert audit_rows == ({"whole": 2, "capped": 0} if ESTIMATORS.get(estimator).audited else {"whole": 0, "capped": 0})


def _timed(estimator: str, **options) -> JobSpec:
    """A stage its time budget ends: 0.3 s of evaluation time, each synthetic call 0.01 s."""
    d = spec(estimator, evals=600, **options).model_dump(mode="json")
    d["parameter_space"]["optimizer"] |= {"max_evals": None, "max_hours": 0.3 / 3600}
    return JobSpec.model_validate(d)


@pytest.mark.parametrize("estimator", ["full", "minibatch"])
def test_a_stage_its_time_budget_ended_resumes_as_it_ran(tmp_path, estimator):
    """A process that dies after the stage (scoring the finalists, say) resumes it: the generations
    replay their recorded time, so the budget ends the stage where it did, nothing is scored
    again, and the optimiser's answer is the same (the whole matrix's time, counted from
    generation 0, once ended it there: no candidate, or an untold optimiser's mean)."""
    job = _timed(estimator, **({"size": 24, "audit_every": 4} if estimator == "minibatch" else {}))
    first, _ = run(tmp_path, job, "r")
    assert 2 < first.generations < 100
    again, ev = run(tmp_path, job, "r")
    assert not ev.calls
    assert (again.best_fitness, again.best.genotype, again.generations, again.recommended) == (
        first.best_fitness, first.best.genotype, first.generations, first.recommended)  # fmt: skip
    if estimator == "minibatch":  # the final audit the budget called is in the checkpoint
        ck = json.loads((tmp_path / "r" / "ck.json").read_text())
        assert ck["best_fitness"] == first.best_fitness and ck["cost"] == totals(
            json.loads(x) for x in (tmp_path / "r" / "scores.jsonl").read_text().splitlines()
        )
        assert set(ck["audited"]) == {f"{r['generation']}/{r['index']}" for r in first.ranked}


class _RefsFail(Items):
    """A world whose reference models cannot be scored (out of memory, a broken source)."""

    def evaluate(self, batch, done):
        for c in batch:
            if c.generation < 0:
                done(c, Outcome(None, {}, "CUDA out of memory", 0.01, None, {}))
            else:
                super().evaluate([c], done)


def test_gmp_irt_without_a_scored_reference_stops_in_one_line(tmp_path):
    with pytest.raises(RunError, match="gmp-irt combines the reference models' abilities, and no reference call"):
        run(tmp_path, spec("gmp-irt", evals=30), "g", ev=_RefsFail())


def test_the_too_few_right_warning_counts_what_irt_candidates_answered(tmp_path, caplog):
    """IRT's fitness is a predicted full-set accuracy; the warning counts the anchors answered right
    (at 0.15 of the world's chances generations 2-3 answer 2.3 of 24: no warning; at 0.1 generations
    4-6 answer 1.3, 1.5, 1.0)."""
    blind = re.compile(r"in generations (\d+)-(\d+) its candidates got ([\d.]+) of their (\d+) items right")
    for scale, warned in ((0.15, False), (0.1, True)):
        caplog.clear()
        with caplog.at_level("WARNING", logger="evohub"):
            run(tmp_path, spec("irt", evals=60, anchors=24), f"i{scale}", ev=Floor(scale))
        right: dict[int, list[float]] = {}
        for r in ScoreMatrix(tmp_path / f"i{scale}" / "scores.jsonl").rows:
            if r["why"] == "fitness" and r["g"] > 0:  # generation 0 is scored on every item
                right.setdefault(r["g"], []).append(sum(r["scores"]))
        said = [m for r in caplog.records if (m := blind.search(r.getMessage()))]
        assert len(said) == warned
        for m in said:
            first, last = int(m[1]), int(m[2])
            assert last - first == 2 and all(sum(right[g]) / len(right[g]) < 2 for g in range(first, last + 1))
            assert float(m[3]) == pytest.approx(sum(right[last]) / len(right[last]), abs=0.05) and m[4] == "24"


class _BigCallsFail(Items):
    """Calls of more than 100 items fail (an audit's whole-pool call out of memory); minibatches fit."""

    def evaluate(self, batch, done):
        for c in batch:
            if len(c.items) > 100:
                done(c, Outcome(None, {}, "CUDA out of memory", 0.01, None, {}))
            else:
                super().evaluate([c], done)


def test_a_stage_whose_audits_all_failed_says_so(tmp_path):
    with pytest.raises(RunError, match="no audit scored a candidate on the whole item pool"):
        run(tmp_path, spec("minibatch", evals=30, size=24), "m", ev=_BigCallsFail())
