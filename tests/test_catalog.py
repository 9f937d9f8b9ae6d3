"""ltbench/plugins/catalog.py's scan of the sources: what the listings show without importing anything."""
import importlib
import json
import pkgutil
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

import ltbench
from ltbench import plugins
from ltbench.cli import app
from ltbench.plugins import catalog

#: every registry of ltbench/plugins/__init__.py, by the name the scan files it under
REGISTRIES = {name: value for name, value in vars(plugins).items() if isinstance(value, plugins.NameRegistry)}


def import_everything() -> None:
    """Import every module of the package, so every registration has run."""
    for mod in pkgutil.walk_packages(ltbench.__path__, "ltbench."):
        if not mod.name.startswith(("ltbench.__main__", "ltbench.cli")):
            importlib.import_module(mod.name)


def test_the_scan_finds_exactly_what_the_registries_hold():
    """Per registry, the scan's (module, help) of each name = what importing registered, help included."""
    import_everything()
    assert sorted(REGISTRIES) == ["BACKBONES", "CLIP_BACKBONES", "DATASETS", "LOSSES", "METHODS", "OOD_SETS",
                                  "SAMPLERS", "SCORERS"]
    for listed_as, registry in REGISTRIES.items():
        assert registry.listed_as == listed_as
        held = {name: (registry.get(name).__module__, registry.help(name)) for name in registry}
        assert held == catalog.table(listed_as), listed_as
        assert held and all(help_ and "\n" not in help_ for _, help_ in held.values()), listed_as


def test_every_registered_name_is_listed_by_its_command_with_its_help():
    import_everything()
    runner = CliRunner()
    for command, shown in catalog.LISTINGS.items():
        result = runner.invoke(app, [command], catch_exceptions=False)
        assert result.exit_code == 0, command
        lines = result.output.splitlines()
        for listed_as, prefix in shown.registries:
            registry = REGISTRIES[listed_as]
            missing = [name for name in registry if f"{prefix + name:<22} {registry.help(name)}" not in lines]
            assert missing == [], (command, missing)
        assert len(lines) == sum(len(REGISTRIES[r].registered()) for r, _ in shown.registries) + len(shown.extra)
    scorers = " | ".join(sorted(REGISTRIES["SCORERS"]))
    assert scorers in " ".join(runner.invoke(app, ["fuse", "-h"], catch_exceptions=False).output.split())


def test_a_registration_the_scan_cannot_see_fails_at_import():
    from ltbench.plugins import METHODS

    with pytest.raises(ValueError, match=r"method 'not-listed' .* not found by ltbench/plugins/catalog\.py's scan"):
        METHODS.register("not-listed")(type("NotListed", (), {"__module__": "ltbench.methods.nowhere"}))
    assert "not-listed" not in METHODS
    losses = plugins.NameRegistry("loss", "LOSSES")  # a fresh one: ltbench.losses may hold "ce" already
    with pytest.raises(ValueError, match=r"loss 'ce' \(module [\w.]+\) is not found"):
        losses.register("ce")(type("Elsewhere", (), {"__module__": "ltbench.fusion.scorers"}))  # a listed name, elsewhere
    # a third-party plug-in (a module outside the package) registers without the scan
    losses.register("their-loss", help="theirs")(type("Theirs", (), {"__module__": "their_package.losses"}))
    assert losses.help("their-loss") == "theirs"
    losses.register("ce")(type("Ce", (), {"__module__": "ltbench.losses"}))  # where the scan saw it: fine
    assert losses.help("ce") == ""


PLUGIN = '''
    from ltbench.plugins import LOSSES, METHODS, SAMPLERS, register_method


    @LOSSES.register("focal", help="focal loss: the help keyword wins")
    class Focal:
        """Not this line."""


    @register_method("my-method")
    class MyMethod:
        """My method: the first docstring line.

        Not this one.
        """


    def _make(k):
        return [k]


    def _builder():
        """A builder's docstring."""


    SAMPLERS.register("made", help="made by a function: the call form")(_make(3))
    SAMPLERS.register("plain")(_builder)
    NAME = "dynamic"
    SAMPLERS.register(NAME)(_builder)  # not a literal: invisible, so the import check catches it
    registry.register("an-expert", {}, {})  # the on-disk store of experts, not a registry of plugins.py


    def later():
        LOSSES.register("inside")(Focal)  # not at module level: invisible too
'''


def test_the_scan_finds_a_plugin_written_into_a_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mine.py").write_text(textwrap.dedent(PLUGIN))
    (tmp_path / "other.py").write_text("x = 1\n")
    assert catalog.scan(tmp_path, "pkg") == {
        "LOSSES": {"focal": ("pkg.sub.mine", "focal loss: the help keyword wins")},
        "METHODS": {"my-method": ("pkg.sub.mine", "My method: the first docstring line")},
        "SAMPLERS": {"made": ("pkg.sub.mine", "made by a function: the call form"),
                     "plain": ("pkg.sub.mine", "A builder's docstring")},
    }
    assert catalog.scan(tmp_path, "pkg", "LOSSES") == {"LOSSES": {"focal": ("pkg.sub.mine",
                                                                            "focal loss: the help keyword wins")}}


def test_the_scan_and_the_listings_do_not_import_torch():
    script = ("import json, sys\n"
              "from ltbench.plugins import catalog\n"
              "rows = {command: catalog.rows(command) for command in catalog.LISTINGS}\n"
              "tables = {name: catalog.table(name) for name in ('OOD_SETS', 'LOSSES')}\n"
              "print(json.dumps([sorted(m for m in ('torch', 'timm', 'ltbench.losses') if m in sys.modules),"
              " {c: len(r) for c, r in rows.items()}]))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded, counts = json.loads(proc.stdout)
    assert loaded == [] and all(counts.values()), (loaded, counts)
