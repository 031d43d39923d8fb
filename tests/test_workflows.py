"""The recipe-PR workflow's commands, run here exactly as the workflow runs them.

`act` cannot run the workflow offline (its setup-python step is a remote action), so this test
executes every `run:` step of .github/workflows/recipe-pr.yml in order, with GitHub's shell
options (`bash -eo pipefail`), in a clone where a pull request added a job spec. The one step
left out installs evohub, which this test environment already has (running it would re-point the
shared venv's editable install at the temporary clone).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _git(*args: str, cwd: Path) -> str:
    env = os.environ | {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env=env).stdout.strip()


def test_recipe_pr_workflow_runs_its_commands(tmp_path):
    wf = yaml.safe_load((REPO / ".github/workflows/recipe-pr.yml").read_text())
    job = wf["jobs"]["plan"]
    assert job["permissions"] == {"contents": "read", "pull-requests": "write"} and wf["permissions"] == {
        "contents": "read"
    }
    assert True in wf and "pull_request" in wf[True] and "pull_request_target" not in wf[True]  # `on:` parses as True
    clone = tmp_path / "clone"
    shutil.copytree(REPO, clone, ignore=shutil.ignore_patterns(".venv*", ".git", "runs", ".cache", "bench"))
    _git("init", "-q", cwd=clone)
    _git("add", "-A", cwd=clone)
    _git("commit", "-qm", "base", cwd=clone)
    base = _git("rev-parse", "HEAD", cwd=clone)
    spec = (clone / "jobs/evollm-jp-a.yaml").read_text().replace("name: evollm-jp-a-v1-7b", "name: evollm-jp-b-v1-7b")
    (clone / "jobs/evollm-jp-b.yaml").write_text(spec)
    _git("add", "-A", cwd=clone)
    _git("commit", "-qm", "a pull request adds a job", cwd=clone)
    summary = tmp_path / "summary.md"
    env = os.environ | {k: str(v) for k, v in job.get("env", {}).items()}
    env |= {
        "BASE_SHA": base,
        "GITHUB_STEP_SUMMARY": str(summary),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    ran = []
    for step in job["steps"]:
        if "run" not in step or step.get("name", "").startswith("install"):
            continue
        out = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]], cwd=clone, env=env,
                             capture_output=True, text=True)  # fmt: skip
        assert out.returncode == 0, f"step {step.get('name')!r} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
        ran.append(step.get("name"))
    assert ran == ["changed job specs", "validate", "plan", "wiring on the tiny world"]
    assert (clone / "changed.txt").read_text().split() == ["jobs/evollm-jp-b.yaml"]
    plan = (clone / "plan.md").read_text()
    assert (
        plan.startswith("<!-- evohub-plan -->") and "jobs/evollm-jp-b.yaml" in plan
    )  # offline: the plan says it failed
    assert summary.read_text() == plan


def test_nightly_installs_from_the_lock_without_a_token_and_rehearses_before_the_gpu_step():
    """GPU runners install every package from the hash-pinned lock before a token is in the
    environment, and each job is rehearsed (against the live Hub's metadata) before it evolves."""
    import re
    import tomllib

    wf = yaml.safe_load((REPO / ".github/workflows/nightly.yml").read_text())
    for name in ("evolve", "publish"):
        job = wf["jobs"][name]
        assert "HF_TOKEN" not in job.get("env", {}), name  # only the steps that need it get it
        steps = job["steps"]
        install = next(i for i, s in enumerate(steps) if "pip install" in s.get("run", ""))
        assert (
            "--require-hashes -r .ci/lock-gpu.txt" in steps[install]["run"]
            and "--no-deps -e ." in steps[install]["run"]
        )
        assert all("HF_TOKEN" not in s.get("env", {}) for s in steps[: install + 1])
    steps = wf["jobs"]["evolve"]["steps"]
    order = [
        i for i, s in enumerate(steps) if "evohub rehearse" in s.get("run", "") or "evohub run" in s.get("run", "")
    ]
    assert (
        "rehearse" in steps[order[0]]["run"]
        and "--live" in steps[order[0]]["run"]
        and "evohub run" in steps[order[1]]["run"]
    )
    lock = (REPO / ".ci/lock-gpu.txt").read_text()
    pinned = {m.group(1).lower().replace("_", "-") for m in re.finditer(r"^([A-Za-z0-9_.-]+)==\S+ \\$", lock, re.M)}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + [
        d for extra in ("eval", "vllm", "ray", "diffusion") for d in project["optional-dependencies"][extra]
    ]
    for dep in wanted:
        name = re.match(r"[A-Za-z0-9_.-]+", dep).group(0).lower().replace("_", "-")
        assert name in pinned, f"{name} is not pinned in .ci/lock-gpu.txt (make lock-gpu)"
    assert re.search(r"^vllm==0\.\d+\.\d+ \\$", lock, re.M) and "--hash=sha256:" in lock
