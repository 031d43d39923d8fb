"""docs/design.md is the design of record: its anchors exist, the import graph follows its layer
table without cycles, the files it names exist, and long functions say why they are long."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DESIGN = REPO / "docs" / "design.md"

#: docs/design.md#layout, as data: module prefix -> layer (the longest matching prefix wins)
LAYERS = {
    "evohub": 0, "evohub.errors": 0, "evohub.registry": 0, "evohub.files": 0, "evohub.progress": 0, "evohub.threads": 0,
    "evohub.hub": 1, "evohub.models": 1, "evohub.merging": 1, "evohub.merging.methods": 1, "evohub.merging.arch": 1,
    "evohub.score": 1, "evohub.score.tasks": 1, "evohub.score.suites": 1, "evohub.score.backends": 1,
    "evohub.score.metrics": 1, "evohub.score.judges": 1, "evohub.evolve": 1, "evohub.evolve.optimizers": 1, "evohub.evolve.estimators": 1,
    "evohub.spec": 2,
    "evohub.merging.kernels": 3, "evohub.merging.io": 3, "evohub.merging.ps": 3, "evohub.merging.dfs": 3,
    "evohub.merging.path": 3, "evohub.merging.diffusion": 3, "evohub.merging.lora": 3, "evohub.merging.build": 3, "evohub.merging.export": 3, "evohub.merging.operators": 3,
    "evohub.score.backends.hf": 4, "evohub.score.backends.vllm": 4, "evohub.score.backends.vllm_path": 4,
    "evohub.score.backends.vllm_path_model": 4, "evohub.score.backends.vllm_merge": 4, "evohub.score.backends.diffusion": 4, "evohub.score.data": 4,
    "evohub.score.lmeval": 4, "evohub.score.evaluate": 4,
    "evohub.evolve.genome": 5, "evohub.evolve.search": 5, "evohub.evolve.pool": 5, "evohub.evolve.worker": 5,
    "evohub.pipeline": 6,
    "evohub.api": 7, "evohub.local": 7, "evohub.cli": 7, "evohub.__main__": 7,
}  # fmt: skip


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors() -> set[str]:
    return {slug(line.lstrip("#")) for line in DESIGN.read_text().splitlines() if line.startswith("#")}


def test_every_cited_anchor_exists():
    cited: dict[str, list[str]] = {}
    files = [*(REPO / "evohub").rglob("*.py"), *(REPO / "tests").rglob("*.py"), *(REPO / "bench").glob("*.py"),
             REPO / "README.md", REPO / "bench" / "README.md"]  # fmt: skip
    for path in files:
        for m in re.finditer(r"docs/design\.md((?:#[\w-]+)(?:,\s*#[\w-]+)*)", path.read_text()):
            for a in re.findall(r"#([\w-]+)", m.group(1)):
                cited.setdefault(a, []).append(str(path.relative_to(REPO)))
    assert len(cited) >= 20  # the code does cite its design
    missing = {a: where for a, where in cited.items() if a not in anchors()}
    assert not missing, f"anchors cited but not in docs/design.md: {missing}"


def _module(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str) -> set[str]:
    """evohub modules ``path`` imports at run time (TYPE_CHECKING blocks left out)."""
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    out = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("evohub")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            if base.startswith("evohub"):
                out.add(base)
                out |= {f"{base}.{a.name}" for a in node.names}  # `from pkg import module`
    return out


def graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in (REPO / "evohub").rglob("*.py")}
    return {m: {i for i in _imports(p, m) if i in modules and i != m} for m, p in modules.items()}


def layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def test_the_import_graph_has_no_cycle_and_reads_top_down():
    g = graph()
    upward = [(a, b) for a, deps in g.items() for b in deps if layer(b) > layer(a)]
    assert not upward, f"imports from a higher layer (docs/design.md#layout): {upward}"
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(g[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(d) :], d]))
            if d not in state:
                visit(d, [*stack, d])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])


def test_a_candidates_life_is_five_files_that_never_call_up():
    text = DESIGN.read_text().split("### A candidate's life", 1)[1].split("\n## ", 1)[0]
    files = re.findall(r"`(evohub/[\w/]+\.py)`", text)
    named = list(dict.fromkeys(f for f in files if not f.startswith("evohub/merging/path")))
    assert len(named) <= 5 and all((REPO / f).exists() for f in named), named
    g = graph()
    for f in named:
        deps = g[_module(REPO / f)]
        assert not [d for d in deps if d.startswith(("evohub.pipeline", "evohub.cli", "evohub.api"))], (f, deps)


def test_long_functions_say_why():
    long = []
    for path in (REPO / "evohub").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if node.end_lineno - node.lineno + 1 > 60 and "over 60 lines" not in (ast.get_docstring(node) or ""):
                long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    assert not long, long
