"""Using a trained expert: `ltbench predict`, `ltbench.load_expert`, `ltbench export`.

Experts are trained for real on the tiny fashion-mnist-lt (conftest.TINY_DATA) with the tiny
random backbone; the test images are that split's own images written as PNG files, so the
registered test logits are the oracle for what `predict` must answer.
"""
import json

import pytest
import torch
from typer.testing import CliRunner

import ltbench
from conftest import TINY_DATA
from ltbench.cli import app
from ltbench.spec import resolve_run
from ltbench.errors import ExpertError
from ltbench.fusion import fuse_experts
from ltbench.store.index import Registry
from ltbench.training.pipeline import build_all, train_expert

runner = CliRunner()
FP16_ATOL = 1e-2  # registered logits are stored in fp16


def tiny(method, name, budget="2epochs", **sets):
    return resolve_run({"backbone": "vit-tiny-test", "method": method, "budget": budget, "name": name},
                          {**TINY_DATA, **sets})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A registry with LPT, a linear probe, their MoE fusion, a full fine-tune and a probe started
    from it (init=: its backbone tensors are not in the probe's own delta), and the test images."""
    root = tmp_path_factory.mktemp("experts")
    reg = Registry(root / "runs")
    lpt = tiny("lpt", "lpt", prompt_len=2, pool_size=4)
    train_expert(lpt, reg, quiet=True)
    train_expert(tiny("linear-probe", "lp"), reg, quiet=True)
    fuse_experts(["lpt", "lp"], "moe", name="moe", trials=5, registry=reg, quiet=True)
    train_expert(tiny("full-ft", "ft", "3steps", lr=0.01, backbone_lr_scale=1.0), reg, quiet=True)
    train_expert(tiny("linear-probe", "lp-on-ft", init="ft"), reg, quiet=True)
    test = build_all(lpt, reg)[0].test
    folder = root / "images" / "test"
    folder.mkdir(parents=True)
    for i in range(len(test)):  # nested folders: predict searches recursively, in sorted order
        sub = folder / f"part{i // 20}"
        sub.mkdir(exist_ok=True)
        test.image(i).save(sub / f"{i:04d}.png")
    return {"reg": reg, "root": root, "images": folder, "test": test}


def invoke(world, *args):
    return runner.invoke(app, list(args), env={"LTBENCH_HOME": str(world["reg"].home)}, catch_exceptions=False)


def registered(world, name):
    return world["reg"].get(name).logits("test")


@pytest.mark.parametrize("name", ["lpt", "moe", "lp-on-ft"])
def test_predict_agrees_with_registered_test_predictions(world, name):
    r = invoke(world, "predict", name, str(world["images"]), "--top", "3", "--format", "json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert [int(row["file"][-8:-4]) for row in rows] == list(range(len(world["test"])))
    want = registered(world, name)
    probs = torch.softmax(want, 1)
    top1 = torch.tensor([row["predictions"][0]["index"] for row in rows])
    # the registered argmax; where fp16 storage rounded the top two to a tie, either of the tied classes
    tied = want == want.max(1, keepdim=True).values
    assert tied[torch.arange(len(top1)), top1].all()
    single = tied.sum(1) == 1
    assert single.float().mean() > 0.9 and torch.equal(top1[single], want.argmax(1)[single])
    names = world["reg"].get(name).meta["classnames"]
    for row, p in zip(rows, probs):
        got = row["predictions"]
        assert len(got) == 3 and [g["prob"] for g in got] == sorted((g["prob"] for g in got), reverse=True)
        assert got[0]["class"] == names[got[0]["index"]]
        assert got[0]["prob"] == pytest.approx(p.max().item(), abs=FP16_ATOL)


@pytest.mark.parametrize("name", ["lpt", "moe", "lp-on-ft"])
def test_load_expert_is_an_eval_module_with_its_preprocessing(world, name):
    reg, test = world["reg"], world["test"]
    model = ltbench.load_expert(name, registry=reg)
    assert isinstance(model, torch.nn.Module) and not model.training
    model.train()  # stays an inference module
    assert not model.training
    assert model.classnames == reg.get(name).meta["classnames"]
    x = model.transform(test.image(0))
    assert x.shape == (3, 32, 32)
    logits = model(torch.stack([model.transform(test.image(i)) for i in range(len(test))]))
    # probabilities, not logits: a fusion's registered log-probabilities were computed from its
    # constituents' fp16-stored logits, and its offset network amplifies that rounding a little
    torch.testing.assert_close(torch.softmax(logits, 1), torch.softmax(registered(world, name), 1),
                               atol=FP16_ATOL, rtol=0)
    assert not any(p.requires_grad for p in model.parameters())


def test_export_is_one_file_that_loads_without_the_registry(world, tmp_path, monkeypatch):
    reg, test = world["reg"], world["test"]
    x = torch.stack([ltbench.load_expert("lpt", registry=reg).transform(test.image(i)) for i in range(len(test))])
    live = {}
    for name in ("lpt", "moe", "lp-on-ft"):
        r = invoke(world, "export", name, str(tmp_path / f"{name}.safetensors"))
        assert r.exit_code == 0, r.output
        live[name] = ltbench.load_expert(name, registry=reg)(x)
    monkeypatch.setenv("LTBENCH_HOME", str(tmp_path / "elsewhere"))  # another machine: no registry at all
    for name in ("lpt", "moe", "lp-on-ft"):
        model = ltbench.load_expert(tmp_path / f"{name}.safetensors")
        assert model.name == name and model.config == reg.get(name).config
        torch.testing.assert_close(model(x), live[name], atol=1e-6, rtol=0)  # the same model as from the registry
    assert not (tmp_path / "elsewhere").exists()
    # predict reads an exported file too
    r = runner.invoke(app, ["predict", str(tmp_path / "moe.safetensors"), str(world["images"]), "--format", "csv",
                            "--top", "1"], catch_exceptions=False)
    lines = r.stdout.splitlines()
    assert lines[0] == "file,rank,class,index,prob" and len(lines) == len(test) + 1
    moe = registered(world, "moe")
    picked = torch.tensor([int(line.split(",")[3]) for line in lines[1:]])
    assert (moe[torch.arange(len(picked)), picked] == moe.max(1).values).all()  # a registered top-1 (fp16 ties)


def test_exported_expert_refuses_a_different_backbone(world, tmp_path):
    """The file records a fingerprint of the frozen backbone; other weights are an error."""
    file = ltbench.experts.export_expert("lpt", tmp_path / "lpt.safetensors", registry=world["reg"])
    from ltbench.backbones.factory import create_backbone

    state = create_backbone("vit-tiny-test").model.state_dict()
    torch.save(state, tmp_path / "same.pt")
    ltbench.load_expert(file, weights=str(tmp_path / "same.pt"))  # the same weights from a file: fine
    state["blocks.1.attn.qkv.weight"] = state["blocks.1.attn.qkv.weight"] + 1e-3
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(ExpertError, match="different 'vit-tiny-test' backbone"):
        ltbench.load_expert(file, weights=str(tmp_path / "other.pt"))


def test_predict_input_errors_are_one_line_before_any_work(world, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.png").write_bytes(b"not a png")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    cases = [
        (["predict", "lpt", str(tmp_path / "nope.png")], "nope.png: no such file or folder"),
        (["predict", "lpt", str(tmp_path / "empty")], "no image files in this folder"),
        (["predict", "lpt", str(world["images"]), str(tmp_path / "bad.png")], "bad.png: not an image PIL can read"),
        (["predict", "lptt", str(world["images"])], "Did you mean 'lpt'"),
        (["predict", "lpt", str(world["images"]), "--format", "xml"], "unknown format 'xml'"),
        (["predict", "lpt", str(world["images"]), "--top", "0"], "--top must be at least 1"),
        (["predict", str(tmp_path / "plain.safetensors"), str(world["images"])], "not an ltbench expert export"),
        (["export", "nope", str(tmp_path / "x.safetensors")], "no expert named 'nope'"),
        (["show", "moe", "--history"], "expert 'moe' has no history.csv (a fused expert is fitted, not trained)"),
    ]
    for args, message in cases:
        r = invoke(world, *args)
        assert r.exit_code == 2 and message in r.output and r.output.count("\n") == 1, (args, r.output)
    assert not (tmp_path / "x.safetensors").exists()


def test_predict_table_names_the_classes(world):
    r = invoke(world, "predict", "lp", str(world["images"] / "part0"), "--top", "2")
    assert r.exit_code == 0
    names = world["reg"].get("lp").meta["classnames"]
    best = registered(world, "lp")[:20].argmax(1)
    assert "predictions" in r.stdout and names[int(best[0])] in r.stdout
