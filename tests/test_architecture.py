"""The shape of the code, checked from its source with ``ast`` (issue 21): no import cycle among tlbench's modules
(imports inside functions counted), an import inside a function only to defer an optional or heavy third-party
package (and saying so), no private name used across modules, no function with more than 12 parameters."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"harness": "tlbench", "plugins": "tlbench.plugins"}  # folder -> the package it is installed as
MAX_PARAMETERS = 12


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).glob("*.py")):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(encoding="utf-8"), filename=str(path)) for name, path in MODULES.items()}


def _imported(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The tlbench modules an import statement loads: ``from tlbench import hookimpl`` loads the package
    ``tlbench`` (its ``__init__``), ``from tlbench import version`` the module ``tlbench.version``."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in MODULES]
    if node.level:  # relative imports are not used in tlbench; resolve them anyway
        base = module.rsplit(".", node.level)[0]
        source = f"{base}.{node.module}" if node.module else base
    else:
        source = node.module or ""
    targets = []
    for alias in node.names:
        if f"{source}.{alias.name}" in MODULES:
            targets.append(f"{source}.{alias.name}")
        elif source in MODULES:
            targets.append(source)
    return targets


def import_graph(trees: dict[str, ast.Module] = TREES) -> dict[str, set[str]]:
    """Module -> the tlbench modules it imports anywhere in its file (top level and inside functions)."""
    return {module: {target for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                     for target in _imported(module, node) if target != module} for module, tree in trees.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _function_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    inner = []
    for function in ast.walk(tree):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inner += [node for node in ast.walk(function) if isinstance(node, (ast.Import, ast.ImportFrom))]
    return inner


def test_the_cycle_finder_finds_a_cycle_through_an_import_inside_a_function():
    """The check itself: a cycle hidden by an import inside a function is a cycle."""
    trees = {"tlbench.a": ast.parse("from tlbench.b import x\n"),
             "tlbench.b": ast.parse("def f():\n    from tlbench.c import y\n"),
             "tlbench.c": ast.parse("import tlbench.a\n")}
    saved = dict(MODULES)
    MODULES.update({name: Path(name) for name in trees})
    try:
        assert cycles(import_graph(trees)) == [["tlbench.a", "tlbench.b", "tlbench.c"]]
        assert cycles(import_graph({**trees, "tlbench.c": ast.parse("x = 1\n")})) == []
    finally:
        MODULES.clear()
        MODULES.update(saved)


def test_no_import_cycle_among_tlbench_modules():
    found = cycles(import_graph())
    assert not found, f"import cycles (counting imports inside functions): {found}"


def test_the_package_init_is_imported_by_plugins_only():
    """``tlbench/__init__`` re-exports the upper floors (run_grid, tune_grid): a module of the harness that imported
    it would sit both below and above them. Plugins import it (``from tlbench import hookimpl``): nothing in the
    harness imports a plugin module by name, so that is no cycle."""
    graph = import_graph()
    importers = sorted(module for module, targets in graph.items() if "tlbench" in targets)
    assert all(module.startswith("tlbench.plugins.") for module in importers), importers
    harness_importing_plugins = {module: sorted(t for t in targets if t.startswith("tlbench.plugins"))
                                 for module, targets in graph.items() if not module.startswith("tlbench.plugins")}
    assert not any(harness_importing_plugins.values()), harness_importing_plugins


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_inside_functions_only_defer_optional_or_heavy_packages(module):
    source = MODULES[module].read_text(encoding="utf-8").splitlines()
    problems = []
    for node in _function_imports(TREES[module]):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        if any(name == "tlbench" or name.startswith("tlbench.") for name in names) or getattr(node, "level", 0):
            problems.append(f"line {node.lineno}: a tlbench module imported inside a function (import it at the "
                            f"top; an import that would make a cycle means the modules are in the wrong floors)")
        elif "# deferred:" not in source[node.lineno - 1]:
            problems.append(f"line {node.lineno}: {source[node.lineno - 1].strip()!r} lacks a '# deferred: why' "
                            f"comment (only an optional or heavy package is imported inside a function)")
    assert not problems, problems


def _tlbench_module_aliases(tree: ast.Module) -> set[str]:
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {a.asname or a.name for a in node.names if a.name.split(".")[0] == "tlbench"}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tlbench":
            aliases |= {a.asname or a.name for a in node.names if f"{node.module}.{a.name}" in MODULES}
    return aliases


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_name_is_used_across_modules(module):
    tree = TREES[module]
    problems = [f"line {node.lineno}: from {node.module} import {alias.name}" for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tlbench"
                for alias in node.names if _private(alias.name)]
    aliases = _tlbench_module_aliases(tree)
    problems += [f"line {node.lineno}: {ast.unparse(node)}" for node in ast.walk(tree)
                 if isinstance(node, ast.Attribute) and _private(node.attr)
                 and isinstance(node.value, ast.Name) and node.value.id in aliases]
    assert not problems, f"{module} uses private names of other tlbench modules: {problems}"


def _is_click_command(function: ast.FunctionDef) -> bool:
    return any("command" in ast.unparse(decorator).split("(")[0] for decorator in function.decorator_list)


def parameter_counts(tree: ast.Module) -> list[tuple[int, str, int]]:
    counts = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not _is_click_command(node):
            args = node.args
            positional = args.posonlyargs + args.args
            count = len(positional) + len(args.kwonlyargs) + bool(args.vararg) + bool(args.kwarg)
            if positional and positional[0].arg in ("self", "cls"):
                count -= 1
            counts.append((count, node.name, node.lineno))
    return counts


def test_the_parameter_count_counts_every_kind_of_parameter():
    tree = ast.parse("def f(a, /, b, *c, d, e=1, **f): pass\nclass K:\n    def m(self, x): pass\n")
    assert sorted(parameter_counts(tree)) == [(1, "m", 3), (6, "f", 1)]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_function_takes_more_than_12_parameters(module):
    too_many = [(name, line, count) for count, name, line in parameter_counts(TREES[module]) if count > MAX_PARAMETERS]
    assert not too_many, (f"{module}: functions with more than {MAX_PARAMETERS} parameters (pass a typed object or "
                          f"a small config dataclass): {too_many}")
