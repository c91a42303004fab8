"""Imports run one way, down the layers of DESIGN.md; no two packages import each other.

The test parses every module of the package (static ``import`` statements anywhere in the file,
function bodies included, but not ``if TYPE_CHECKING:`` blocks) and fails on an import from a
higher layer or an import cycle between modules, naming the file and the line.
"""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "warmstart"

# bottom to top; a module may import its own layer or any layer below
LAYERS = [
    ("base", ["errors", "config", "episode", "functional", "artifacts"]),
    ("contracts", ["registry", "contracts"]),
    ("world", ["policies", "tasks", "tools"]),
    ("acting", ["rollout"]),
    ("judging", ["rewards", "search"]),
    ("learning", ["init", "learn"]),
    ("engine", ["engine"]),
]
RANK = {name: i for i, (_, names) in enumerate(LAYERS) for name in names}


def unit(module: str) -> str:
    """``warmstart.learn.grpo`` -> ``learn``; ``warmstart.episode`` -> ``episode``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for sub in node.body:
                for n in ast.walk(sub):
                    if hasattr(n, "lineno"):
                        lines.add(n.lineno)
    return lines


def imports_of(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _type_checking_lines(tree)
    out = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.startswith("warmstart")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("warmstart") and node.level == 0:
            out.append((node.module, node.lineno))
            # `from warmstart import x` / `from warmstart.tasks import lotsizing`: a submodule import
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                if (PKG.parent / Path(*sub.split("."))).with_suffix(".py").exists():
                    out.append((sub, node.lineno))
    return out


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def test_every_package_has_a_layer():
    units = {unit(m) for m in MODULES if unit(m) and unit(m) != "__init__"}
    assert units <= set(RANK), f"modules outside the layer table: {sorted(units - set(RANK))}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_the_layers(module):
    path = MODULES[module]
    mine = unit(module)
    if mine == "":  # warmstart/__init__.py: the package's front door may re-export anything
        return
    bad = []
    for target, line in imports_of(path):
        t = unit(target)
        if t == "" or t == mine:
            continue
        if RANK[t] > RANK[mine]:
            bad.append(f"{path.relative_to(PKG.parent)}:{line}: {module} ({LAYERS[RANK[mine]][0]}) imports "
                       f"{target} ({LAYERS[RANK[t]][0]}), a higher layer")
    assert not bad, "\n".join(bad)


def test_no_import_cycles_between_packages():
    """Two units of the same layer (``init`` and ``learn``, ``rewards`` and ``search``) may import one
    another one way only; modules never import each other in a cycle."""
    edges: dict[str, dict[str, str]] = {}
    for module, path in MODULES.items():
        for target, line in imports_of(path):
            if target in MODULES and target != module:
                edges.setdefault(module, {})[target] = f"{path.relative_to(PKG.parent)}:{line}"
    units: dict[tuple[str, str], str] = {}
    for a, targets in edges.items():
        for b, where in targets.items():
            if unit(a) != unit(b) and unit(a) and unit(b):
                units.setdefault((unit(a), unit(b)), where)
    two_way = [f"{a} <-> {b} ({units[(a, b)]} and {units[(b, a)]})" for (a, b) in units if (b, a) in units and a < b]
    assert not two_way, "packages importing each other: " + "; ".join(two_way)

    # module-level cycles (depth-first search)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str):
        state[m] = 1
        stack.append(m)
        for t in edges.get(m, {}):
            if state.get(t) == 1:
                cyc = stack[stack.index(t):] + [t]
                raise AssertionError("import cycle: " + " -> ".join(
                    f"{x} ({edges[x][y]})" for x, y in zip(cyc, cyc[1:])))
            if state.get(t) is None:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(MODULES):
        if state.get(m) is None:
            visit(m)
