"""The package's shape, read from its source: imports run one way, posttrain's own imports stand at the
top of modules, and functions stay short enough to read."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "posttrain"


def modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return found


def imported(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The posttrain modules `name` imports, wherever the import stands (function bodies included).
    `from posttrain.x import y` counts as posttrain.x.y where that is a module, else posttrain.x."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("posttrain")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("posttrain"):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                out.add(child if child in known else node.module)
    return out - {name}


def graph() -> dict[str, set[str]]:
    trees = modules()
    known = set(trees)
    return {name: imported(name, tree, known) & known for name, tree in trees.items()}


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def layer(module: str) -> str:
    """The subpackage (or top-level module) a module belongs to: posttrain.stages.opd.loop → stages."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_no_import_cycle_among_posttrain_modules():
    edges = graph()
    assert len(edges) > 40 and sum(map(len, edges.values())) > 100  # the walk really saw the package
    assert cycle(edges) is None, " -> ".join(cycle(edges))


def test_no_import_cycle_between_layers_and_stages_stand_apart():
    """cli → stages → engines / train / losses / data / eval → models → infra → config, one way; and
    neither stage imports the other (what both need is in stages.driver)."""
    edges = graph()
    layers: dict[str, set[str]] = {}
    for source, targets in edges.items():
        layers.setdefault(layer(source), set()).update(layer(t) for t in targets if layer(t) != layer(source))
    assert cycle(layers) is None, " -> ".join(cycle(layers))
    for low in ("config", "infra", "data", "models", "losses", "train", "engines", "eval", "planning"):
        assert not layers.get(low, set()) & {"stages", "cli", "submit"}, (low, layers[low])
    sft = {m for m in edges if m == "posttrain.stages.sft"}
    opd = {m for m in edges if m.startswith("posttrain.stages.opd")}
    assert not any(edges[m] & opd for m in sft) and not any(edges[m] & sft for m in opd)


def test_posttrain_imports_stand_at_the_top_of_modules():
    """Lazy imports are kept for the heavy libraries (transformers, deepspeed, ray, vllm), never for posttrain."""
    late = []
    for name, tree in modules().items():
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("posttrain"):
                        late.append(f"{name}.{fn.name}: from {node.module} import ...")
    assert not late, late


def function_lengths() -> dict[str, int]:
    lengths = {}
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lengths[f"{name}.{node.name}"] = node.end_lineno - node.lineno + 1
    return lengths


def test_functions_stay_short():
    lengths = function_lengths()
    assert lengths["posttrain.stages.sft.run_sft"] < 70 and lengths["posttrain.stages.opd.loop.run_opd"] < 70
    assert not {k: v for k, v in lengths.items() if v > 80}
