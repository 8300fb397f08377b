"""The package's imports form layers that read bottom-up (docs/design.md, "Module map"):
a module imports only modules of its own layer or lower ones, never in a cycle, and a
`detox` import inside a function is allowed only in the entry points."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "detox"

LAYERS = {
    0: ["errors", "atomic", "run_dir", "overrides", "ppo", "eval_metrics", "schema", "dialogue_io"],
    1: ["hub", "plots", "results", "checkpoint", "distributed", "sweep", "compute", "tracking", "preemption", "run_lock",
        "guards"],
    2: ["data", "policy", "reward", "judges", "generation"],
    3: ["rollout", "update", "trainer", "report", "report_files", "evaluation", "sft_trainer", "model_card", "export"],
    4: ["runs"],
    5: ["sft", "summarize", "stages"],
    6: ["cli", "__main__", "sweep_jobs", "sweep_summary", "generate"],
}
LAYER = {module: layer for layer, modules in LAYERS.items() for module in modules}
ENTRY_POINTS = LAYERS[6]


def detox_imports(source: str) -> list[tuple[str, bool]]:
    """(imported detox module, whether the import is inside a function) for every import."""
    tree = ast.parse(source)
    nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f) if n is not f}
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "detox":
                names = [f"detox.{a.name}" for a in node.names]
            else:
                names = [node.module]
        for name in names:
            if name.startswith("detox.") and name.split(".")[1] != "conf":
                found.append((name.split(".")[1], id(node) in nested))
    return found


def import_graph() -> dict[str, list[tuple[str, bool]]]:
    return {p.stem: detox_imports(p.read_text()) for p in sorted(PACKAGE.glob("*.py")) if p.stem != "__init__"}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state:
                cycle = visit(nxt, path + [nxt])
                if cycle:
                    return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_every_module_has_a_layer():
    unplaced = sorted(set(import_graph()) - set(LAYER))
    assert not unplaced, f"place {unplaced} in a layer (here and in docs/design.md's module map)"


def test_no_module_imports_a_higher_layer():
    wrong = [f"{m} (layer {LAYER[m]}) imports {d} (layer {LAYER[d]})"
             for m, imports in import_graph().items() for d, _ in imports if LAYER[d] > LAYER[m]]
    assert not wrong, "\n".join(wrong)


def test_imports_have_no_cycle():
    graph = {m: {d for d, _ in imports} for m, imports in import_graph().items()}
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_detox_imports_are_at_module_level_outside_entry_points():
    lazy = [f"{m} imports detox.{d} inside a function" for m, imports in import_graph().items()
            for d, inside in imports if inside and m not in ENTRY_POINTS]
    assert not lazy, "\n".join(lazy)


@pytest.mark.parametrize("source, expected", [
    ("from detox import ppo\nimport detox.data\n", [("ppo", False), ("data", False)]),
    ("def f():\n    from detox.stages import run\n", [("stages", True)]),
    ("import torch\nfrom detox.conf import x\n", []),
])
def test_the_import_reader_sees_what_it_must(source, expected):
    assert detox_imports(source) == expected


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
