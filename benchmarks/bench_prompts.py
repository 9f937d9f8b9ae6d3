#!/usr/bin/env python
"""Prompt-method performance: LPT block reuse, VPT-deep trainer overhead, frozen-parameter hygiene.

    .venv/bin/python benchmarks/bench_prompts.py            # default run, ~3-4 min on 2 idle CPU cores
    .venv/bin/python benchmarks/bench_prompts.py --quick    # smoke run, well under a minute
    .venv/bin/python benchmarks/bench_prompts.py --backbone vit_base_patch16_224 --img-size 224  # the paper's ViT-B

Everything runs in one process on random backbone weights (no files needed). Each comparison
warms both sides up, then interleaves them (A B, B A, A B, …) and reports, per side, the median
time and, as the result, the median over repetitions of the paired ratio (the two sides of one
repetition run back to back, so slow drift of the machine cancels out). Absolute times are noisy
on a shared 2-core box; the ratios are what to read.

1. LPT phase 2 (stage 2, shared prompt frozen, requires_grad only on pool/keys/head exactly as
   `train.begin_phase` sets it, SGD from `make_optimizer`): one training step
   (CE + extra_loss, backward, step) and one eval-mode no_grad forward, `reuse_blocks=True`
   (L + (L-K) blocks) against `reuse_blocks=False` (2L blocks). Same backbone object, same
   initial weights, same batch. torch's FLOP counter ratio is printed as a second prediction.
2. VPT-deep through `Trainer.fit` (budget of N steps, quiet, no checkpoint dir) against a bare
   PyTorch loop on the same timm model object: hand-written prompt insertion over
   `model.blocks`, CE loss, one SGD param group with the same hyper-parameters, the same
   DataLoader recipe (TorchSplit + train transform + class-balanced batch sampler, same seed,
   same batch size, num_workers 0). The two run interleaved step by step: a global optimizer
   post-step hook runs one bare step each time a Trainer step ends, so every trainer step has a
   bare step next to it in time. One-time set-up (dataset, model) is outside both; per-fit set-up
   (loader, optimizer, the trainer's FLOP count of its first step) is only in the first step,
   reported separately and in the whole-fit ratio.
3. After a few LPT steps (both phases) and VPT-deep steps through the Trainer: no backbone
   parameter has a .grad, and each optimizer state buffer holds exactly the phase's trainable
   element count.
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ltbench.budget import count_flops  # noqa: E402
from ltbench.spec import read_budget, resolve_run  # noqa: E402
from ltbench.data.base import TorchSplit  # noqa: E402
from ltbench.data.samplers import build_batch_sampler  # noqa: E402
from ltbench.data.transforms import build_transform  # noqa: E402
from ltbench.backbones.factory import create_backbone  # noqa: E402
from ltbench.methods import create_method  # noqa: E402
from ltbench.training.trainer import Trainer, begin_phase, make_optimizer, resolve_workers
from ltbench.training.pipeline import build_all

TARGETS = {"lpt_train": (0.88, 0.83), "lpt_infer": (0.80, 0.75), "vpt": (1.10, None)}


# -- timing helpers -------------------------------------------------------------------------
# The box is shared: other processes' CPU use during a call (from /proc/stat, minus this
# process's own CPU time) is recorded with every timing. Two torch threads on two cores slow
# down many-fold when a third runnable thread appears, so a pair of calls during which others
# used more than QUIET cores is "busy"; the result prefers the quiet pairs when there are enough.
QUIET = 0.25
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _busy_seconds() -> float:
    """CPU-seconds the whole machine has spent busy since boot (nan where /proc/stat is missing)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return float("nan")
    return (sum(v) - v[3] - v[4]) / _TICK  # all but idle and iowait; steal counts as busy


def snap() -> tuple[float, float, float]:
    return time.perf_counter(), time.process_time(), _busy_seconds()


def sample(s0, s1) -> tuple[float, float]:
    """(wall seconds, cores other processes used meanwhile) between two snaps."""
    wall = s1[0] - s0[0]
    others = max(0.0, (s1[2] - s0[2]) - (s1[1] - s0[1])) / max(wall, 1e-9)
    return wall, others


def med(xs) -> float:
    return statistics.median(xs) if xs else float("nan")


def fmt_ms(s: float) -> str:
    return f"{1e3 * s:8.1f} ms"


Samples = list[list[tuple[float, float]]]  # per repetition, per call: (wall, others' cores)


def interleave(sides: dict[str, Callable[[], object]], reps: int, k: int, warmup: int) -> dict[str, Samples]:
    """Two sides, called alternately A B B A A B B A … (k pairs a repetition); warm-up calls first.

    Call j of A and call j of B of one repetition are adjacent in time, so their ratio compares
    calls that saw (nearly) the same machine load.
    """
    a, b = list(sides)
    for name in (a, b):
        for _ in range(warmup):
            sides[name]()
    out: dict[str, Samples] = {a: [], b: []}
    for r in range(reps):
        gc.collect()
        ts: dict[str, list] = {a: [], b: []}
        for j in range(k):
            for name in ((a, b) if (r * k + j) % 2 == 0 else (b, a)):
                s0 = snap()
                sides[name]()
                ts[name].append(sample(s0, snap()))
        out[a].append(ts[a])
        out[b].append(ts[b])
    return out


def describe(label: str, a: Samples, b: Samples, names=("reuse", "naive")) -> tuple[float, str]:
    """Print times and ratios; return (result, basis): the median adjacent-pair ratio over quiet
    pairs when at least a quarter (and 3) of the pairs were quiet, else over all pairs."""
    pairs = [(x, y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)]
    wa, wb = [x[0] for x, _ in pairs], [y[0] for _, y in pairs]
    ratios = [x[0] / y[0] for x, y in pairs]
    quiet = [x[0] / y[0] for x, y in pairs if max(x[1], y[1]) < QUIET]
    load = med([max(x[1], y[1]) for x, y in pairs])
    if len(quiet) >= max(3, len(pairs) / 4):
        result, basis = med(quiet), f"{len(quiet)}/{len(pairs)} quiet pairs"
    else:
        result, basis = med(ratios), f"all {len(pairs)} pairs, only {len(quiet)} quiet: BUSY MACHINE, noisy"
    print(f"   {label}: {names[0]} median {fmt_ms(med(wa))} (min {fmt_ms(min(wa))})   {names[1]} median"
          f" {fmt_ms(med(wb))} (min {fmt_ms(min(wb))})   others' CPU during pairs: median {load:.2f} cores")
    print(f"   {' ' * len(label)}  ratio {result:.3f} ({basis}) | all pairs {med(ratios):.3f} | quiet pairs"
          f" {med(quiet):.3f} | ratio of medians {med(wa) / med(wb):.3f} | ratio of minima {min(wa) / min(wb):.3f}")
    return result, f"{basis}; ratio of minima {min(wa) / min(wb):.3f}"


def verdict(ratio: float, target: float) -> str:
    return "ok" if ratio <= target else "MISS"


# -- 1. LPT phase 2: block reuse against the naive two-pass forward -------------------------
def phase2_like_trainer(m):
    """What `Trainer._start_phase` does before LPT's phase 2 (phase list of a phase=0 run)."""
    phase = m.phases()[-1]
    assert phase.name == "group-prompts", phase.name
    begin_phase(m, phase)
    opt = make_optimizer(phase, m.cfg)
    for g in opt.param_groups:
        g["lr"] = m.cfg.effective_lr * g["lr_scale"]
    m.train()
    if not any(p.requires_grad for p in m.backbone.parameters()):
        m.backbone.eval()
    return phase, opt


def lpt_forward_loss(m, x, y):
    loss = F.cross_entropy(m(x), y)
    extra = m.extra_loss()  # per image
    return loss + extra.mean() if extra is not None else loss


def bench_lpt(args) -> dict:
    print(f"\n== 1. LPT phase 2: reuse_blocks=True vs False ({args.backbone}, img {args.img_size}, batch {args.batch})")
    bb = create_backbone(args.backbone, img_size=args.img_size, pretrained=False)
    counts = torch.linspace(100, 5, args.num_classes).long().numpy()
    methods = {}
    for reuse in (True, False):
        torch.manual_seed(0)  # identical prompts, keys and head on both sides
        methods[reuse] = create_method("lpt", bb, args.num_classes, counts, loss="ce", batch_size=args.batch,
                                       reuse_blocks=reuse)
    fast, naive = methods[True], methods[False]
    L, K = bb.depth, fast.K
    print(f"   depth L={L}, shared blocks K={K}, group blocks L-K={L - K}, prompt_len={fast.cfg.prompt_len},"
          f" pool={fast.cfg.pool_size}, top_k={fast.cfg.top_k}, tokens/img={bb.embed_tokens(torch.zeros(1, 3, args.img_size, args.img_size)).shape[1]}")
    opts = {}
    for reuse, m in methods.items():
        phase, opts[reuse] = phase2_like_trainer(m)
    trainable = [n for n, p in fast.named_parameters() if p.requires_grad]
    print(f"   phase-2 trainable: {trainable} ({sum(p.numel() for p in fast.parameters() if p.requires_grad):,} elements)")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, generator=g)
    y = torch.randint(args.num_classes, (args.batch,), generator=g)

    # same math: logits (eval) and gradients (train) of the two formulations agree before any step
    for m in methods.values():
        m.eval()
    with torch.no_grad():
        d_logits = (fast(x) - naive(x)).abs().max().item()
    for m in methods.values():
        m.train()
        m.backbone.eval()
    grads = {}
    for reuse, m in methods.items():
        opts[reuse].zero_grad(set_to_none=True)
        torch.manual_seed(2)  # the same dropout mask on both sides
        lpt_forward_loss(m, x, y).backward()
        grads[reuse] = {n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad}
        opts[reuse].zero_grad(set_to_none=True)
    d_grad = max((grads[True][n] - grads[False][n]).abs().max().item() for n in grads[True])
    print(f"   same math: max |logits diff| {d_logits:.2e}, max |grad diff| {d_grad:.2e}"
          f" {'(ok)' if d_logits < 1e-3 and d_grad < 1e-3 else '(MISMATCH!)'}")

    def train_step(m, opt):
        def f():
            loss = lpt_forward_loss(m, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return f

    def infer(m):
        def f():
            with torch.no_grad():
                m(x)
        return f

    # FLOP-counter prediction (one step each)
    fl = {reuse: count_flops(lambda m=m: lpt_forward_loss(m, x, y).backward()) for reuse, m in methods.items()}
    for o in opts.values():
        o.zero_grad(set_to_none=True)
    for m in methods.values():
        m.eval()
    with torch.no_grad():
        fi = {reuse: count_flops(lambda m=m: m(x)) for reuse, m in methods.items()}
    for m in methods.values():
        m.train()
        m.backbone.eval()
    flop_train, flop_infer = fl[True] / fl[False], fi[True] / fi[False]
    print(f"   FLOP counter: train step {fl[True] / 1e9:.1f} vs {fl[False] / 1e9:.1f} GFLOP (ratio {flop_train:.3f}),"
          f" inference {fi[True] / 1e9:.1f} vs {fi[False] / 1e9:.1f} GFLOP (ratio {flop_infer:.3f})")

    t = interleave({"reuse": train_step(fast, opts[True]), "naive": train_step(naive, opts[False])},
                   reps=args.reps, k=args.k, warmup=args.warmup)
    r_train = describe("train step", t["reuse"], t["naive"])
    for m in methods.values():
        m.eval()
    t = interleave({"reuse": infer(fast), "naive": infer(naive)}, reps=args.reps, k=args.k, warmup=args.warmup)
    r_inf = describe("inference ", t["reuse"], t["naive"])
    return {"lpt_train": r_train, "lpt_infer": r_inf, "flop_train": flop_train, "flop_infer": flop_infer,
            "same_math": d_logits < 1e-3 and d_grad < 1e-3}


# -- 2. VPT-deep: Trainer.fit against a bare loop -------------------------------------------
def small_data_sets(args, batch: int) -> dict:
    return {"head": args.head, "imbalance": 10, "val_per_class": 2, "test_per_class": 2, "batch_size": batch}


def bench_vpt(args) -> dict:
    n = args.vpt_steps
    print(f"\n== 2. VPT-deep: Trainer.fit({n}steps) vs bare PyTorch loop ({args.backbone}, img {args.img_size},"
          f" batch {args.batch})")
    run = resolve_run({"dataset": "fashion-mnist-lt", "backbone": args.backbone, "method": "vpt-deep",
                          "budget": f"{n}steps", "img_size": args.img_size, "pretrained": False, "device": "cpu",
                          "loss": "ce", "sampler": "class"}, small_data_sets(args, args.batch))
    torch.manual_seed(0)
    data, method = build_all(run)  # one-time set-up, outside both timings
    cfg = method.cfg
    assert cfg.loss == "ce" and cfg.sampler == "class" and cfg.optimizer == "sgd", (cfg.loss, cfg.sampler, cfg.optimizer)
    trainer = Trainer(method, data, run, torch.device("cpu"), quiet=True)  # ckpt_dir None: no checkpoint I/O

    # the bare side: same timm model object, its own prompts and head (copied), own optimizer
    model = method.backbone
    npt, P = model.num_prefix_tokens, cfg.prompt_len
    prompts = nn.Parameter(method.prompts.detach().clone())
    head = nn.Linear(method.head.weight.shape[1], method.head.weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(method.head.weight)
        head.bias.copy_(method.head.bias)
    train_tf = build_transform(method.info.data_config, method.info.img_size, train=run.augment)
    assert repr(train_tf) == repr(trainer.train_tf)
    labels = data.train.labels
    steps_per_epoch = len(labels) // min(cfg.batch_size, len(labels))
    print(f"   train images {len(labels)}, {steps_per_epoch} batches/epoch, sampler {cfg.sampler}, loss {cfg.loss},"
          f" sgd lr {cfg.effective_lr} momentum {cfg.momentum} wd {cfg.weight_decay}, warmup {cfg.warmup};"
          f" trainer autocast {getattr(trainer, 'autocast', False)}, channels_last {getattr(trainer, 'channels_last', False)}")

    def bare_forward(images: torch.Tensor) -> torch.Tensor:
        x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
        b, prev = x.shape[0], 0
        for i, blk in enumerate(model.blocks):
            x = torch.cat([x[:, :npt], prompts[i].unsqueeze(0).expand(b, -1, -1), x[:, npt + prev:]], dim=1)
            prev = P
            x = blk(x)
        x = torch.cat([x[:, :npt], x[:, npt + prev:]], dim=1)
        return head(model.forward_head(model.norm(x), pre_logits=True))

    class Bare:
        """The bare loop, one step at a time: DataLoader batch, forward, CE, backward, SGD step."""

        def __init__(self):
            bs = min(cfg.batch_size, len(labels))
            self.batches = build_batch_sampler(cfg.sampler, labels, bs, seed=run.seed)
            self.loader = DataLoader(TorchSplit(data.train, train_tf), batch_sampler=self.batches,
                                     num_workers=resolve_workers(run.num_workers, cuda=False))
            self.opt = torch.optim.SGD([{"params": [prompts, head.weight, head.bias]}], lr=cfg.effective_lr,
                                       momentum=cfg.momentum, weight_decay=cfg.weight_decay)
            self.epoch = 0
            self.batches.set_epoch(0)
            self.it = iter(self.loader)
            model.eval()

        def step(self) -> None:
            try:
                x, y, _ = next(self.it)
            except StopIteration:
                self.epoch += 1
                self.batches.set_epoch(self.epoch)
                self.it = iter(self.loader)
                x, y, _ = next(self.it)
            loss = F.cross_entropy(bare_forward(x), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            loss.item()

    # same math: identical logits for identical parameters
    method.eval()
    xb = torch.stack([train_tf(data.train.image(i)) for i in range(min(4, len(labels)))])
    with torch.no_grad():
        d = (method(xb) - bare_forward(xb)).abs().max().item()
    print(f"   same math: max |logits diff| ltbench vs bare {d:.2e} {'(ok)' if d < 1e-3 else '(MISMATCH!)'}")

    # Step-level interleaving: a global optimizer post-step hook sees each Trainer step end, runs
    # one bare step right there, and notes when control goes back to the trainer. A trainer step
    # is the time between two hook calls (batch loading, lr schedule, meter, forward/backward,
    # step, loss.item(), progress: all its per-step machinery); a bare step is the time inside
    # the hook. The first of each includes that fit's set-up (loader, optimizer; the trainer's
    # FLOP count of its first step); each fit starts a fresh bare loop.
    cur: dict = {}

    def hook(opt, a, kw):
        if not cur or opt is getattr(cur.get("bare"), "opt", None):
            return
        s_end = snap()
        cur["lt"].append(sample(cur["resume"], s_end))
        if "bare" not in cur:
            cur["bare"] = Bare()
        cur["bare"].step()
        cur["resume"] = snap()
        cur["bare_s"].append(sample(s_end, cur["resume"]))

    def one_fit(steps: int):
        cur.clear()
        gc.collect()
        cur.update(lt=[], bare_s=[], resume=snap())
        trainer.fit(read_budget(f"{steps}steps"))
        tail = time.perf_counter() - cur["resume"][0]
        lt, bare = list(cur["lt"]), list(cur["bare_s"])
        cur.clear()
        assert len(lt) == len(bare) == steps, (len(lt), len(bare), steps)
        return lt, bare, tail

    handle = register_optimizer_step_post_hook(hook)
    lt_runs, bare_runs, tails = [], [], []
    try:
        one_fit(min(3, n))  # warm-up
        for _ in range(args.vpt_reps):
            lt, bare, tail = one_fit(n)
            lt_runs.append(lt)
            bare_runs.append(bare)
            tails.append(tail)
    finally:
        handle.remove()
    steady = describe(f"steady step (steps 2..{n})", [r[1:] for r in lt_runs], [r[1:] for r in bare_runs],
                      names=("ltbench", "bare"))
    first_lt, first_bare = [r[0][0] for r in lt_runs], [r[0][0] for r in bare_runs]
    print(f"   first step (set-up of loader/optimizer; ltbench also counts FLOPs): ltbench {fmt_ms(med(first_lt))}"
          f"  bare {fmt_ms(med(first_bare))}  median ratio {med([x / y for x, y in zip(first_lt, first_bare)]):.2f};"
          f" trainer tail after its last step {fmt_ms(med(tails))}")
    tot_lt = [sum(x[0] for x in r) + t for r, t in zip(lt_runs, tails)]
    tot_bare = [sum(x[0] for x in r) for r in bare_runs]
    incl = med([x / y for x, y in zip(tot_lt, tot_bare)])
    print(f"   whole fit of {n} steps incl. first step: ltbench {fmt_ms(med(tot_lt))}  bare {fmt_ms(med(tot_bare))}"
          f"  median per-fit ratio {incl:.3f}")
    return {"vpt": steady, "vpt_incl_first": incl, "same_math_vpt": d < 1e-3}


# -- 3. frozen parameters: no grads, optimizer state only for the trainable set -------------
def check_frozen(args) -> dict:
    print("\n== 3. Frozen parameters through Trainer.fit (LPT both phases, VPT-deep)")
    results = {}
    for name, budget, extra in (("lpt", "6steps", {}), ("vpt-deep", "3steps", {"loss": "ce"})):
        run = resolve_run({"dataset": "fashion-mnist-lt", "backbone": args.backbone, "method": name,
                              "budget": budget, "img_size": args.img_size, "pretrained": False, "device": "cpu"},
                             {**small_data_sets(args, args.check_batch), **extra})
        torch.manual_seed(0)
        data, method = build_all(run)
        bb_params = list(method.backbone.parameters())
        bb_ids = {id(p) for p in bb_params}
        names = {id(p): n for n, p in method.named_parameters()}
        records = []

        def hook(opt, a, kw, method=method, records=records):
            in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
            buffers: dict[str, int] = defaultdict(int)
            with_state = 0
            for p, st in opt.state.items():
                tensors = {k: v for k, v in st.items() if torch.is_tensor(v) and v.shape == p.shape}
                with_state += p.numel() if tensors else 0
                for k, v in tensors.items():
                    buffers[k] += v.numel()
            records.append({
                "opt": id(opt),
                "backbone_grads": sum(p.grad is not None for p in bb_params),
                "backbone_in_state": sum(id(p) in bb_ids for p in opt.state),
                "with_state": with_state, "buffers": dict(buffers),
                "other_grads": {names[id(p)]: (p.grad.data_ptr(), float(p.grad.abs().sum()))
                                for p in method.parameters()
                                if p.grad is not None and id(p) not in in_opt and id(p) not in bb_ids},
                "trainable_without_grad": [names[id(p)] for g in opt.param_groups for p in g["params"] if p.grad is None],
            })

        handle = register_optimizer_step_post_hook(hook)
        try:
            Trainer(method, data, run, torch.device("cpu"), quiet=True).fit(read_budget(budget))
        finally:
            handle.remove()
        after_bb_grads = sum(p.grad is not None for p in bb_params)
        phases = method.phases()
        order = list(dict.fromkeys(r["opt"] for r in records))
        ok_grad = after_bb_grads == 0 and all(r["backbone_grads"] == 0 for r in records)
        ok_state = len(order) == len(phases)
        for phase, oid in zip(phases, order):
            recs = [r for r in records if r["opt"] == oid]
            want = sum(p.numel() for p in phase.parameters)
            last = recs[-1]
            phase_ok = (last["with_state"] == want and last["backbone_in_state"] == 0 and last["buffers"]
                        and all(v == want for v in last["buffers"].values()))
            ok_state &= bool(phase_ok)
            print(f"   {name} phase {phase.name!r}: {len(recs)} steps, trainable {want:,}; state buffers"
                  f" {last['buffers']} (params with state {last['with_state']:,}), backbone params in state"
                  f" {last['backbone_in_state']}, backbone .grad set {max(r['backbone_grads'] for r in recs)}"
                  f" -> {'PASS' if phase_ok and all(r['backbone_grads'] == 0 for r in recs) else 'FAIL'}")
            if last["trainable_without_grad"]:
                print(f"      note: trainable without a grad at the step: {last['trainable_without_grad']}")
            others = [r["other_grads"] for r in recs]
            if any(others):
                stale = all(o == others[0] for o in others)
                print(f"      INFO: frozen non-backbone params holding a .grad during this phase:"
                      f" {sorted(others[-1])} ({'stale from an earlier phase: same buffer and values at every step' if stale else 'CHANGING: recomputed each step'})")
        print(f"   {name}: backbone .grad is None after fit for all {len(bb_params)} params:"
              f" {'PASS' if after_bb_grads == 0 else f'FAIL ({after_bb_grads} have grads)'}")
        results[name] = (ok_grad, ok_state)
    no_grads = all(v[0] for v in results.values())
    state_ok = all(v[1] for v in results.values())
    return {"no_grads": no_grads, "state": state_ok}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short run (fewer repetitions and steps)")
    ap.add_argument("--backbone", default="dinov2-s14", help="ltbench or timm ViT name (random weights)")
    ap.add_argument("--img-size", type=int, default=112)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--num-classes", type=int, default=10, help="classes of the LPT head in part 1")
    ap.add_argument("--reps", type=int, default=None, help="interleaved repetitions, part 1 (default 10; quick 2)")
    ap.add_argument("--k", type=int, default=None, help="adjacent call pairs per repetition, part 1 (default 4; quick 2)")
    ap.add_argument("--vpt-steps", type=int, default=None, help="steps per Trainer.fit, part 2 (default 10; quick 4)")
    ap.add_argument("--vpt-reps", type=int, default=None, help="fits, part 2 (default 6; quick 1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: lpt,vpt,frozen")
    args = ap.parse_args(argv)
    q = args.quick
    args.reps = args.reps or (2 if q else 10)
    args.k = args.k or (2 if q else 4)
    args.warmup = 1 if q else 2
    args.vpt_steps = args.vpt_steps or (4 if q else 10)
    args.vpt_reps = args.vpt_reps or (1 if q else 6)
    args.check_batch = 4
    # enough class-balanced batches that one fit stays inside one epoch
    args.head = max(100, int(1.1 * args.batch * args.vpt_steps / 4) + 1)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    torch.set_num_threads(args.threads)
    print(f"bench_prompts: torch {torch.__version__}, threads {torch.get_num_threads()}, backbone {args.backbone},"
          f" img {args.img_size}, batch {args.batch}, {'quick' if q else 'default'} run"
          f" (part 1: {args.reps} reps x {args.k} calls; part 2: {args.vpt_reps} reps x {args.vpt_steps} steps)")
    load0 = os.getloadavg()[0]
    if load0 > args.threads:
        print(f"WARNING: load average {load0:.1f} > {args.threads} threads: other processes compete for the cores;"
              " absolute times will be inflated and ratios noisier")
    t_start = time.perf_counter()
    res: dict = {}
    if "lpt" not in skip:
        res.update(bench_lpt(args))
    if "vpt" not in skip:
        res.update(bench_vpt(args))
    if "frozen" not in skip:
        res.update(check_frozen(args))

    print(f"\n== summary ({args.backbone}, img {args.img_size}, batch {args.batch}, {args.threads} threads,"
          f" {time.perf_counter() - t_start:.0f}s, load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end)")
    if "lpt_train" in res:
        (r, basis), (tgt, pred) = res["lpt_train"], TARGETS["lpt_train"]
        print(f"lpt phase-2 train step   reuse/naive  = {r:.3f}x  (target <= {tgt}, predicted {pred},"
              f" FLOP counter {res['flop_train']:.3f})  {verdict(r, tgt)}  [{basis}]")
        (r, basis), (tgt, pred) = res["lpt_infer"], TARGETS["lpt_infer"]
        print(f"lpt inference            reuse/naive  = {r:.3f}x  (target <= {tgt}, predicted {pred},"
              f" FLOP counter {res['flop_infer']:.3f})  {verdict(r, tgt)}  [{basis}]")
    if "vpt" in res:
        (r, basis), (tgt, _) = res["vpt"], TARGETS["vpt"]
        print(f"vpt-deep train step      ltbench/bare = {r:.3f}x  (target <= {tgt}; steady state)  {verdict(r, tgt)}"
              f"  [{basis}]")
        print(f"vpt-deep whole fit       ltbench/bare = {res['vpt_incl_first']:.3f}x  (incl. first step: set-up +"
              f" the trainer's one-time FLOP count; {args.vpt_steps} steps; informational)")
    if "no_grads" in res:
        print(f"frozen params: no grads {'PASS' if res['no_grads'] else 'FAIL'}, optimizer state == trainable count"
              f" {'PASS' if res['state'] else 'FAIL'}")
    if not res.get("same_math", True) or not res.get("same_math_vpt", True):
        print("WARNING: the compared sides do not compute the same numbers (see above)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
