"""The training loop: budgets, frozen parameters, determinism, checkpoints."""
import pytest
import torch

from conftest import TINY_DATA
from ltbench.spec import read_budget, resolve_run
from ltbench.store.index import Registry
from ltbench.training.trainer import Trainer, lr_factor
from ltbench.training.pipeline import build_all, train_expert


def tiny_run(method="linear-probe", budget="2epochs", **sets):
    return resolve_run({"backbone": "vit-tiny-test", "method": method, "budget": budget},
                          {**TINY_DATA, **sets})


def test_same_seed_same_numbers(tmp_path):
    reg = Registry(tmp_path)
    a = train_expert(tiny_run("full-ft", "3steps").replace(name="a"), reg, quiet=True)
    b = train_expert(tiny_run("full-ft", "3steps").replace(name="b"), reg, quiet=True)
    c = train_expert(tiny_run("full-ft", "3steps", seed=1).replace(name="c"), reg, quiet=True)
    assert torch.equal(a.logits("test"), b.logits("test"))
    assert a.metrics == b.metrics
    assert not torch.equal(a.logits("test"), c.logits("test"))


@pytest.mark.parametrize("budget,unit,amount", [("5steps", "steps", 5), ("2epochs", "epochs", 2)])
def test_budget_is_spent_exactly(tmp_path, budget, unit, amount):
    ex = train_expert(tiny_run("full-ft", budget), Registry(tmp_path), quiet=True)
    spent = ex.meta["spent"]
    assert spent[unit] == pytest.approx(amount)
    assert spent["flops"] > 0 and spent["seconds"] > 0


def test_flops_budget_stops_before_overrun(tmp_path):
    run = tiny_run("full-ft", "3steps")
    per_step = train_expert(run, Registry(tmp_path / "a"), quiet=True).meta["spent"]["flops"] / 3
    ex = train_expert(run.replace(budget=read_budget(f"{per_step * 4.5:.6e}flops")), Registry(tmp_path / "b"), quiet=True)
    assert ex.meta["spent"]["steps"] == 4 and ex.meta["spent"]["flops"] <= per_step * 4.5


def test_linear_probe_leaves_backbone_untouched_and_optimizer_holds_only_trainables():
    run = tiny_run("linear-probe", "1epochs", solver="sgd")  # the minibatch probe (AdamW)
    data, method = build_all(run)
    before = {k: v.clone() for k, v in method.backbone.state_dict().items()}
    trainer = Trainer(method, data, run, torch.device("cpu"), quiet=True)
    seen = []
    orig = torch.optim.AdamW.step

    def spy(self, *a, **kw):
        out = orig(self, *a, **kw)
        seen.append(sum(p.numel() for g in self.param_groups for p in g["params"] if p in self.state))
        return out

    torch.optim.AdamW.step = spy
    try:
        trainer.fit(read_budget("1epochs"))
    finally:
        torch.optim.AdamW.step = orig
    assert all(torch.equal(before[k], v) for k, v in method.backbone.state_dict().items())
    assert seen and seen[-1] == method.param_counts()["trainable"] == 32 * 10 + 10
    assert all(p.grad is None for p in method.backbone.parameters())


def test_full_ft_trains_the_backbone(tmp_path):
    run = tiny_run("full-ft", "2steps")
    ex = train_expert(run, Registry(tmp_path), quiet=True)
    delta = ex.delta()
    assert any(k.startswith("backbone.") for k in delta)
    _, fresh = build_all(run)
    k = "backbone.blocks.0.mlp.fc1.weight"
    assert not torch.equal(delta[k], fresh.state_dict()[k])


def test_lr_schedule_warms_up_then_decays():
    assert lr_factor(0.0, 0.1) < lr_factor(0.05, 0.1) < lr_factor(0.1, 0.1) == pytest.approx(1.0)
    assert lr_factor(0.5, 0.1) < 1.0 and lr_factor(1.0, 0.1) == pytest.approx(0.0)


def test_a_floor_a_start_and_a_least_number_of_warm_up_steps(tmp_path):
    """LT-Soups' code: the warm-up lasts max(20 steps, 1 %) and starts at 1e-6 × lr; the cosine ends at
    0.1 × lr. The oracle: lr_t = lr·(s + (1 − s)·t/W) for t < W, then lr·(f + (1 − f)·(1 + cos(π·(t − W)/(T − W)))/2)."""
    import csv
    import math

    lr, T, W, s, f = 0.01, 20, 5, 1e-6, 0.1
    run = tiny_run("vpt-deep", f"{T}steps", optimizer="adamw", lr=lr, warmup=0.01, warmup_steps=W,
                   warmup_start=s, lr_floor=f)
    ex = train_expert(run, registry=Registry(tmp_path), quiet=True)
    seen = [float(r["lr"]) for r in csv.DictReader(open(ex.path / "history.csv")) if r["lr"]]
    want = [lr * (s + (1 - s) * t / W) if t < W else
            lr * (f + (1 - f) * 0.5 * (1 + math.cos(math.pi * (t - W) / (T - W)))) for t in range(T)]
    assert seen == pytest.approx(want, rel=1e-6, abs=1e-12)
    assert lr_factor(1.0, 0.1) == 0.0 and lr_factor(0.0, 0.1) == pytest.approx(0.01)  # the defaults: as before
    ref = resolve_run({"backbone": "vit-tiny-test", "method": "lt-soups", "budget": "100steps"},
                      {**TINY_DATA, "preset": "reference"}).method_config
    assert (ref.warmup, ref.warmup_steps, ref.warmup_start, ref.lr_floor) == (0.01, 20, 1e-6, 0.1)


def test_checkpoint_written_at_each_epoch_end(tmp_path):
    reg = Registry(tmp_path)
    run = tiny_run("full-ft", "2epochs").replace(name="resumed")
    data, method = build_all(run)
    trainer = Trainer(method, data, run, torch.device("cpu"), ckpt_dir=reg.home / "runs" / "resumed", quiet=True)
    torch.manual_seed(run.seed)
    trainer.fit(read_budget("1epochs"))
    ckpt = torch.load(reg.home / "runs" / "resumed" / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 0 and ckpt["spent"]["epochs"] == pytest.approx(1)


def test_bf16_autocast_on_cpu_trains_close_to_fp32(tmp_path):
    """`amp=true` runs the CUDA speed path's bf16 autocast on CPU: it must engage (the weights
    differ from fp32's) and stay close to fp32 (the loss and optimiser remain fp32)."""
    reg = Registry(tmp_path)
    runs = {amp: train_expert(tiny_run("vpt-deep", "3steps", amp=amp).replace(name=f"amp-{amp}"), reg, quiet=True)
            for amp in (True, False)}
    a, b = runs[True].delta(), runs[False].delta()
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert 0 < diff < 0.05, diff
    assert runs[True].config["amp"] is True and runs[True].logits("test").dtype == torch.float32
    assert runs[True].meta["spent"]["flops"] == runs[False].meta["spent"]["flops"]


def test_compiled_training_forward_matches_eager(tmp_path, monkeypatch):
    """`compile=<backend>` wraps the training forward in torch.compile (aot_eager here: tracing
    without a C++ toolchain); the FLOP-counted first step stays eager, so FLOPs agree too."""
    reg = Registry(tmp_path)
    calls, real = [], torch.compile

    def spy(model, **kw):
        calls.append(kw)
        return real(model, **kw)

    monkeypatch.setattr(torch, "compile", spy)
    runs = {c: train_expert(tiny_run("lpt", "4steps", compile=c, prompt_len=2, pool_size=4).replace(name=f"c-{c}"),
                            reg, quiet=True) for c in ("aot_eager", False)}
    a, b = runs["aot_eager"].delta(), runs[False].delta()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    assert runs["aot_eager"].meta["spent"]["flops"] == runs[False].meta["spent"]["flops"]
    assert calls == [{"backend": "aot_eager"}] * 2  # once per LPT phase, none for the eager run


@pytest.mark.parametrize("key,value,expected", [
    ("amp", "maybe", "--set amp='maybe': expected auto or true or false"),
    ("num_workers", -1, "--set num_workers=-1: expected auto or an integer >= 0"),
    ("compile", "warp-drive", "--set compile='warp-drive': expected true, false or a torch.compile backend"),
])
def test_speed_switches_are_checked_before_any_work(key, value, expected):
    from ltbench.errors import ConfigError

    with pytest.raises(ConfigError, match=__import__("re").escape(expected)):
        tiny_run("vpt-deep", "3steps", **{key: value})


def test_checks_due_at_once_share_one_evaluation():
    """A step that passes several of a phase's val checks (a 1-step branch of LT-Soups passes all
    of them) evaluates once: the weights are the same for each, so is the score, recorded for each."""
    from types import SimpleNamespace

    from ltbench.training.trainer import _Checks

    evaluations, seen = [], []
    trainer = SimpleNamespace(val_score=lambda meter: evaluations.append(len(evaluations)) or 0.1 * len(evaluations))
    phase = SimpleNamespace(val_checks=4, on_val=lambda score: seen.append(score()))
    checks = _Checks(trainer, phase, SimpleNamespace(budget=SimpleNamespace(unit="epochs")))
    checks.due(0.2)
    assert evaluations == [] and checks.done == 0
    checks.due(0.6)  # passes 1/4 and 2/4
    assert len(evaluations) == 1 and checks.done == 2 and checks.scores == [0.1, 0.1] and seen == [0.1]
    checks.due(1.0)  # 3/4 and 4/4
    assert len(evaluations) == 2 and checks.done == 4 and checks.scores == [0.1, 0.1, 0.2, 0.2]
    checks.due(1.0)
    assert len(evaluations) == 2  # nothing left to check


@pytest.mark.parametrize("groups, sizes", [("standard", {"many": 1, "medium": 3, "few": 6}),
                                           ("lpt", {"many": 1, "medium": 2, "few": 7})])
def test_a_run_records_shot_groups_from_training_counts_under_its_protocol(tmp_path, groups, sizes):
    """Tiny fashion-mnist-lt: train counts 40 30 23 18 14 11 8 6 5 4, test 6 a class. With many=30
    and few=18 the class of 30 is medium, the class of 18 medium under `standard` and few under
    `lpt`; the test split's counts (all 6) would make every class few."""
    run = tiny_run("linear-probe", "1steps", solver="sgd", many=30, few=18, groups=groups)
    ex = train_expert(run, Registry(tmp_path), quiet=True)
    assert ex.meta["class_counts"] == [40, 30, 23, 18, 14, 11, 8, 6, 5, 4]
    assert ex.meta["shot_groups"] == sizes and ex.config["groups"] == groups


class _Recorder:
    """A trainer callback that logs every event and keeps a count in the checkpoint."""
    key = "recorder"

    def __init__(self, log):
        self.log, self.count = log, 0

    def on_phase_start(self, trainer, phase, before, fraction):
        self.log.append(("start", phase.name, round(fraction, 6)))

    def on_step(self, trainer, event):
        self.count += 1
        self.log.append(("step", event.phase, event.spent.steps, round(event.run_progress, 6)))

    def on_epoch_end(self, trainer, run):
        self.log.append(("epoch", run.epoch))

    def on_phase_end(self, trainer, phase):
        self.log.append(("end", phase.name))

    def state(self):
        return self.count

    def load_state(self, state):
        self.count = state or 0


def test_one_list_of_callbacks_hears_every_event_in_order_and_resumes_with_the_checkpoint(tmp_path):
    from ltbench.training.callbacks import Callback
    from ltbench.training.checkpoint import Checkpoint
    from ltbench.training.tracking import Tracker

    class Recorder(_Recorder, Callback):
        pass

    run = tiny_run("full-ft", "2epochs", batch_size=64)
    data, method = build_all(run)
    log = []
    rec = Recorder(log)
    trainer = Trainer(method, data, run, torch.device("cpu"), ckpt_dir=tmp_path / "run", quiet=True, callbacks=[rec])
    assert isinstance(trainer.callbacks[-1], Checkpoint) and isinstance(trainer.callbacks[-2], Tracker)
    trainer.fit(run.budget)
    steps = [e for e in log if e[0] == "step"]
    n = len(steps)
    assert n >= 2 and n % 2 == 0 and log[0] == ("start", "full", 0.0) and log[-1] == ("end", "full")
    assert [e[2] for e in steps] == list(range(1, n + 1))
    assert [e[3] for e in steps] == [round((k + 1) / n, 6) for k in range(n)]  # the whole run's progress
    assert [e[0] for e in log] == ["start"] + (["step"] * (n // 2) + ["epoch"]) * 2 + ["end"]
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["callbacks"]
    # the checkpoint, last, saw the others' state: every step and the tracker's epoch-end validation point
    assert saved["recorder"] == n and len(saved["history"]) == n and saved["history"][-1]["val_acc"] is not None

    fresh_rec = Recorder([])
    again = Trainer(method, data, run, torch.device("cpu"), ckpt_dir=tmp_path / "run", quiet=True, callbacks=[fresh_rec])
    again.fit(run.budget, resume=True)
    assert fresh_rec.count == n and len(again.tracker.rows) == n  # restored, and nothing left to train


def test_a_failing_callback_still_closes_the_phase_for_every_callback():
    from ltbench.training.callbacks import Callback

    class Boom(Callback):
        def on_step(self, trainer, event):
            raise RuntimeError("pruned")

    class Closer(_Recorder, Callback):
        pass

    log = []
    run = tiny_run("full-ft", "3steps")
    data, method = build_all(run)
    trainer = Trainer(method, data, run, torch.device("cpu"), quiet=True, callbacks=[Closer(log), Boom()])
    with pytest.raises(RuntimeError, match="pruned"):
        trainer.fit(run.budget)
    assert log[-1] == ("end", "full") and [e[0] for e in log] == ["start", "step", "end"]
