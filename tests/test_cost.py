"""The cost model of ``evohub plan --gpu`` (docs/design.md#cost-model): offline, from config.json files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evohub.errors import SpecError
from evohub.evolve.estimators import ESTIMATORS, PlanInputs, planned_items
from evohub.pipeline import cost
from evohub.pipeline.plan import make_plan
from evohub.spec import load_job

REPO = Path(__file__).resolve().parents[1]
#: Mistral-7B's shapes
CFG = {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 4096,
       "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
       "vocab_size": 32000, "max_position_embeddings": 32768, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}  # fmt: skip
ROWS = 100


def _job(tmp_path: Path, fitness: str = "", dfs: bool = False, evals: int = 90, backend: str = "vllm") -> Path:
    for d in ("base", "a", "b"):
        (tmp_path / d).mkdir(exist_ok=True)
        (tmp_path / d / "config.json").write_text(json.dumps(CFG))
    (tmp_path / "fit.jsonl").write_text("".join(json.dumps({"question": f"{i}+1", "answer_number": i + 1}) + "\n"
                                                for i in range(ROWS)))  # fmt: skip
    job = tmp_path / "job.yaml"
    job.write_text(
        "evohub_job: 1\nname: seven\nbase_model: {path: base}\nsources:\n  - {name: a, path: a}\n  - {name: b, path: b}\n"
        f"parameter_space:\n  method: task_arithmetic\n  optimizer: {{popsize: 9, max_evals: {evals}}}\n"
        + ("data_flow_space:\n  a: ps\n  b: a\n  optimizer: {popsize: 10, max_evals: 40}\n" if dfs else "")
        + f"fitness:\n  task: ja-math\n  data: {{path: fit.jsonl}}\n  backend: {backend}\n{fitness}"
    )
    return job


def _cost(job: Path, gpu: str = "h100", max_evals: int | None = None) -> cost.CostPlan:
    spec = load_job(job)
    return cost.estimate_cost(spec, make_plan(spec), gpu, max_evals)


def test_items_come_from_the_estimator_and_tokens_from_the_per_item_figures(tmp_path):
    full = _cost(_job(tmp_path))
    (ps,) = full.stages
    assert full.n_items == ROWS and ps.evaluations == 90 and ps.items == 90 * ROWS
    ja = cost.TASK_TOKENS["ja-math"]
    assert full.prompt_tokens_per_item == ja.prompt and full.generated_tokens_per_item == pytest.approx(1024 * ja.fill)
    assert ps.prompt_tokens == pytest.approx(90 * ROWS * ja.prompt)
    assert ps.generated_tokens == pytest.approx(90 * ROWS * 1024 * ja.fill)
    mini = _cost(_job(tmp_path, "  minibatch: 20\n")).stages[0]
    assert mini.items == 90 * 20 and mini.generated_tokens == pytest.approx(90 * 20 * 1024 * ja.fill)
    irt = _cost(_job(tmp_path, "  estimator: irt\n")).stages[0]
    # calibration: 3 references + generation 0 (9) on every item; then 30 anchors; one audit of 2 on the
    # pool after generation 10, the last (the final audit is that one)
    expected = (3 + 9) * ROWS + (90 - 9) * 30 + 1 * 2 * ROWS
    assert (
        irt.items
        == expected
        == planned_items(
            ESTIMATORS.get("irt").planned_calls(PlanInputs(ROWS, 9, 90, 3), ESTIMATORS.get("irt").settings({}))
        )
    )
    # fewer items, more calls (the calibration's references and the audits): with 100 items a call
    # every call lasts its longest answer, so the items saved save no time
    assert irt.items < ps.items and irt.calls == 90 + 3 + 2 and irt.hours > ps.hours
    # the job's own prompt over local rows is measured (one token a character), with a short answer's fill
    own = _cost(_job(tmp_path, '  prompt: "Q {input} A "\n  max_new_tokens: 10\n'))
    mean_chars = sum(len(f"Q {i}+1 A ") for i in range(ROWS)) / ROWS
    assert own.prompt_tokens_per_item == pytest.approx(mean_chars)
    assert own.generated_tokens_per_item == pytest.approx(10 * ja.own_prompt_fill)


def test_hours_follow_the_roofline_and_scale_with_evaluations(tmp_path):
    job = _job(tmp_path, "  limit: 50\n")
    whole, capped = _cost(job), _cost(job, max_evals=45)
    assert whole.n_items == 50 and "fitness.limit 50" in whole.items_source
    assert capped.stages[0].evaluations == 45 and capped.evaluations == 45
    assert capped.stages[0].generation_hours == pytest.approx(whole.stages[0].generation_hours / 2)
    assert capped.stages[0].merge_hours == pytest.approx(whole.stages[0].merge_hours / 2)
    ps = whole.stages[0]
    spec = load_job(job)
    plan = make_plan(spec)
    P = plan.sources[0].params
    h100 = cost.PROFILES["h100"]
    kv = plan.sources[0].kv_bytes_per_layer_token * 32
    prefill = ps.prompt_tokens * 2 * P / (989e12 * h100.e_prefill)
    # a call of 50 items ends with its longest answer: the budget's 1024 steps of one sequence, each
    # reading the weights, take longer than its 50 answers' tokens at the call's concurrency
    step = 1 / cost.decode_rate(h100, P, "bfloat16", 1, kv, 300 + 1024 / 2)
    items_rate = cost.decode_rate(h100, P, "bfloat16", min(50, ps.batch), kv, 300 + 1024 * 0.35 / 2)
    assert 1024 * step > 50 * 1024 * 0.35 / items_rate
    assert ps.calls == 90
    assert ps.generation_hours * 3600 == pytest.approx(prefill + 90 * 1024 * step)
    assert ps.merge_hours * 3600 == pytest.approx(90 * P * 2 / h100.merge_bps)
    # one sequence: bound by reading the weights; many: by the FLOPs
    assert cost.decode_rate(h100, P, "bfloat16", 1, 0, 0) == pytest.approx(3.35e12 * h100.e_bw / (P * 2))
    assert cost.decode_rate(h100, P, "bfloat16", 10**6, 0, 0) == pytest.approx(989e12 * h100.e_flop / (2 * P))
    # vLLM's concurrency is capped by the KV cache left beside the resident sources
    assert 1 <= ps.batch <= cost.VLLM_MAX_SEQS
    assert _cost(job, "h200").hours < whole.hours < _cost(job, "a100").hours


def test_a_call_is_bound_by_its_items_or_its_longest_answer():
    """A call of many items runs at the engine's concurrency; a small one at its own, and never
    ends before its longest answer; each call merges once (a race merges per block)."""
    h100 = cost.PROFILES["h100"]
    P, kv = 7_241_732_096, 131_072
    many = cost.call_decode_seconds(h100, P, "bfloat16", 1069, 73, 1, kv, 300, 358.4, 1024)
    assert many == pytest.approx(1069 * 358.4 / cost.decode_rate(h100, P, "bfloat16", 73, kv, 300 + 179.2))
    few = cost.call_decode_seconds(h100, P, "bfloat16", 75, 73, 1, kv, 300, 358.4, 1024)
    assert few == pytest.approx(1024 / cost.decode_rate(h100, P, "bfloat16", 1, kv, 300 + 512))
    # a call's items are generated together: 75 items cost no more than 30 when the longest answer rules
    assert cost.call_decode_seconds(h100, P, "bfloat16", 30, 73, 1, kv, 300, 358.4, 1024) == pytest.approx(few)
    # with no tail (every answer at the mean) a small call is its items at its own concurrency
    short = cost.call_decode_seconds(h100, P, "bfloat16", 30, 73, 1, kv, 300, 358.4, 358.4)
    assert short == pytest.approx(30 * 358.4 / cost.decode_rate(h100, P, "bfloat16", 30, kv, 300 + 179.2))
    assert cost.call_decode_seconds(h100, P, "bfloat16", 30, 73, 1, kv, 300, 0.0, 0.0) == 0.0


def test_drafts_shorten_a_calls_longest_answer_and_cost_their_verification(tmp_path):
    """n-gram drafts (docs/design.md#drafted-answers): a call's longest answer takes its measured
    share of steps, each verifying a token and its drafts; a memory-bound step keeps more tokens,
    a compute-bound one fewer (it verifies drafts it throws away)."""
    h100, d = cost.PROFILES["h100"], cost.DRAFTS[4]
    P, kv = 7_241_732_096, 131_072
    assert d.tokens == 4 and d.longest_steps < 1 and 1 < d.per_step <= 5 and d.verified > 1
    few = cost.call_decode_seconds(h100, P, "bfloat16", 75, 73, 1, kv, 300, 358.4, 1024, drafts=d)
    step = cost.step_seconds(h100, P, "bfloat16", 1, kv, 300 + 512, verified=5)
    assert few == pytest.approx(1024 * d.longest_steps * step)
    assert few < cost.call_decode_seconds(h100, P, "bfloat16", 75, 73, 1, kv, 300, 358.4, 1024)
    one = cost.decode_rate(h100, P, "bfloat16", 1, 0, 0)
    assert cost.decode_rate(h100, P, "bfloat16", 1, 0, 0, d) == pytest.approx(d.per_step * one)
    assert cost.decode_rate(h100, P, "bfloat16", 10**6, 0, 0, d) == pytest.approx(
        989e12 * h100.e_flop / (2 * P * d.verified)
    )
    # a run's measured steps a call stand in for the assumed share
    measured = cost.call_decode_seconds(h100, P, "bfloat16", 75, 73, 1, kv, 300, 358.4, 1024, drafts=d,
                                        longest_steps=300)  # fmt: skip
    assert measured == pytest.approx(300 * step)
    # the plan: the job's drafts shorten each call's wait, and say so
    plain = _cost(_job(tmp_path, "  minibatch: 20\n")).stages[0]
    drafted = _cost(_job(tmp_path, "  minibatch: 20\n  draft_tokens: 4\n")).stages[0]
    assert drafted.items == plain.items and drafted.merge_hours == plain.merge_hours
    assert drafted.generation_hours < plain.generation_hours
    assert any("n-gram drafts (4 a step)" in n for n in drafted.notes)
    assert not any("drafts" in n for n in plain.notes)


def test_merges_are_counted_per_call(tmp_path):
    full = _cost(_job(tmp_path)).stages[0]
    race = _cost(_job(tmp_path, "  estimator: race\n")).stages[0]
    mini = _cost(_job(tmp_path, "  estimator: minibatch\n  estimator_options: {size: 20}\n")).stages[0]
    assert full.calls == 90 and mini.calls == 90 + 1 * 2  # one audit, after generation 10: the last
    # 100 rows in blocks of 32: a candidate races on 0.92 of them, a merge per block
    assert race.calls == pytest.approx(90 * 100 * 0.92 / 32 + 2)
    for s in (full, race, mini):
        assert s.merge_hours / s.calls == pytest.approx(full.merge_hours / 90)
    assert race.merge_hours > 2.5 * full.merge_hours


def test_the_data_flow_stage_runs_on_the_fitness_backend(tmp_path):
    h100 = cost.PROFILES["h100"]
    ps, dfs = _cost(_job(tmp_path, dfs=True)).stages  # vllm: the path model, continuous batching
    assert (ps.backend, dfs.backend) == ("vllm", "vllm") and dfs.merge_hours == 0
    assert 1 <= dfs.batch <= cost.VLLM_MAX_SEQS and any("eager" in n for n in dfs.notes)
    spec = load_job(tmp_path / "job.yaml")
    plan = make_plan(spec)
    P = plan.output_params
    prefill = dfs.prompt_tokens * 2 * P / (989e12 * h100.e_prefill)
    kv = plan.sources[0].kv_bytes_per_layer_token * cost._path_layers(plan, plan.sources[0])
    call = cost.call_decode_seconds(h100, P, "bfloat16", ROWS, dfs.batch, 1, kv, 300, 1024 * 0.35, 1024)
    assert dfs.calls == 40 and dfs.generation_hours * 3600 == pytest.approx(prefill + 40 * call)
    hf_ps, hf_dfs = _cost(_job(tmp_path, dfs=True, backend="hf")).stages  # hf: the path executor, slowed
    assert (hf_ps.backend, hf_dfs.backend) == ("hf", "hf")
    assert hf_dfs.evaluations == 40 and hf_dfs.items == 40 * ROWS and hf_dfs.batch == 16
    call = cost.call_decode_seconds(h100, P, "bfloat16", ROWS, 16, 1, kv, 300, 1024 * 0.35, 1024)
    assert hf_dfs.generation_hours * 3600 == pytest.approx(h100.hf_slowdown * (prefill + 40 * call))
    assert hf_dfs.generation_hours > dfs.generation_hours and hf_ps.generation_hours > ps.generation_hours


def test_demo_world_on_the_cpu_profile():
    """The calibration's own case: 1069 demo rows took 1.05 s on this machine (cpu profile)."""
    spec = load_job(REPO / "jobs" / "demo.yaml")
    cp = cost.estimate_cost(spec, make_plan(spec), "cpu")
    assert cp.n_items == 64 and cp.prompt_tokens_per_item == 10 and cp.generated_tokens_per_item == pytest.approx(4.8)
    ps = cp.stages[0]
    seconds_1069 = ps.generation_hours * 3600 / ps.items * 1069
    assert 0.5 < seconds_1069 < 2.1


def test_hub_fitness_rows_come_from_the_recorded_snapshot():
    from evohub.local.snapshot import load_snapshot

    spec = load_job(REPO / "jobs" / "evollm-jp.yaml")
    configs = {n: load_snapshot(r.repo, "model").config for n, r in spec.models()}
    cp = cost.estimate_cost(spec, make_plan(spec, configs=configs), "h100")
    (ps,) = cp.stages
    assert cp.n_items == 1069 and "snapshot" in cp.items_source
    assert ps.items == 1000 * 1069 and ps.backend == "vllm"
    assert 5 < cp.hours < 40  # the figure: ~18 H100-hours
    # calls of 1069 items run at the engine's concurrency; the nightly job's 75-item calls wait on their
    # longest answers, and the plan says how much
    assert not any("longest answer" in n for n in ps.notes)
    fast = load_job(REPO / "jobs" / "evollm-jp-fast.yaml")
    (mini,) = cost.estimate_cost(fast, make_plan(fast, configs=configs), "h100").stages
    assert any(n.startswith("75% of the decoding is calls waiting for their longest answer (1024 tokens, 684 steps)")
               for n in mini.notes)  # fmt: skip
    assert any(n.startswith("n-gram drafts (4 a step)") for n in mini.notes)
    # its loop stop is noted and left out of the estimate (it does not shorten a call's longest answer)
    assert any(n.startswith("loop stop at 96 tokens") for n in mini.notes)
    assert not any(n.startswith("loop stop") for n in ps.notes)


def test_cli_cost_json_refusal_and_cpu(tmp_path, run_cli):
    job = _job(tmp_path, dfs=True)
    code, out, err = run_cli("plan", "--json", "--gpu", "h100", job)
    assert code == 0, err
    doc = json.loads(out)
    assert "gpu" in doc and [s["stage"] for s in doc["cost"]["stages"]] == ["parameter_space", "data_flow_space"]
    assert doc["cost"]["unit"] == "H100-hours" and doc["cost"]["hours"] > 0
    # the pull-request comment: the plan, then the memory and the cost on the nightly runner's card
    code, out, err = run_cli("plan", "--markdown", "--gpu", "h100", job)
    assert code == 0, err
    memory, costs = out.index("**Memory on one h100 (80.0 GiB)**"), out.index("**Cost on one h100 (estimator full)**")
    assert out.startswith("### `seven`") and memory < costs
    assert "| stage | backend | evals | calls | items | prompt tok | generated tok | H100-hours |" in out
    assert "| total |  | 130 | 130 | 13.00K |" in out and "- data_flow_space: every path at its longest" in out
    code, out, err = run_cli("plan", "--json", "--gpu", "cpu", job)
    doc = json.loads(out)
    assert code == 0 and "gpu" not in doc and doc["cost"]["unit"] == "CPU-hours"
    hours = _cost(job).hours
    code, out, err = run_cli("plan", "--gpu", "h100", "--max-hours", f"{hours / 2:.3f}", job)
    assert code == 2 and "cost on one h100" in out
    (line,) = err.strip().splitlines()
    assert line.startswith(f"{job}: estimated {hours:,.2f} H100-hours for 130 evaluations exceeds the runner's")
    assert f"{hours / 2:.3f}".rstrip("0") in line and "fitness.estimator" in line
    code, _, err = run_cli("plan", "--gpu", "h100", "--max-hours", f"{hours * 2:.3f}", job)
    assert code == 0, err
    # the night's cap brings it under the limit
    code, _, err = run_cli("plan", "--gpu", "h100", "--max-hours", f"{hours / 2:.3f}", "--max-evals", "9", job)
    assert code == 0, err
    code, _, err = run_cli("plan", "--gpu", "l40s", "--max-hours", "1", job)
    assert code == 2 and "no cost profile" in err
    code, _, err = run_cli("plan", "--max-hours", "1", job)
    assert code == 2 and "--gpu" in err
    code, _, err = run_cli("plan", "--gpu", "tpu", job)
    assert code == 2 and "unknown GPU" in err


def _measured_run(tmp_path: Path, longest: bool = True, steps: bool = False, fitness: str = "") -> Path:
    """A run of the test job whose ledger holds 3 calls of 10 items: 40 prompt and 200 generated
    tokens an item, the calls' longest answers 250, 300 and 350 tokens (``steps``: 100, 110 and
    120 decode steps)."""
    from evohub.pipeline.rundir import RunDir

    tmp_path.mkdir(exist_ok=True)
    job = _job(tmp_path, fitness)
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    run.write_job(load_job(job), job)
    run.stage_dir("ps")
    rows = [{"g": 0, "i": k, "at": 0, "why": "fitness", "items": list(range(10)), "scores": [1.0] * 10,
             "prompt_tokens": 400, "generated_tokens": 2000, **({"longest_tokens": 250 + 50 * k} if longest else {}),
             **({"steps": 100 + 10 * k} if steps else {})}
            for k in range(3)]  # fmt: skip
    run.scores_path("ps").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run.root


def test_a_runs_measured_figures_replace_the_assumed_ones(tmp_path, run_cli):
    """`plan --measured RUN`: the per-item figures a run's ledger counted stand in for the task's
    assumptions (docs/design.md#cost-model)."""
    run = _measured_run(tmp_path)
    m = cost.measured_figures(run)
    assert (m.prompt, m.generated, m.longest, m.calls, m.task) == (40, 200, 300, 3, "ja-math")
    spec = load_job(tmp_path / "job.yaml")
    assumed = cost.estimate_cost(spec, make_plan(spec), "h100")
    cp = cost.estimate_cost(spec, make_plan(spec), "h100", measured=m)
    assert (cp.prompt_tokens_per_item, cp.generated_tokens_per_item, cp.longest_tokens) == (40, 200, 300)
    assert assumed.longest_tokens == 1024 and "3 calls, 30 items" in cp.figures_source
    ps = cp.stages[0]
    assert ps.generated_tokens == 90 * ROWS * 200 and ps.hours < assumed.stages[0].hours
    # each 100-item call now waits for a 300-token answer, not for the budget
    call = cost.call_decode_seconds(cost.PROFILES["h100"], make_plan(spec).sources[0].params, "bfloat16", ROWS,
                                    ps.batch, 1, make_plan(spec).sources[0].kv_bytes_per_layer_token * 32, 40, 200, 300)  # fmt: skip
    prefill = cost.prefill_seconds(
        cost.PROFILES["h100"], make_plan(spec).sources[0].params, "bfloat16", ps.prompt_tokens
    )
    assert ps.generation_hours * 3600 == pytest.approx(prefill + 90 * call)
    # a ledger from before calls recorded their longest answer keeps the assumed one
    old = cost.measured_figures(_measured_run(tmp_path / "old", longest=False))
    assert (
        old.longest is None and cost.estimate_cost(spec, make_plan(spec), "h100", measured=old).longest_tokens == 1024
    )
    code, out, err = run_cli("plan", "--gpu", "h100", "--measured", str(run), tmp_path / "job.yaml")
    assert code == 0, err
    assert "a call's longest answer 300 (measured in run (3 calls, 30 items))" in " ".join(out.split())
    code, _, err = run_cli("plan", "--measured", str(run), tmp_path / "job.yaml")
    assert code == 2 and "--gpu" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli("plan", "--gpu", "h100", "--measured", str(tmp_path / "empty"), tmp_path / "job.yaml")
    assert (
        code == 2
        and err.strip() == f"evohub: error: --measured {tmp_path / 'empty'}: not a run directory (no job.yaml)"
    )
    (run / "stages" / "ps" / "scores.jsonl").write_text("")
    code, _, err = run_cli("plan", "--gpu", "h100", "--measured", str(run), tmp_path / "job.yaml")
    assert code == 2 and "no scoring calls with tokens" in err
    other = tmp_path / "other.yaml"
    other.write_text(
        (tmp_path / "job.yaml").read_text().replace("task: ja-math", "task: lm-loss").replace("vllm", "hf")
    )
    with pytest.raises(SpecError, match="that run scored ja-math, this job lm-loss"):
        cost.estimate_cost(load_job(other), make_plan(load_job(other)), "h100", measured=m)


def test_a_drafted_runs_steps_carry_to_a_job_with_the_same_drafts(tmp_path):
    """A vLLM run with drafts measured its calls' steps: a plan with the same drafts takes them for
    each call's wait; one without drafts keeps counting steps from tokens."""
    run = _measured_run(tmp_path, steps=True, fitness="  draft_tokens: 4\n")
    m = cost.measured_figures(run)
    assert (m.steps, m.backend, m.draft_tokens, m.longest) == (110, "vllm", 4, 300)
    spec = load_job(tmp_path / "job.yaml")
    plan = make_plan(spec)
    cp = cost.estimate_cost(spec, plan, "h100", measured=m)
    assert cp.longest_steps == 110
    P, h100 = plan.sources[0].params, cost.PROFILES["h100"]
    ps = cp.stages[0]
    call = cost.call_decode_seconds(h100, P, "bfloat16", ROWS, ps.batch, 1, plan.sources[0].kv_bytes_per_layer_token * 32,
                                    40, 200, 300, drafts=cost.DRAFTS[4], longest_steps=110)  # fmt: skip
    assert ps.generation_hours * 3600 == pytest.approx(
        cost.prefill_seconds(h100, P, "bfloat16", ps.prompt_tokens) + 90 * call
    )
    assert "a call's longest answer 300, 110 steps (measured in run" in " ".join(cost.cost_table(cp)[3][0].split())
    # the measured steps decide the wait: from tokens it would be 300 x 0.67 steps a call
    from dataclasses import replace

    unmeasured = cost.estimate_cost(spec, plan, "h100", measured=replace(m, steps=None))
    assert unmeasured.longest_steps is None and ps.generation_hours < unmeasured.stages[0].generation_hours
    (tmp_path / "plain").mkdir()
    plain = load_job(_job(tmp_path / "plain"))
    assert cost.estimate_cost(plain, make_plan(plain), "h100", measured=m).longest_steps is None


def test_measured_figures_leave_out_failed_calls_and_waves_and_fit_the_budget(tmp_path):
    """A failed call scored no items; an audit's call of many items runs in waves, its steps not one
    answer's (the medians ignore it); a job with a smaller budget waits for fewer steps."""
    run = _measured_run(tmp_path, steps=True, fitness="  draft_tokens: 4\n")
    more = [{"g": 1, "i": 0, "at": 1, "why": "fitness", "items": list(range(10)), "scores": None, "error": "OOM",
             "prompt_tokens": 0, "generated_tokens": 0, "steps": 0},
            {"g": 0, "i": 0, "at": 1, "why": "audit", "items": list(range(100)), "scores": [1.0] * 100,
             "prompt_tokens": 4000, "generated_tokens": 20000, "longest_tokens": 400, "steps": 900}]  # fmt: skip
    with open(run / "stages" / "ps" / "scores.jsonl", "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in more))
    m = cost.measured_figures(run)
    # the audit's call (longest 400, 900 steps) is left out of the medians: the 3 fitness calls'
    assert (m.prompt, m.generated, m.calls, m.longest, m.steps) == (40, 200, 4, 300, 110)
    assert "(4 calls, 130 items)" in m.source
    from evohub.evolve.matrix import totals

    assert (
        totals(json.loads(x) for x in (run / "stages" / "ps" / "scores.jsonl").read_text().splitlines())["items"] == 130
    )  # the failed call's 10 items were not scored
    spec = load_job(tmp_path / "job.yaml")
    assert cost.estimate_cost(spec, make_plan(spec), "h100", measured=m).longest_steps == 110
    short = tmp_path / "short.yaml"
    short.write_text(
        (tmp_path / "job.yaml").read_text().replace("  draft_tokens: 4\n", "  draft_tokens: 4\n  max_new_tokens: 200\n")
    )
    cp = cost.estimate_cost(load_job(short), make_plan(load_job(short)), "h100", measured=m)
    assert cp.longest_tokens == 200 and cp.longest_steps == pytest.approx(110 * 200 / 300)


def test_plan_limits_hold_for_every_stage_and_say_what_they_cannot_check(tmp_path, run_cli):
    """--max-evals caps a stage with a wall-time budget too; --max-hours against no estimate, and
    --max-evals or --measured on a GPU without a cost profile, stop in one line; hours of a
    thousand read as such."""
    job = _job(tmp_path)
    timed = tmp_path / "timed.yaml"
    timed.write_text(job.read_text().replace("max_evals: 90", "max_hours: 5"))
    spec = load_job(timed)
    assert cost.estimate_cost(spec, make_plan(spec), "h100").hours is None
    capped = cost.estimate_cost(spec, make_plan(spec), "h100", max_evals=18)
    assert capped.stages[0].evaluations == 18 and capped.stages[0].calls == 18 and capped.hours > 0
    code, _, err = run_cli("plan", "--gpu", "h100", "--max-hours", "11", timed)
    assert code == 2 and err.strip().splitlines() == [
        f"{timed}: --max-hours 11: stage parameter_space has no estimate "
        "(a wall-time budget: its evaluations are known at run time)"
    ]
    code, _, err = run_cli("plan", "--gpu", "h100", "--max-hours", "11", "--max-evals", "18", timed)
    assert code == 0, err
    for flag, value in (("--max-evals", "5"), ("--measured", str(tmp_path))):
        code, _, err = run_cli("plan", "--gpu", "l40s", flag, value, job)
        assert (
            code == 2
            and err.strip() == f"evohub: error: {flag}: no cost profile for l40s (profiles: h100, h200, a100, cpu)"
        )
    # a night capped inside the first stage ends there (`evohub run --max-evals` returns): the
    # data-flow stage waits for a later night
    (tmp_path / "two").mkdir()
    two = load_job(_job(tmp_path / "two", dfs=True))
    night = cost.estimate_cost(two, make_plan(two), "h100", max_evals=50)
    assert [(s.evaluations, s.calls) for s in night.stages] == [(50, 50), (0, 0)]
    assert night.stages[1].notes == ["not reached with --max-evals 50: the run stops in stage parameter_space first"]
    both = cost.estimate_cost(two, make_plan(two), "h100", max_evals=100)
    assert [s.evaluations for s in both.stages] == [90, 40] and both.hours == cost.estimate_cost(
        two, make_plan(two), "h100"
    ).hours
    assert cost._hours(5670.4) == "5,670" and cost._hours(99.5) == "99.5" and cost._hours(0.05) == "0.05 (180 s)"


def test_nightly_jobs_fit_the_runner_and_paper_exact_jobs_keep_full():
    """issue 20: a nightly job's estimate fits the nightly runner's limit (the workflow's own
    --max-hours), and the paper-exact jobs keep the `full` estimator, marked as such."""
    import re

    from evohub.local.snapshot import load_snapshot

    limit = float(re.search(r"--max-hours (\S+)", (REPO / ".github/workflows/nightly.yml").read_text()).group(1))
    nightly = []
    for path in sorted((REPO / "jobs").glob("evo*.yaml")):
        spec = load_job(path)
        if "nightly: false   # paper-exact" in path.read_text():
            assert spec.fitness.estimator == "full" and not spec.nightly, path.name
        if spec.nightly:
            configs = {n: load_snapshot(r.repo, "model").config for n, r in spec.models()}
            cp = cost.estimate_cost(spec, make_plan(spec, configs=configs), "h100")
            assert cp.hours <= limit, (path.name, cp.hours)
            nightly.append(path.name)
    assert nightly  # the nightly workflow has a job to run
