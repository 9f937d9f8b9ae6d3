"""Plug-ins from outside the package: modules that register names into ltbench's registries.

Two ways in, as pytest and timm users know them:

- an installed package declares an entry point in the group `ltbench.plugins` naming a module,
  e.g. in its pyproject.toml `[project.entry-points."ltbench.plugins"] mine = "mypackage.ltbench_plugin"`;
- `LTBENCH_PLUGINS` lists `.py` files or folders (each `*.py` directly inside), separated by
  `os.pathsep`; a file is imported as the module named by its stem (`my_loss.py` -> `my_loss`).

They are imported once a process, at the first registry lookup that needs them (`NameRegistry.get`,
`in`, iteration), so commands that look nothing up pay nothing. The listings never import them:
ltbench/plugins/catalog.py reads their sources as it reads ltbench's own. Anything wrong (a missing
path, a file that fails to import) is one `PluginError` naming the file and line, raised again on
every later lookup, which the CLI prints as one line.

This module imports nothing from ltbench: the registries (names.py) and the catalog call it.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
import traceback
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import ModuleType

#: the entry-point group an installed package declares its plug-in modules in
GROUP = "ltbench.plugins"
#: the environment variable listing plug-in files and folders (os.pathsep-separated)
ENV = "LTBENCH_PLUGINS"


class PluginError(RuntimeError):
    """An outside plug-in that cannot be found, read or imported; the message names the file (and line)."""


@dataclass(frozen=True)
class Source:
    """One outside plug-in module: its name, where its source is (a file, or a package's folder; None
    when it cannot be found without importing it) and how the user named it (for messages)."""

    module: str
    path: Path | None
    origin: str
    entry_point: importlib.metadata.EntryPoint | None = field(default=None, compare=False)

    def covers(self, module: str) -> bool:
        """Whether `module` is this plug-in's module or, for a package, one of its submodules."""
        package = self.path is not None and self.path.is_dir()
        return module == self.module or (package and module.startswith(self.module + "."))


def env_files(value: str | None = None) -> list[Path]:
    """The `.py` files `LTBENCH_PLUGINS` names (`value`: its text, default the environment's), in order."""
    value = os.environ.get(ENV, "") if value is None else value
    files: list[Path] = []
    for item in (part.strip() for part in value.split(os.pathsep)):
        if not item:
            continue
        path = Path(item).expanduser()
        if path.is_dir():
            files += sorted(path.glob("*.py"))
        elif path.is_file() and path.suffix == ".py":
            files.append(path)
        elif path.exists():
            raise PluginError(f"{ENV}: {item} is neither a .py file nor a folder")
        else:
            raise PluginError(f"{ENV}: {item}: no such file or folder")
    return list(dict.fromkeys(p.resolve() for p in files))


def _importable(name: str) -> str | None:
    """Where `import name` would find a module now (a plug-in file must not shadow it), or None."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return None if spec is None else (spec.origin or name)


def _module_path(module: str) -> Path | None:
    """The source of `module` (a file, or a package's folder), found without importing it or its parents."""
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    path = Path(spec.origin)
    for part in rest:
        if path.name != "__init__.py":
            return None
        inner = path.parent / part / "__init__.py"
        path = inner if inner.is_file() else path.parent / f"{part}.py"
        if not path.is_file():
            return None
    return path.parent if path.name == "__init__.py" else path


@lru_cache(maxsize=1)
def _entry_point_sources() -> tuple[Source, ...]:
    """The installed packages' plug-in modules (read once a process: installing needs a new one)."""
    found = []
    for ep in sorted(importlib.metadata.entry_points(group=GROUP), key=lambda ep: ep.name):
        dist = getattr(ep.dist, "name", None)
        origin = f"entry point {ep.name} = {ep.value}" + (f" (package {dist})" if dist else "")
        found.append(Source(ep.module, _module_path(ep.module), origin, ep))
    return tuple(found)


def sources(value: str | None = None) -> list[Source]:
    """Every outside plug-in: the entry points, then the `LTBENCH_PLUGINS` files (`value`: its text)."""
    found = list(_entry_point_sources())
    named: dict[str, Path] = {}
    for path in env_files(value):
        if path.stem in named:
            raise PluginError(f"{ENV}: {named[path.stem]} and {path} would both be module {path.stem!r};"
                              f" rename one")
        named[path.stem] = path
        found.append(Source(path.stem, path, str(path)))
    return found


def _failure(source: Source, e: BaseException) -> PluginError:
    """The one-line error for a plug-in whose import raised `e`: the plug-in's own line that failed."""
    where = str(source.path or source.origin)
    if isinstance(e, SyntaxError) and e.filename and e.lineno:
        where = f"{e.filename}:{e.lineno}"
    elif source.path is not None:
        mine = [f for f in traceback.extract_tb(e.__traceback__)
                if Path(f.filename) == source.path or source.path in Path(f.filename).parents]
        if mine:
            where = f"{mine[-1].filename}:{mine[-1].lineno}"
    how = f" ({source.origin})" if source.entry_point is not None else ""
    text = e.msg if isinstance(e, SyntaxError) else str(e)
    return PluginError(f"plug-in {where}{how} failed to import: {type(e).__name__}: {text}")


def _import(source: Source) -> ModuleType:
    """Import one plug-in module (a file under its stem's name, an entry point through its package)."""
    if source.entry_point is not None:
        try:
            source.entry_point.load()
        except Exception as e:  # noqa: BLE001  (whatever the plug-in raises is the user's to fix)
            raise _failure(source, e) from e
        return sys.modules[source.module]
    path, name = source.path, source.module
    taken = sys.modules.get(name)
    if taken is not None and getattr(taken, "__file__", None) and Path(taken.__file__).resolve() == path:
        return taken  # imported already (it may be looking a name up now): importing again would register twice
    other = getattr(taken, "__file__", None) if taken is not None else _importable(name)
    if taken is not None or (other is not None and Path(other).resolve() != path):
        raise PluginError(f"plug-in {path}: its module name {name!r} is taken by"
                          f" {other or 'a built-in module'}; rename the file")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001
        sys.modules.pop(name, None)
        raise _failure(source, e) from e
    return module


@dataclass
class _Loaded:
    """What this process imported: modules by origin, failures by origin (raised again, never retried),
    and the `LTBENCH_PLUGINS` text whose plug-ins are all in."""

    modules: dict[str, ModuleType] = field(default_factory=dict)
    failed: dict[str, PluginError] = field(default_factory=dict)
    value: str | None = None


_loaded = _Loaded()


def load() -> None:
    """Import every outside plug-in not imported yet; cheap once done (a changed `LTBENCH_PLUGINS`
    imports the files it adds). A plug-in that looks a registry up while it is being imported
    gets the others imported first (itself, half-imported, is not imported again)."""
    value = os.environ.get(ENV, "")
    if value == _loaded.value:
        return
    for source in sources(value):
        if source.origin in _loaded.failed:
            raise _loaded.failed[source.origin]
        if source.origin not in _loaded.modules:
            try:
                _loaded.modules[source.origin] = _import(source)
            except PluginError as e:
                _loaded.failed[source.origin] = e
                raise
    _loaded.value = value
