"""The package's layout is its architecture (docs/design.md, "Module map"): subpackages that are
layers, read bottom-up. A module imports modules of its own subpackage or of lower layers, never
of a higher one nor of a sibling in its layer, never in a cycle; a `detox` import inside a function
only in the entry points (the top-level modules); a subpackage's `__init__` holds no code."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "detox"

LAYERS = [("core",), ("algo",), ("config",), ("runtime",), ("models", "data"), ("rl", "evaluation"), ("stages",),
          ("sweeps",)]
LAYER = {package: i for i, packages in enumerate(LAYERS) for package in packages}
ENTRY = len(LAYERS)  # the top-level modules: cli, generate, __main__
MAX_TOP_LEVEL = 10


def package_of(module: str) -> str:
    """`models.policy` -> `models`; a top-level module is its own (an entry point)."""
    return module.split(".")[0] if "." in module else ""


def layer_of(module: str) -> int:
    return LAYER[package_of(module)] if package_of(module) else ENTRY


def modules() -> dict[str, pathlib.Path]:
    """Every module, named relative to the package (`models.policy`, `cli`); not `__init__`s."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        if rel.parts[0] != "conf" and rel.name != "__init__":
            found[".".join(rel.parts)] = path
    return found


def detox_imports(source: str, known: set[str]) -> list[tuple[str, bool]]:
    """(imported detox module, whether the import is inside a function) for every import;
    `from detox.x import y` counts as importing `x.y` when that is a module, else `x`."""
    tree = ast.parse(source)
    nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f) if n is not f}
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}"[6:] in known else node.module
                       for a in node.names]
        for target in targets:
            if target.startswith("detox.") and target.split(".")[1] != "conf":
                found.append((target[len("detox."):], id(node) in nested))
    return found


def import_graph() -> dict[str, list[tuple[str, bool]]]:
    known = set(modules())
    return {name: detox_imports(path.read_text(), known | {p for m in known for p in [package_of(m)] if p})
            for name, path in modules().items()}


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


def test_every_module_is_in_a_layer_and_the_top_level_is_small():
    names = modules()
    unplaced = sorted({package_of(m) for m in names if package_of(m) and package_of(m) not in LAYER})
    assert not unplaced, f"add subpackages {unplaced} to a layer (here and in docs/design.md's module map)"
    top = sorted(m for m in names if not package_of(m))
    assert len(top) <= MAX_TOP_LEVEL, f"{len(top)} modules at the top of detox/: {top}"


def test_no_module_imports_a_higher_layer_or_a_sibling_package():
    wrong = []
    for module, imports in import_graph().items():
        for target, _ in imports:
            same_package = package_of(target) == package_of(module)
            if not same_package and layer_of(target) >= layer_of(module):
                wrong.append(f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})")
    assert not wrong, "\n".join(wrong)


def test_imports_have_no_cycle():
    graph = {m: {t for t, _ in imports if t in modules()} for m, imports in import_graph().items()}
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_detox_imports_are_at_module_level_outside_entry_points():
    lazy = [f"{m} imports detox.{t} inside a function" for m, imports in import_graph().items()
            for t, inside in imports if inside and layer_of(m) != ENTRY]
    assert not lazy, "\n".join(lazy)


def test_subpackage_inits_hold_only_their_docstring():
    for init in PACKAGE.glob("*/__init__.py"):
        if init.parent.name == "conf":
            continue
        body = ast.parse(init.read_text()).body
        assert len(body) == 1 and isinstance(body[0], ast.Expr), f"{init}: a docstring only (what the layer holds)"


@pytest.mark.parametrize("source, expected", [
    ("from detox.algo import masked\nimport detox.data.splits\n", [("algo.masked", False), ("data.splits", False)]),
    ("from detox.models.policy import Policy\n", [("models.policy", False)]),
    ("def f():\n    from detox.stages.ppo import run_ppo\n", [("stages.ppo", True)]),
    ("import torch\nfrom detox.conf import x\n", []),
])
def test_the_import_reader_sees_what_it_must(source, expected):
    known = {"algo.masked", "data.splits", "models.policy", "stages.ppo", "algo", "data", "models", "stages"}
    assert detox_imports(source, known) == expected


def test_the_cycle_finder_and_the_layer_rule_find_what_they_must():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert layer_of("rl.trainer") == layer_of("evaluation.evaluator") > layer_of("models.policy")
    assert layer_of("cli") == ENTRY > layer_of("sweeps.summary")


def test_every_subpackage_ships_in_a_wheel():
    """pyproject.toml lists the packages explicitly (conf/ is mapped to detox.conf): a subpackage
    missing there would be absent from a non-editable install."""
    import tomllib

    listed = set(tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"detox." + ".".join(p.parent.relative_to(PACKAGE).parts) for p in PACKAGE.glob("*/__init__.py")}
    assert found - {"detox.conf"} <= listed, sorted(found - listed)
