"""The package's shape: no import cycle between ltbench modules, and a plug-in kind's registry in one home.

Every import counts, at module level or inside a function (and under `if TYPE_CHECKING:`): a
function-level import that closes a cycle still ties the two modules' designs together. A
module imports its package's `__init__` only by importing from the package itself (`from . import x`
names the submodule x when there is one)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "ltbench"


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its `__init__`)."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The ltbench modules `name` imports: `from X import y` counts as X.y when that is a module, else X."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                full = f"{target}.{alias.name}"
                out.add(full if full in known else target)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m in known and m != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_no_import_cycle_between_ltbench_modules():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    g = graph()
    assert cycles({**g, "ltbench.errors": g["ltbench.errors"] | {"ltbench.cli"}})  # cli imports errors
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_are_read_at_every_level():
    """The graph sees function-level imports and relative ones of every depth."""
    g = graph()
    assert "ltbench.errors" in g["ltbench.store.index"]  # module level, two dots
    assert "ltbench.training.pipeline" in g["ltbench.suites.execute"]  # inside a function


def test_no_import_is_left_mid_file():
    """Imports sit at the top of a module or inside the function that needs them; one after module
    code (a re-export kept for old callers) is not how a name gets a home."""
    late = []
    for name, path in modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        seen_code = False
        for node in tree.body:
            is_import = isinstance(node, (ast.Import, ast.ImportFrom)) or (  # `if TYPE_CHECKING:`, `try: import`
                isinstance(node, (ast.If, ast.Try)) and all(isinstance(n, (ast.Import, ast.ImportFrom)) for n in node.body))
            docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            if is_import and seen_code:
                late.append(f"{name}:{node.lineno}")
            seen_code = seen_code or not (is_import or docstring)
    assert late == []
