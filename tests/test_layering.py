"""The house rule of docs/ARCHITECTURE.md, checked: imports run one way, down the layers of LAYERS, with no cycles,
and every module is readable in one sitting.

Every module under hearth/ is read with `ast` (no import is executed): every `import` and `from ... import`,
those inside functions included (they run too, only later), relative imports resolved; imports under
`if TYPE_CHECKING:` are left out (they never run). An edge goes to the module named, or to the submodule when
`from package import name` names one, and to the packages above it that the importer is not inside (their
`__init__` runs first). A module's layer is the first entry of LAYERS whose name is the module or a
package above it.

The test fails on an import cycle between modules, an import from a later layer into an earlier one, a module in no
layer, and a module over MAX_LINES lines, printing each. KNOWN lists what still stood when the test was written,
each with the issue item that removes it: a violation not in KNOWN fails, and so does an entry of KNOWN that no
longer occurs, so the list can only shrink.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "hearth"
MAX_LINES = 450

# The layers, first to last: a module may import from its own layer and the ones before it, never from a later one.
LAYERS: list[tuple[str, ...]] = [
    ("hearth", "hearth.config", "hearth.errors", "hearth.safejson", "hearth.textsafe", "hearth.fsutil", "hearth.progress",
     "hearth.packaged", "hearth.workerproc"),
    ("hearth.weights",),
    ("hearth.tokenizer", "hearth.kernels"),
    ("hearth.model",),
    ("hearth.fast",),  # fused/quantized modules and the CPU, static and GPU decoders, applied to a model from outside
    ("hearth.store", "hearth.netguard"),
    ("hearth.loader", "hearth.runtime"),
    ("hearth.engine", "hearth.chat_commands", "hearth.chat_loop", "hearth.chat_repl"),
    ("hearth.guard",),  # the Llama Guard format, policies and scoring: on an engine; the server's checks use it
    ("hearth.records",),  # captured completions, feedback, redaction, the cost ledger, the audit log: SQLite and files
    ("hearth.server",),
    ("hearth.eval",),
    ("hearth.redteam",),  # attack suites answered on an engine, judged by the guard and a refusal detector
    ("hearth.quantize",),
    ("hearth.tune",),
    ("hearth.release",),  # a release folder: weights, card, licence files, documents, signature, the gate
    ("hearth.cli",),
]

# Violations that still stand, each with the issue item that removes it. Remove an entry when its fix lands.
KNOWN: dict[str, str] = {
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def layer_of(mod: str) -> int | None:
    best: tuple[int, int] | None = None  # (length of the matching name, layer)
    for i, names in enumerate(LAYERS):
        for name in names:
            if (mod == name or mod.startswith(name + ".")) and (best is None or len(name) > best[0]):
                best = (len(name), i)
    return None if best is None else best[1]


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Import nodes that run (everything but the body of `if TYPE_CHECKING:`)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _type_checking(node.test):
            for child in node.orelse:
                yield from _imports_of(child)
            continue
        yield from _imports_of(node)


def _imports_of(node: ast.AST):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    else:
        yield from _imports(node)


def imports_of(mod: str, path: Path, known: set[str]) -> set[str]:
    """The hearth modules that `mod` imports."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            if node.level:
                base = mod.split(".") if is_package else mod.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names]
        for t in targets:
            # `import hearth.a.b` names hearth.a.b; a name that is no module (hearth.a.b.func) means its module
            while t and t not in known:
                t = t.rpartition(".")[0]
            if not t.startswith("hearth"):
                continue
            # importing hearth.a.b runs hearth/a/__init__.py first, unless it is a package `mod` itself lies in
            parts = t.split(".")
            for i in range(2, len(parts) + 1):
                target = ".".join(parts[:i])
                if target != mod and not mod.startswith(target + "."):
                    out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imports_of(m, p, known) for m, p in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # recursion depth is bounded by the module count (~150)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def violations() -> dict[str, str]:
    """Each violation as a stable key -> what to print about it."""
    graph = import_graph()
    out: dict[str, str] = {}
    for mod in graph:
        if layer_of(mod) is None:
            out[f"no layer: {mod}"] = f"{mod} is in no layer of LAYERS"
    for comp in cycles(graph):
        members = set(comp)
        edges = ", ".join(f"{a} -> {b}" for a in comp for b in sorted(graph[a] & members))
        out["cycle: " + " <-> ".join(comp)] = f"import cycle among {len(comp)} modules: {edges}"
    for a, targets in sorted(graph.items()):
        la = layer_of(a)
        for b in sorted(targets):
            lb = layer_of(b)
            if la is not None and lb is not None and lb > la:
                out[f"upward: {a} -> {b}"] = (f"{a} (layer {la}: {LAYERS[la][0]}) imports {b} "
                                               f"(later layer {lb}: {LAYERS[lb][0]})")
    for mod, path in modules().items():
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_LINES:
            out[f"too long: {mod}"] = f"{path.relative_to(ROOT.parent)} has {n} lines (at most {MAX_LINES})"
    return out


def test_imports_follow_the_layers_without_cycles():
    found = violations()
    new = {k: v for k, v in found.items() if k not in KNOWN}
    fixed = sorted(k for k in KNOWN if k not in found)
    msg = []
    if new:
        msg.append("violations of the layering rule (docs/ARCHITECTURE.md):\n" + "\n".join(f"  {v}" for v in new.values()))
    if fixed:
        msg.append("gone, so remove them from KNOWN:\n" + "\n".join(f"  {k!r}" for k in fixed))
    assert not msg, "\n".join(msg)


def test_the_reader_sees_imports_inside_functions_and_relative_ones(tmp_path):
    """The checker itself: a function-level import and a relative import are edges; TYPE_CHECKING ones are not."""
    pkg = tmp_path / "hearth"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import b\n")
    (pkg / "sub" / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import hearth.c\n"
                                      "def f():\n    from ..c import g\n")
    (pkg / "sub" / "b.py").write_text("from .a import f\nimport hearth.c as c\n")
    (pkg / "c.py").write_text("def g():\n    from hearth.sub import a\n")
    known = {"hearth", "hearth.sub", "hearth.sub.a", "hearth.sub.b", "hearth.c"}
    global ROOT
    saved, ROOT = ROOT, pkg
    try:
        got = {m: imports_of(m, p, known) for m, p in modules().items()}
    finally:
        ROOT = saved
    assert got == {"hearth": set(), "hearth.sub": {"hearth.sub.b"}, "hearth.sub.a": {"hearth.c"},
                   "hearth.sub.b": {"hearth.sub.a", "hearth.c"}, "hearth.c": {"hearth.sub", "hearth.sub.a"}}
    assert cycles(got) == [["hearth.c", "hearth.sub", "hearth.sub.a", "hearth.sub.b"]]
