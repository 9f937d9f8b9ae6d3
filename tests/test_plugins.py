"""Plug-ins written outside the package (LTBENCH_PLUGINS, entry points): listed and planned like ltbench's own.

Each plug-in below is a module written into a temporary folder, nowhere in the package; the
listings read its source (nothing imported), a registry lookup imports it.
"""
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import yaml
from typer.testing import CliRunner

from conftest import TINY_DATA
from ltbench import plugins
from ltbench.cli import app
from ltbench.plugins import external

runner = CliRunner()

#: kind -> (file stem, its source, the listing command, what a suite changes to use it, what --plan shows of it)
PLUGINS = {
    "dataset": ("my_dataset", '''
        from ltbench.data import create_dataset
        from ltbench.plugins import DATASETS


        @DATASETS.register("mine", help="Fashion-MNIST-LT at 30 images in the head class, imbalance 10")
        def small_fashion_mnist(root=None, seed=0, head: int = 30):
            dataset = create_dataset("fashion-mnist-lt", root=root, seed=seed, head=head, imbalance=10,
                                     val_per_class=4, test_per_class=6)
            dataset.name = "mine"
            return dataset
        ''', "datasets", {"dataset": "mine", "set": {}}, None),
    "backbone": ("my_backbone", '''
        from ltbench.backbones.factory import create_backbone
        from ltbench.plugins import BACKBONES


        @BACKBONES.register("mine")
        def tiny(img_size=None, weights=None, pretrained=True):
            """The tiny random test ViT under another name."""
            return create_backbone("vit-tiny-test", img_size=img_size, weights=weights, pretrained=pretrained)
        ''', "backbones", {"backbone": "mine"}, "│ mine "),
    "loss": ("my_loss", '''
        from ltbench.losses import LogitAdjusted
        from ltbench.plugins import LOSSES


        @LOSSES.register("mine", help="logit-adjusted cross-entropy at tau 0.5")
        class HalfAdjusted(LogitAdjusted):
            def __init__(self, class_counts):
                super().__init__(class_counts, tau=0.5)
        ''', "losses", {"runs": [{"method": "vpt-deep", "set": {"prompt_len": 2, "loss": "mine"}}]}, "loss=mine"),
    "sampler": ("my_sampler", '''
        from ltbench.data.samplers import ClassWeightedSampler
        from ltbench.plugins import SAMPLERS


        @SAMPLERS.register("mine", help="a class with probability ∝ n_c^0.25, then one of its images")
        def quarter_root(labels, seed, num_samples=None):
            return ClassWeightedSampler(labels, seed, num_samples, power=0.25)
        ''', "samplers", {"runs": [{"method": "vpt-deep", "set": {"prompt_len": 2, "sampler": "mine"}}]},
        "sampler=mine"),
    "scorer": ("my_scorer", '''
        import torch

        from ltbench.fusion.core import FusionModel, normalise_base
        from ltbench.plugins import SCORERS


        @SCORERS.register("mine", help="the first expert alone: all weight on it, nothing fitted")
        def first_expert(ctx):
            weights = torch.zeros(ctx.stack.num_experts, ctx.stack.num_groups)
            weights[0] = 1.0
            return FusionModel(normalise_base(weights), ctx.groups), {}
        ''', "scorers", {"runs": [{"method": "linear-probe"}, {"label": "second", "method": "linear-probe"}],
                         "fusions": [{"label": "fused", "experts": ["linear-probe", "second"], "scorer": "mine",
                                      "trials": 1}]}, "fuse:mine"),
}

SUITE = {"name": "plug", "dataset": "fashion-mnist-lt", "backbone": "vit-tiny-test", "budget": "3steps",
         "seeds": [0], "set": dict(TINY_DATA), "runs": [{"method": "linear-probe"}]}


@pytest.fixture
def outside(tmp_path, monkeypatch):
    """Write plug-in files into a folder outside the package and point LTBENCH_PLUGINS at it; their
    registrations, their modules and the loader's state are gone afterwards."""
    monkeypatch.setattr(external, "_loaded", external._Loaded())
    folder = tmp_path / "my-plugins"
    folder.mkdir()
    written = []

    def write(stem: str, source: str, into=None):
        path = (into or folder) / f"{stem}.py"
        path.write_text(textwrap.dedent(source))
        written.append(stem)
        monkeypatch.setenv(external.ENV, str(folder))
        return path

    yield write
    for registry in vars(plugins).values():
        if isinstance(registry, plugins.NameRegistry):
            for name, obj in list(registry._items.items()):
                if getattr(obj, "__module__", None) in written:
                    del registry._items[name], registry._help[name]
    for stem in written:
        sys.modules.pop(stem, None)


def listed(command: str) -> dict[str, str]:
    result = runner.invoke(app, [command], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return dict(line.split(None, 1) for line in result.output.splitlines())


def plan_output(tmp_path, suite: dict) -> str:
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    result = runner.invoke(app, ["bench", str(path), "--plan"], terminal_width=300)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("kind", PLUGINS)
def test_an_outside_plugin_is_listed_and_planned(kind, outside, tmp_path):
    stem, source, command, suite, shown = PLUGINS[kind]
    outside(stem, source)
    help_ = source.split('help="')[1].split('"')[0] if 'help="' in source else "The tiny random test ViT under another name"
    assert listed(command)["mine"] == help_
    assert stem not in sys.modules  # the listing read the file: nothing was imported
    out = plan_output(tmp_path, {**SUITE, **suite})
    if shown is not None:
        assert shown in out
    assert "unknown" not in out  # the plug-in was built: its images and FLOPs are counted
    registry = {"dataset": plugins.DATASETS, "backbone": plugins.BACKBONES, "loss": plugins.LOSSES,
                "sampler": plugins.SAMPLERS, "scorer": plugins.SCORERS}[kind]
    assert registry.get("mine").__module__ == stem


def test_a_dataset_plugin_sets_the_planned_image_count(outside, tmp_path):
    """The plan counts the plug-in's own training images (Fashion-MNIST-LT as the plug-in builds it)."""
    from ltbench.data import create_dataset

    stem, source, _, suite, _ = PLUGINS["dataset"]
    outside(stem, source)
    images = len(create_dataset("mine").train)
    assert images != len(create_dataset("fashion-mnist-lt", **TINY_DATA).train)
    assert re.search(rf"│\s+{images} │", plan_output(tmp_path, {**SUITE, **suite}))


def test_the_plan_names_an_outside_dataset(outside, tmp_path):
    stem, source, _, suite, _ = PLUGINS["dataset"]
    outside(stem, source)
    assert "mine" in plan_output(tmp_path, {**SUITE, **suite})


def test_without_the_plugin_the_name_is_unknown(tmp_path, monkeypatch):
    monkeypatch.delenv(external.ENV, raising=False)
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({**SUITE, "backbone": "mine"}))
    result = runner.invoke(app, ["bench", str(path), "--plan"])
    assert result.exit_code == 2 and "unknown backbone 'mine'" in result.output
    assert "mine" not in listed("backbones")


def test_every_py_file_of_a_folder_and_single_files_are_loaded(outside, tmp_path, monkeypatch):
    loss_file = outside(*PLUGINS["loss"][:2])
    (tmp_path / "elsewhere").mkdir()
    sampler_file = outside(*PLUGINS["sampler"][:2], into=tmp_path / "elsewhere")
    monkeypatch.setenv(external.ENV, os.pathsep.join([str(loss_file.parent), str(sampler_file)]))
    assert "mine" in listed("losses") and "mine" in listed("samplers")
    assert "mine" in plugins.LOSSES and "mine" in plugins.SAMPLERS


def test_a_registration_the_listing_cannot_see_fails_naming_the_file(outside):
    path = outside("dynamic", '''
        from ltbench.plugins import LOSSES
        from ltbench.losses import LogitAdjusted

        class Mine(LogitAdjusted):
            pass


        NAME = "built-" + "at-run-time"
        LOSSES.register(NAME)(Mine)
        ''')
    with pytest.raises(external.PluginError, match=rf"plug-in {path}:10 failed to import: .*\(module dynamic\) is not found by"):
        "anything" in plugins.LOSSES  # noqa: B015  (a lookup imports the plug-ins)


def test_a_plugin_may_not_take_a_name_of_ltbench(outside):
    import ltbench.losses  # noqa: F401  (its names are registered)

    outside("taken", '''
        from ltbench.losses import LogitAdjusted
        from ltbench.plugins import LOSSES

        class Mine(LogitAdjusted):
            pass


        LOSSES.register("ce")(Mine)
        ''')
    with pytest.raises(external.PluginError, match=r"taken.py:9 failed to import: ValueError: loss 'ce' registered twice"
                                                   r" \(by module ltbench.losses, then taken\)"):
        plugins.LOSSES.get("ce")


def test_a_plugin_may_take_no_name_of_ltbench_even_before_ltbench_registers_it():
    losses = plugins.NameRegistry("loss", "LOSSES")  # empty, as LOSSES is before ltbench.losses is imported
    with pytest.raises(ValueError, match=r"loss 'ce' \(module their_package\) is ltbench's own \(module ltbench.losses\)"):
        losses.register("ce")(type("Theirs", (), {"__module__": "their_package"}))
    assert "ce" not in losses


def test_a_plugin_file_may_not_shadow_a_module(outside):
    assert "this" not in sys.modules  # a standard module nothing imports: found, not taken yet
    origin = importlib.util.find_spec("this").origin
    path = outside("this", PLUGINS["loss"][1])
    with pytest.raises(external.PluginError, match=rf"plug-in {path}: its module name 'this' is taken by {origin};"
                                                   r" rename the file"):
        plugins.LOSSES.get("mine")
    assert "this" not in sys.modules


def test_a_plugin_may_look_names_up_while_it_is_imported(outside):
    outside("looks_up", '''
        from ltbench.losses import LogitAdjusted
        from ltbench.plugins import LOSSES

        @LOSSES.register("looked-up", help="registered before the lookup")
        class Mine(LogitAdjusted):
            pass


        KNOWN = sorted(LOSSES)  # a lookup while this module is half-imported
        ''')
    assert "looked-up" in plugins.LOSSES
    assert "looked-up" in sys.modules["looks_up"].KNOWN


def test_a_failed_plugin_fails_every_lookup_the_same_way(outside):
    path = outside("broken", BROKEN)
    errors = []
    for _ in range(2):
        with pytest.raises(external.PluginError) as e:
            plugins.SAMPLERS.get("instance")
        errors.append(str(e.value))
    assert errors[0] == errors[1] == (f"plug-in {path}:10 failed to import: RuntimeError: this plug-in cannot start")
    assert "broken" not in sys.modules


BROKEN = '''
    from ltbench.plugins import LOSSES


    @LOSSES.register("broken")
    class Broken:
        """Fails on import."""


    raise RuntimeError("this plug-in cannot start")
    '''


def ltbench_cli(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ltbench", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})}, cwd=cwd)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_a_broken_plugin_is_one_error_line_naming_the_file(tmp_path):
    (tmp_path / "broken.py").write_text(textwrap.dedent(BROKEN))
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump(SUITE))
    env = {external.ENV: str(tmp_path), "LTBENCH_HOME": str(tmp_path / "home")}
    line = one_error_line(ltbench_cli("bench", str(suite), "--plan", env=env))
    assert f"plug-in {tmp_path / 'broken.py'}:10 failed to import: RuntimeError: this plug-in cannot start" in line
    listing = ltbench_cli("losses", env=env)  # the listing reads the file, it does not run it
    assert listing.returncode == 0 and "broken" in listing.stdout

    (tmp_path / "broken.py").write_text("def oops(:\n")
    line = one_error_line(ltbench_cli("losses", env=env))
    assert f"plug-in {tmp_path / 'broken.py'}:1: SyntaxError" in line
    assert ltbench_cli("fuse", "-h", env=env).returncode == 0  # help still works

    missing = tmp_path / "nowhere.py"
    line = one_error_line(ltbench_cli("losses", env={**env, external.ENV: str(missing)}))
    assert line == f"error: {external.ENV}: {missing}: no such file or folder"


def test_an_entry_point_is_listed_and_loaded(tmp_path):
    """An installed package's entry point in the group `ltbench.plugins` (a .dist-info on the path)."""
    site = tmp_path / "site"
    (site / "their_package").mkdir(parents=True)
    (site / "their_package" / "__init__.py").write_text("")
    (site / "their_package" / "losses.py").write_text(textwrap.dedent(PLUGINS["loss"][1]))
    info = site / "their_package-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: their-package\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[ltbench.plugins]\nlosses = their_package.losses\n")
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    env.pop(external.ENV, None)
    listing = ltbench_cli("losses", env=env)
    assert listing.returncode == 0 and "mine                   logit-adjusted cross-entropy at tau 0.5" in \
        listing.stdout.splitlines(), listing.stderr
    script = ("import json, sys\nfrom ltbench.plugins import LOSSES\n"
              "print(json.dumps([LOSSES.get('mine').__module__, 'their_package.losses' in sys.modules]))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == ["their_package.losses", True]


def test_the_listings_import_neither_torch_nor_the_plugins(tmp_path):
    stem, source, *_ = PLUGINS["backbone"]
    (tmp_path / f"{stem}.py").write_text(textwrap.dedent(source))
    script = ("import json, sys\nfrom ltbench.plugins import catalog\n"
              "rows = catalog.rows('backbones')\n"
              f"print(json.dumps([[m for m in ('torch', {stem!r}) if m in sys.modules], [r[0] for r in rows]]))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, external.ENV: str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    loaded, names = json.loads(proc.stdout)
    assert loaded == [] and "mine" in names and "vit-tiny-test" in names
