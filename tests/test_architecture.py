"""The package's shape, checked from the source (AST, nothing imported): imports flow one way, no private
name crosses a module, modules stay small, every file write goes through :mod:`drope_check.atomic`.

docs/architecture.md draws the flow these rules keep."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "drope_check"

#: The most lines a module may have (docs/architecture.md: one job per module).
MAX_LINES = 500

#: Modules allowed over MAX_LINES, each with the reason. Keep this empty.
OVERSIZE: dict[str, str] = {}

#: Modules that write files without :mod:`drope_check.atomic`, with the reason each is allowed.
WRITE_EXCEPTIONS: dict[str, str] = {
    "drope_check.engine.workers": "a worker's marker file in the core-share folder (its pid, removed on exit); a "
    "temporary sibling would be counted as one more worker holding cores",
    "drope_check.models.gguf_cache": "the dequantised cache entry is a folder written inside a temporary folder "
    "that is then renamed into place whole (atomic at the folder level)",
    "drope_check.models.tiny_checkpoints": "builds checkpoint folders of random test models in a fresh folder",
    "drope_check.models.rehearsal_repos": "builds the local hub's repos of random test models in a fresh folder",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
    return {
        _module_name(p): ast.parse(p.read_text(encoding="utf-8"), filename=str(p))
        for p in sorted(PACKAGE.rglob("*.py"))
    }


MODULES = _modules()


def _imports(name: str, tree: ast.Module) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every import of a drope_check module in
    ``tree``, at module level and inside functions alike. ``from drope_check.x import y`` where y is
    itself a module counts as an import of ``drope_check.x.y``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, None, node.lineno) for a in node.names if a.name.startswith("drope_check.")]
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").startswith("drope_check")
        ):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in MODULES:
                    found.append((sub, None, node.lineno))
                else:
                    found.append((node.module, alias.name, node.lineno))
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, tree in MODULES.items():
        for module, _, _ in _imports(name, tree):
            if module in MODULES and module != name and module != "drope_check":
                graph[name].add(module)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_function_level_imports():
    graph = _graph()
    assert (
        "drope_check.engine.residual_stats" in graph["drope_check.engine.capture"]
    )  # from pkg import module
    # cli imports its subcommands' modules inside functions only
    assert "drope_check.measurements.measure" in graph["drope_check.cli"]


def test_no_import_cycle():
    cycles = _cycles(_graph())
    assert cycles == [], "modules importing each other in a circle: " + "; ".join(
        " <-> ".join(c) for c in cycles
    )


def test_no_private_name_crosses_modules():
    crossing = [
        f"{name}:{line} imports {module}.{imported}"
        for name, tree in MODULES.items()
        for module, imported, line in _imports(name, tree)
        if imported and imported.startswith("_") and not imported.startswith("__") and module != name
    ]
    assert crossing == []


def test_no_module_over_the_limit():
    sizes = {_module_name(p): len(p.read_text(encoding="utf-8").splitlines()) for p in PACKAGE.rglob("*.py")}
    over = {name: n for name, n in sizes.items() if n > MAX_LINES and name not in OVERSIZE}
    assert over == {}, f"modules over {MAX_LINES} lines: {over}"
    stale = [name for name in OVERSIZE if sizes.get(name, 0) <= MAX_LINES]
    assert stale == [], f"OVERSIZE lists modules that are no longer over the limit: {stale}"


def _writes(tree: ast.Module) -> list[tuple[int, str]]:
    """Calls that write a file: ``x.write_text(...)``, ``x.write_bytes(...)``, ``open(..., "w"/"a"/"x")``,
    ``x.open("w")``, ``save_pretrained`` / safetensors' ``save_file`` / ``save_model``, ``shutil.copy*``.
    (``savefig`` is not one: the plots render into a bytes buffer that :mod:`drope_check.atomic` writes.)"""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        attr = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if attr in {
            "write_text",
            "write_bytes",
            "save_pretrained",
            "save_file",
            "save_model",
            "copyfile",
            "copy2",
            "copy",
        }:
            if attr == "copy" and not (
                isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name)
                and func.value.id == "shutil"
            ):
                continue
            found.append((node.lineno, attr))
        elif attr == "open":
            modes = [a for a in node.args[1:2] if isinstance(a, ast.Constant)]
            if isinstance(func, ast.Attribute):
                modes = [a for a in node.args[:1] if isinstance(a, ast.Constant)]
            modes += [k.value for k in node.keywords if k.arg == "mode" and isinstance(k.value, ast.Constant)]
            if any(isinstance(m.value, str) and set(m.value) & set("wax") for m in modes):
                found.append((node.lineno, "open for writing"))
    return found


def test_the_write_finder_sees_writes():
    tree = ast.parse(
        "from pathlib import Path\nPath('x').write_text('a')\nopen('y', 'w')\nopen('z')\n"
        "Path('q').open(mode='a')\nmodel.save_pretrained('d')\nshutil.copy('a', 'b')\nx.copy()\n"
    )
    assert [what for _, what in _writes(tree)] == [
        "write_text",
        "open for writing",
        "open for writing",
        "save_pretrained",
        "copy",
    ]


def test_every_write_goes_through_atomic():
    writes = [
        f"{name}:{line} {what}"
        for name, tree in MODULES.items()
        if name != "drope_check.atomic"
        for line, what in _writes(tree)
        if name not in WRITE_EXCEPTIONS
    ]
    assert writes == [], "file writes outside drope_check.atomic: " + ", ".join(writes)


def test_write_exceptions_are_still_needed():
    stale = [name for name in WRITE_EXCEPTIONS if name not in MODULES or not _writes(MODULES[name])]
    assert stale == [], f"WRITE_EXCEPTIONS lists modules that write nothing themselves any more: {stale}"
