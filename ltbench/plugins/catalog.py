"""What ltbench offers, by name, without importing it: the registrations read from the sources.

`ltbench methods | datasets | backbones | losses | samplers | scorers` and the CLI's help must
start without torch, so they cannot import the plug-in modules that register the names. Instead
this module parses the package's Python files with `ast`, and the outside plug-ins' files
(ltbench/plugins/external.py) the same way, and collects every registration written as

    @register_method("name")                      on a method class
    @METHODS.register("name", help="…")           on a class or function (any registry of plugins/__init__.py)
    SAMPLERS.register("name", help="…")(obj)      the call form, for a builder made by a function

The one-line help is the `help=` keyword, else the first line of the decorated (or registered,
when it is a name defined in the module) class or function's docstring. A registration is then
one line, its decorator: nothing else lists the name. Each registry checks at import that the
scan saw its registrations (a name built at run time, or a registry used under another name,
would be invisible to the listings, so it fails loudly instead), and tests/test_catalog.py
checks that the scan equals the registries once every module is imported.
"""
from __future__ import annotations

import ast
import functools
import os
from pathlib import Path
from typing import NamedTuple

from .external import ENV, PluginError, sources

#: name -> (module that registers it, one-line help)
Catalog = dict[str, tuple[str, str]]

#: the package whose sources `table` scans (ltbench, the parent of this subpackage)
PACKAGE = __name__.split(".")[0]
PACKAGE_DIR = Path(__file__).resolve().parent.parent

#: the name forms beyond the registered ones (parsed by ltbench.backbones.names)
BACKBONE_FORMS: list[tuple[str, str]] = [
    ("<timm name>[.<tag>]", "any timm ViT, e.g. vit_base_patch16_224.augreg_in21k (hub weights, or --weights FILE)"),
    ("clip:<model>[/<tag>]", "any open_clip model, e.g. clip:ViT-B-32/openai (hub weights, or --weights FILE)"),
]


class Listing(NamedTuple):
    """One listing command of the CLI: its help, the registries it lists (each with the prefix its
    names take on the command line) and the rows it adds beyond them."""

    help: str
    registries: tuple[tuple[str, str], ...]
    extra: tuple[tuple[str, str], ...] = ()


#: `ltbench <command>` for each listing, in the order `ltbench -h` shows them
LISTINGS: dict[str, Listing] = {
    "datasets": Listing("Available dataset sources, one line each.", (("DATASETS", ""),)),
    "backbones": Listing("Available backbones, one line each.", (("BACKBONES", ""), ("CLIP_BACKBONES", "clip:")),
                         tuple(BACKBONE_FORMS)),
    "methods": Listing("Available methods, one line each.", (("METHODS", ""),)),
    "losses": Listing("Available losses (train --loss), one line each.", (("LOSSES", ""),)),
    "samplers": Listing("Available training samplers (train --sampler), one line each.", (("SAMPLERS", ""),)),
    "scorers": Listing("Available fusion scorers (fuse --scorer), one line each.", (("SCORERS", ""),)),
}

#: decorator functions that register into a registry of plugins/__init__.py, by the registry they fill
_HELPERS = {"register_method": "METHODS"}


def first_line(doc: str | None) -> str:
    """A docstring's first line, the one-line help of a registration without `help=`; shared by the
    scan and the registries, so both derive the same text."""
    lines = (doc or "").strip().splitlines()
    return lines[0].strip().removesuffix(".") if lines else ""  # listings show phrases, not sentences


def _first_line(node: ast.AST | None) -> str:
    """The first docstring line of a class or function node ("" for anything else)."""
    if not isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        return ""
    return first_line(ast.get_docstring(node))


def _mentions(registry: str | None) -> tuple[str, ...]:
    """The text a file must hold to be parsed when looking for `registry`'s registrations (any
    registry's when None): most files hold none, and reading is far cheaper than parsing."""
    helpers = [helper for helper, filled in _HELPERS.items() if registry in (None, filled)]
    return (f"{registry or ''}.register(", *(f"{helper}(" for helper in helpers))


def _registration(call: ast.AST) -> tuple[str, str, str] | None:
    """(registry, name, help keyword) when `call` is `REGISTRY.register("name", …)` or a helper such
    as `register_method("name")`; None otherwise. Registries are the upper-case names of
    plugins/__init__.py, which keeps `registry.register(name, …)` (the on-disk expert store) out."""
    if not isinstance(call, ast.Call) or not call.args:
        return None
    func, first = call.func, call.args[0]
    if isinstance(func, ast.Attribute) and func.attr == "register" and isinstance(func.value, ast.Name) \
            and func.value.id.isupper():
        registry = func.value.id
    elif isinstance(func, ast.Name) and func.id in _HELPERS:
        registry = _HELPERS[func.id]
    else:
        return None
    if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
        return None  # a name built at run time: the registry's import-time check reports it
    help_ = next((k.value.value for k in call.keywords if k.arg == "help" and isinstance(k.value, ast.Constant)
                  and isinstance(k.value.value, str)), "")
    return registry, first.value, help_


def scan_source(source: str, module: str, filename: str = "<unknown>") -> dict[str, Catalog]:
    """The registrations in one module's `source` (read from `filename`), as {registry: {name: (module, help)}}."""
    tree = ast.parse(source, filename)
    defined = {node.name: node for node in tree.body if isinstance(node, (ast.ClassDef, ast.FunctionDef))}
    found: dict[str, Catalog] = {}

    def add(call: ast.AST, target: ast.AST | None) -> None:
        hit = _registration(call)
        if hit:
            registry, name, help_ = hit
            found.setdefault(registry, {})[name] = (module, help_ or _first_line(target))

    for node in tree.body:  # module level only: a registration inside a function fails the import check
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            for deco in node.decorator_list:
                add(deco, node)
        elif isinstance(node, (ast.Expr, ast.Assign)) and isinstance(node.value, ast.Call) \
                and len(node.value.args) == 1:  # X.register("name", …)(obj), alone or assigned
            arg = node.value.args[0]
            add(node.value.func, defined.get(arg.id) if isinstance(arg, ast.Name) else None)
    return found


def _module_name(path: Path, root: Path, package: str) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def scan(root: Path | str, package: str, registry: str | None = None) -> dict[str, Catalog]:
    """Every registration (into `registry` only, when given) in the Python files under `root`, the
    folder of the package `package` (so `root/a/b.py` is module `package.a.b`), as
    {registry: {name: (module, help)}}. Only files that mention such a registration are parsed:
    reading every file is cheap, parsing is not (the scorers' table takes about 4 ms this way,
    the methods' 20 ms, against 100 ms for parsing every file that mentions any registration)."""
    root = Path(root)
    mentions = _mentions(registry)
    tables: dict[str, Catalog] = {}
    for path in sorted(root.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        if not any(mention in source for mention in mentions):
            continue
        for found_in, found in scan_source(source, _module_name(path, root, package), str(path)).items():
            if registry in (None, found_in):
                tables.setdefault(found_in, {}).update(found)
    return tables


@functools.lru_cache(maxsize=None)
def table(registry: str) -> Catalog:
    """ltbench's registrations into `registry` (a registry's name in ltbench/plugins/__init__.py:
    "METHODS", "LOSSES", …), read from the sources once a process (callers must not change it)."""
    return scan(PACKAGE_DIR, PACKAGE, registry).get(registry, {})


def import_registering(*registries: str) -> None:
    """Import every ltbench module that registers into `registries` (what a package's `__init__` or
    factory does so that its names are there to look up: a new module needs no import line)."""
    import importlib

    for module in sorted({module for registry in registries for module, _ in table(registry).values()}):
        importlib.import_module(module)


@functools.lru_cache(maxsize=None)
def _outside(value: str) -> dict[str, Catalog]:
    """The outside plug-ins' registrations for `LTBENCH_PLUGINS` = `value` (and the entry points),
    read from their sources: nothing is imported. A file that cannot be read or parsed is a
    PluginError naming it."""
    tables: dict[str, Catalog] = {}
    for source in sources(value):
        if source.path is None:  # not a plain file or folder: listed once imported only
            continue
        try:
            found = scan(source.path, source.module) if source.path.is_dir() else \
                scan_source(source.path.read_text(encoding="utf-8"), source.module, str(source.path))
        except SyntaxError as e:
            raise PluginError(f"plug-in {e.filename}:{e.lineno}: SyntaxError: {e.msg}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise PluginError(f"plug-in {source.path} cannot be read: {e}") from None
        for registry, rows_ in found.items():
            tables.setdefault(registry, {}).update(rows_)
    return tables


def outside_table(registry: str) -> Catalog:
    """The outside plug-ins' registrations into `registry` (ltbench/plugins/external.py), from their sources."""
    return _outside(os.environ.get(ENV, "")).get(registry, {})


def known(registry: str) -> Catalog:
    """Every registration into `registry` the sources show: ltbench's own and the outside plug-ins'."""
    return {**outside_table(registry), **table(registry)}


def is_ltbench(module: str) -> bool:
    """Whether `module` is one of ltbench's own (whose registrations `table` holds)."""
    return module == PACKAGE or module.startswith(PACKAGE + ".")


def sees(registry: str, name: str, module: str) -> bool:
    """Whether the listings show `module`'s registration of `name` into `registry`: for a module the
    catalog reads (ltbench's, an outside plug-in's), whether its scan found it there; any other
    module (a script, a notebook) is not read, so nothing is expected of it."""
    if is_ltbench(module):
        return table(registry).get(name, (None,))[0] == module
    if any(source.path is not None and source.covers(module) for source in sources()):
        return outside_table(registry).get(name, (None,))[0] == module
    return True


def listing(registry: str, prefix: str = "", outside: bool = True) -> list[tuple[str, str]]:
    """(name, one-line help) rows of `registry`, ltbench's and (with `outside`) the outside plug-ins',
    sorted by name; `prefix` goes before each name."""
    found = known(registry) if outside else table(registry)
    return [(prefix + name, found[name][1]) for name in sorted(found)]


def rows(command: str, outside: bool = True) -> list[tuple[str, str]]:
    """(name, one-line help) rows that `ltbench <command>` prints (a key of LISTINGS)."""
    shown = LISTINGS[command]
    return [row for registry, prefix in shown.registries
            for row in listing(registry, prefix, outside)] + list(shown.extra)
