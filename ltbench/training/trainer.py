"""The one training loop: a method's phases on one device (one rank) under a budget.

Phases run in order, each until its share of the budget is spent; the schedule is a
function of the share spent, so epochs, steps, FLOPs and seconds budgets all get a full
warm-up + cosine curve. What it reports goes to one list of callbacks (callbacks.py): the
progress bar, the tracker, tuning's report points, a live table, and last the epoch checkpoint.
"""
from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ..budget import Budget, Meter, Spent, Stopwatch, count_flops
from ..data.base import LTDataset, TorchSplit
from ..data.samplers import build_batch_sampler
from ..data.transforms import build_transform
from ..errors import BudgetError, TrainingError
from ..losses import build_loss
from ..methods.base import Method, PartSpec, Phase
from ..metrics import class_averaged_accuracy
from ..spec import RunSpec
from ..store.provenance import config_hash
from .callbacks import Callback, ProgressBar, StepEvent
from .checkpoint import Checkpoint, rng_state, set_rng_state
from .distributed import Dist, ShardedBatchSampler, all_ranks_sum, gather_rows
from .tracking import Tracker


def seed_everything(seed: int) -> None:
    """Seed every RNG a run draws from, so one seed gives the same numbers."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """"auto" is the GPU when there is one; any other name is passed to torch as is."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_workers(value: int | str, cuda: bool) -> int:
    """DataLoader workers for `--set num_workers`: "auto" is min(8, cores) feeding a GPU and 0 on CPU,
    where workers would compete with the training threads."""
    return (min(8, os.cpu_count() or 1) if cuda else 0) if value == "auto" else int(value)


def lr_factor(progress: float, warmup: float, floor: float = 0.0, start: float | None = None) -> float:
    """Linear warm-up over the first `warmup` share (from `start`, or from 1e-3 of the way), then
    cosine down to `floor` (LT-Soups' code: from 1e-6 and down to 0.1)."""
    if warmup > 0 and progress < warmup:
        return (progress + 1e-3) / warmup if start is None else start + (1 - start) * progress / warmup
    rest = (progress - warmup) / max(1e-8, 1 - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, rest)))


def make_optimizer(phase: Phase, cfg) -> torch.optim.Optimizer:
    """The optimiser over the phase's parameter groups, each at the config's lr times its `lr_scale`."""
    groups = [{"params": g["params"], "lr": cfg.effective_lr * g.get("lr_scale", 1.0), "lr_scale": g.get("lr_scale", 1.0)}
              for g in phase.param_groups]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.effective_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.effective_lr, weight_decay=cfg.weight_decay)
    raise TrainingError(f"unknown optimizer {cfg.optimizer!r}: use sgd or adamw")


@torch.no_grad()
def run_batches(fn: Callable[[torch.Tensor], torch.Tensor], loader: DataLoader, device: torch.device,
                autocast: bool = False, channels_last: bool = False) -> torch.Tensor:
    """`fn` over every batch of `loader` without gradients, outputs gathered on the CPU as float32."""
    outs = []
    for x, *_ in loader:
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            outs.append(fn(x).float().cpu())
    return torch.cat(outs) if outs else torch.empty(0)


def begin_phase(method: Method, phase: Phase) -> None:
    """Switch `method` to `phase`: its start hook, then only the phase's parameters trainable."""
    if phase.on_start is not None:
        phase.on_start()
    method.requires_grad_(False)
    for p in method.parameters():
        p.grad = None  # an earlier phase's gradients must not outlive it
    for p in phase.parameters:
        p.requires_grad_(True)


def train_mode(method: Method) -> None:
    """Training mode, except a fully frozen backbone stays in eval mode."""
    method.train()
    if not any(p.requires_grad for p in method.backbone.parameters()):
        method.backbone.eval()  # frozen: no dropout / drop-path noise in the features


class _Step(nn.Module):
    """One training forward as a module: (logits, extra loss term).

    The method's extra term (LPT's key matching) must be an output of the forward that DDP
    sees, or DDP would count the parameters it reaches as unused; cached-feature phases
    call `classify` instead of the full forward.
    """

    def __init__(self, method: Method, cached: bool):
        super().__init__()
        self.method, self.cached = method, cached

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.method.classify(x) if self.cached else self.method(x)
        extra = self.method.extra_loss()
        return out, extra if extra is not None else out.new_zeros(out.shape[0])


def mixup_parts(x: torch.Tensor, n_parts: int, alpha: float) -> tuple[torch.Tensor, list[tuple[float, torch.Tensor]]]:
    """Mixup (Zhang et al. 2018) within each of the batch's parts: x_p ← λ_p·x_p + (1 − λ_p)·x_p[π_p],
    λ_p ~ Beta(α, α), π_p a permutation of the part; returns the mixed images and every (λ_p, π_p).
    Draws from torch's global generator (checkpointed), so a resumed run mixes the same way."""
    size = len(x) // n_parts
    out, mix = x.clone(), []
    for p in range(n_parts):
        lam = float(torch.distributions.Beta(torch.tensor(float(alpha)), torch.tensor(float(alpha))).sample())
        perm = torch.randperm(size)
        part = x[p * size:(p + 1) * size]
        out[p * size:(p + 1) * size] = lam * part + (1 - lam) * part[perm.to(x.device)]
        mix.append((lam, perm))
    return out, mix


def batch_loss(out: torch.Tensor, y: torch.Tensor, extra: torch.Tensor, losses: list[nn.Module],
               weights: list[float], mix: list[tuple[float, torch.Tensor]] | None = None) -> torch.Tensor:
    """Σ_p w_p · (L_p(part p) + mean extra_p): each part its own loss, options and mean (LPT's Eq. 5 with
    dual sampling, as the official code weighs it). Mixed parts take λ·L(y) + (1 − λ)·L(y[π])."""
    size = len(y) // len(losses)
    total = out.new_zeros(())
    for p, (fn, w) in enumerate(zip(losses, weights)):
        part = slice(p * size, (p + 1) * size)
        o, t = out[part], y[part]
        if mix is None:
            loss = fn(o, t)
        else:
            lam, perm = mix[p]
            loss = lam * fn(o, t) + (1 - lam) * fn(o, t[perm.to(t.device)])
        total = total + w * (loss + extra[part].float().mean())
    return total


def forward_loss(fwd: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]], x: torch.Tensor,
                 y: torch.Tensor, losses: list[nn.Module], weights: list[float], mixup: float = 0.0,
                 autocast: bool = False) -> tuple[torch.Tensor, list[tuple[float, torch.Tensor]] | None]:
    """One training forward of a phase: Mixup within each part (α > 0), `fwd(x) -> (logits, extra)`,
    then `batch_loss`. Returns the loss and the Mixup draws (None without Mixup)."""
    mix = None
    if mixup > 0:
        x, mix = mixup_parts(x, len(losses), mixup)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        out, extra = fwd(x)
    if extra is None:
        extra = out.new_zeros(out.shape[0])
    return batch_loss(out.float(), y, extra, losses, weights, mix), mix


def phase_epochs(meter: Meter, epoch: int, steps_per_epoch: int) -> float:
    """How many epochs the phase runs: exact for epochs and steps budgets, else estimated from the
    share spent by the epochs done (inf before the first one ends: only e/E = 0 is needed then)."""
    unit, amount = meter.budget.unit, meter.budget.amount
    if unit == "epochs":
        return amount
    if unit == "steps":
        return amount / steps_per_epoch
    return epoch / meter.fraction if epoch and meter.fraction > 0 else math.inf


class _Checks:
    """A phase's validation checks: run when the schedule passes k / val_checks, the last at its end.

    `reserve()` is what the checks still due will cost in the budget's unit, so training stops early
    enough for them (nothing under an epochs or steps budget: they train on no image)."""

    def __init__(self, trainer: "Trainer", phase: Phase, meter: Meter):
        self.trainer, self.phase, self.meter = trainer, phase, meter
        self.n = phase.val_checks if phase.on_val is not None else 0
        self.done = 0
        self.scores: list[float] = []
        if self.n and meter.budget.unit == "flops":
            trainer.val_pass_flops()

    def reserve(self) -> float:
        per_check = {"flops": self.trainer._val_flops or 0.0, "seconds": self.trainer._val_seconds}
        return (self.n - self.done) * per_check.get(self.meter.budget.unit, 0.0)

    def due(self, progress: float) -> None:
        """Run the checks the schedule has passed. Several due at once (a step that crossed more than
        one k / val_checks, as in a phase of one or two steps) see the same weights: one evaluation
        serves them all, and its score is recorded for each."""
        k = 0
        while self.done + k < self.n and progress >= (self.done + k + 1) / self.n - 1e-9:
            k += 1
        if k:
            self.done += k
            before = len(self.scores)
            self.phase.on_val(self._score)
            self.scores.extend(self.scores[before:] * (k - 1))

    def _score(self) -> float:
        value = self.trainer.val_score(self.meter)
        self.scores.append(value)
        return value


@dataclass
class _PhaseRun:
    """A minibatch phase while it trains: what its steps share, passed to each of them (never kept
    on the trainer), and what its checkpoint saves."""
    index: int  # the phase's place in the method's list (the checkpoint's "phase")
    phase: Phase
    meter: Meter
    parts: list[PartSpec]
    loss_fns: list[nn.Module]  # one per part
    loader: DataLoader
    batches: Any  # the loader's batch sampler (with set_epoch)
    forward: nn.Module  # the training forward (DDP-wrapped, compiled where asked)
    counted: nn.Module  # the same, uncompiled: the first step's FLOP count
    optimizer: torch.optim.Optimizer
    checks: "_Checks | None" = None
    epoch: int = 0
    flops_per_image: float | None = None
    step_seconds: float | None = None  # moving average, for a seconds budget's overrun check
    schedule_base: float = 0.0  # budget spent before the schedule starts (a one-off feature pass)
    losses: list[float] = field(default_factory=list)
    part_weights: list[list[float]] = field(default_factory=list)  # per epoch of this run (a resumed run logs from where it resumed)
    val_cache: dict[str, torch.Tensor] = field(default_factory=dict)

    def warmup_share(self, share: float, steps: int) -> float:
        """The warm-up's share of the schedule: `share`, or `steps` optimiser steps where that is more
        (and the phase's step count is known: under a steps or epochs budget); at most half of it."""
        unit, amount = self.meter.budget.unit, self.meter.budget.amount - self.schedule_base
        total = {"steps": amount, "epochs": amount * len(self.loader)}.get(unit)
        return min(0.5, max(share, steps / total)) if steps and total else share

    def schedule_progress(self) -> float:
        """The share of the schedule done: of the budget left after `schedule_base`."""
        unit, base = self.meter.budget.unit, self.schedule_base
        left = self.meter.budget.amount - base
        return min(1.0, (self.meter.spent.get(unit) - base) / left) if left > 0 else 1.0


@dataclass
class TrainResult:
    """What `Trainer.fit` spent in all and per phase (recorded in the expert's metrics)."""
    spent: Spent = field(default_factory=Spent)
    phases: list[dict[str, Any]] = field(default_factory=list)


def _check_one_step(budget: Budget, one_step: float) -> None:
    """A budget (or a phase's share of it) smaller than one training step would train nothing or
    overrun it many times over: refuse it, naming the smallest one that trains."""
    if budget.amount < one_step * (1 - 1e-6):
        raise BudgetError(f"budget {budget} is below one training step ({one_step:.4g} {budget.unit} here);"
                          f" give at least {one_step:.4g} {budget.unit}")


def split_accuracy(logits: torch.Tensor, split, num_classes: int) -> float:
    """Per-class-averaged accuracy of `logits` on `split`: the one validation accuracy (history, a
    phase's checks, tuning's trials)."""
    return class_averaged_accuracy(logits.argmax(1).numpy() == split.labels, split.labels, num_classes)


class Trainer:
    """Runs a method's phases under a budget on one device (one rank of a distributed run)."""

    def __init__(self, method: Method, data: LTDataset, spec: "RunSpec", device: torch.device,
                 console: Console | None = None, ckpt_dir: Path | None = None, quiet: bool = False,
                 dist: Dist | None = None, callbacks: Sequence[Callback] = ()):
        """`callbacks` are called in order after a progress bar (unless quiet); a `Tracker` is added
        when none is given, and with `ckpt_dir` the epoch `Checkpoint` comes last."""
        self.method, self.data, self.spec, self.device = method, data, spec, device
        self._budget: Budget | None = None  # the whole run's (a phase's share may be under one step; this may not)
        self.cfg = method.cfg
        self.dist = dist or Dist()
        self.console = console or Console(stderr=True)
        self.quiet = quiet or not self.dist.is_main
        self.callbacks: list[Callback] = ([] if self.quiet else [ProgressBar(self.console)]) + list(callbacks)
        trackers = [c for c in self.callbacks if isinstance(c, Tracker)]
        if not trackers:
            trackers.append(Tracker(spec.config, self.console, self.quiet, enabled=self.dist.is_main))
            self.callbacks.append(trackers[0])
        self.tracker = trackers[0]
        self.checkpoint = Checkpoint(ckpt_dir / "checkpoint.pt") if ckpt_dir else None
        if self.checkpoint is not None:
            self.callbacks.append(self.checkpoint)
        cuda = device.type == "cuda"
        self.autocast = cuda if spec.amp == "auto" else bool(spec.amp)  # bf16 on GPUs; fp32 on CPU unless asked
        self.channels_last = spec.channels_last and cuda
        self.pin = cuda
        self.workers = resolve_workers(spec.num_workers, cuda)
        if self.channels_last:
            method.to(memory_format=torch.channels_last)
        bb = method.info
        self.train_tf = build_transform(bb.data_config, bb.img_size, train=spec.augment)
        self.eval_tf = build_transform(bb.data_config, bb.img_size, train=False)
        self._val_flops: float | None = None  # one validation pass (a phase's `val_checks`)
        self._val_seconds = 0.0

    # -- data ----------------------------------------------------------------------------
    def _loader(self, dataset, **kw) -> DataLoader:
        return DataLoader(dataset, num_workers=self.workers, pin_memory=self.pin,
                          persistent_workers=False, **kw)

    def _eval_loader(self, split) -> DataLoader:
        return self._loader(TorchSplit(split, self.eval_tf), batch_size=self.spec.eval_batch_size, shuffle=False)

    def _cached_features(self, meter: Meter, train) -> TensorDataset:
        """Frozen features of un-augmented training images, computed once (sharded over ranks)."""
        d = self.dist
        mine = train.subset(np.arange(d.rank, len(train), d.world)) if d.enabled else train
        loader = self._eval_loader(mine)
        x0 = next(iter(loader))[0][:1].to(self.device)
        with torch.no_grad():
            flops_per_image = count_flops(lambda: self.method.embed(x0))
        with Stopwatch(self.device) as sw:
            feats = run_batches(self.method.embed, loader, self.device, self.autocast, self.channels_last)
        feats = gather_rows(feats, len(train), d)
        meter.charge(flops=flops_per_image * len(train), seconds=all_ranks_sum(sw.elapsed, d, self.device))
        return TensorDataset(feats, torch.as_tensor(train.labels), torch.arange(len(feats)))

    # -- the loop ------------------------------------------------------------------------
    def fit(self, budget: Budget, resume: bool = False) -> TrainResult:
        """Run every phase of the method under its share of `budget`; `resume` continues from the checkpoint."""
        phases = self.method.phases()
        by_epochs = budget.unit == "epochs"
        self._budget = budget

        def share(p: Phase) -> float:
            return p.epoch_share if by_epochs and p.epoch_share is not None else p.share

        total_share = sum(share(p) for p in phases)
        result = self._result = TrainResult()
        state = self._resume_state() if resume else None
        for i, phase in enumerate(phases):
            if state is not None and i < state["phase"]:
                result.phases.append(state["phase_log"][i])
                result.spent.add(Spent(**state["phase_log"][i]["spent"]))
                continue
            meter = Meter(budget.scaled(share(phase) / total_share))
            log = self._fit_phase(i, phase, meter, state if state and state["phase"] == i else None, result)
            result.phases.append(log)
            result.spent.add(meter.spent)
        return result

    def _fit_phase(self, index: int, phase: Phase, meter: Meter, state: dict | None, result: TrainResult) -> dict:
        """One phase: solved in one call, or trained in minibatches until its budget is spent."""
        begin_phase(self.method, phase)
        train = self.data.train
        if phase.subset is not None:
            train = train.subset(phase.subset(train.labels, self.spec.seed))
        counts = np.bincount(train.labels, minlength=self.data.num_classes)
        parts = phase.batch_parts(self.cfg)
        loss_fns = [build_loss(p.loss, counts, **p.loss_kwargs).to(self.device) for p in parts]
        loss_name = "+".join(p.loss for p in parts)
        if phase.solve is not None:
            return self._solve_phase(phase, meter, train, loss_fns[0], loss_name)
        run = self._start_phase(index, phase, meter, train, parts, loss_fns, state)
        self._train_epochs(run, result)
        return self._close_phase(run, loss_name, len(train))

    # The order of the steps below is the order of every RNG draw (a DataLoader's iterator draws its
    # seed from torch's generator), so it is part of what makes one seed give the same numbers.
    def _start_phase(self, index: int, phase: Phase, meter: Meter, train, parts: list[PartSpec],
                     loss_fns: list[nn.Module], state: dict | None) -> "_PhaseRun":
        """Everything a minibatch phase trains with, restored from `state` when resuming it."""
        loader, batches = self._phase_loader(index, phase, meter, train, parts)
        forward, counted = self._phase_forward(phase)
        run = _PhaseRun(index, phase, meter, parts, loss_fns, loader, batches, forward, counted,
                        make_optimizer(phase, self.cfg))
        if state is not None:
            self._restore_phase(run, state)
        train_mode(self.method)
        # The schedule runs over what is left after a one-off feature pass, so that pass does not eat
        # the warm-up (it may spend a large share of the budget before the first step).
        if state is not None:
            run.schedule_base = state.get("schedule_base", 0.0)
        elif phase.cache_features:
            run.schedule_base = meter.spent.get(meter.budget.unit)
        run.checks = _Checks(self, phase, meter)
        if state is not None:  # the checks due before the checkpoint were done
            run.checks.done = min(phase.val_checks, int(run.schedule_progress() * phase.val_checks + 1e-9))
        return run

    def _phase_loader(self, index: int, phase: Phase, meter: Meter, train,
                      parts: list[PartSpec]) -> tuple[DataLoader, Any]:
        """The phase's loader and its batch sampler (one part per sampler kind, sharded over ranks)."""
        dataset = self._cached_features(meter, train) if phase.cache_features else TorchSplit(train, self.train_tf)
        bs = min(self.cfg.batch_size, len(dataset))
        batches = build_batch_sampler([p.sampler for p in parts], train.labels, bs, seed=self.spec.seed + 1000 * index)
        if self.dist.enabled:
            batches = ShardedBatchSampler(batches, self.dist, halves=len(parts))
        loader = DataLoader(dataset, batch_sampler=batches, pin_memory=self.pin,
                            num_workers=0 if phase.cache_features else self.workers)
        return loader, batches

    def _phase_forward(self, phase: Phase) -> tuple[nn.Module, nn.Module]:
        """(the training forward, possibly DDP-wrapped and compiled; the same uncompiled, for the FLOP count)."""
        forward: nn.Module = _Step(self.method, phase.cache_features)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            device = self.device
            forward = DDP(forward, device_ids=[device.index] if device.type == "cuda" else None,
                          find_unused_parameters=True)
        # The FLOP-counted first step runs eagerly: the counter's global module hooks and a compiled
        # graph do not mix (the FLOPs come out the same, with a warning and a recompile).
        counted = forward
        compile_ = self.spec.compile
        if compile_:
            forward = torch.compile(forward, **({"backend": compile_} if isinstance(compile_, str) else {}))
        return forward, counted

    def _restore_phase(self, run: "_PhaseRun", state: dict) -> None:
        """Continue a phase from its checkpoint: tensors, optimizer, budget spent, costs and RNG streams."""
        self.method.load_delta(state["delta"])
        self.method.load_resume_state(state.get("method_state", {}))
        run.optimizer.load_state_dict(state["optimizer"])
        run.meter.spent = Spent(**state["spent"])
        run.epoch = state["epoch"] + 1
        run.flops_per_image, run.step_seconds = state["flops_per_image"], state["step_seconds"]
        set_rng_state(state["rng"])

    def _train_epochs(self, run: "_PhaseRun", result: TrainResult) -> None:
        """Epochs until the budget is spent or the next step would overrun it."""
        meter = run.meter
        for cb in self.callbacks:
            cb.on_phase_start(self, run.phase, Spent(**result.spent.as_dict()), meter.fraction)
        try:
            if meter.budget == self._budget and not meter.spent.steps:
                if meter.budget.unit == "epochs":
                    _check_one_step(meter.budget, 1 / len(run.loader))
                if meter.exhausted:
                    raise BudgetError(f"budget {meter.budget} was spent before the first training step (the feature"
                                      f" pass took {meter.spent.get(meter.budget.unit):.4g} {meter.budget.unit}); give more")
            done = False
            while not done and not run.meter.exhausted:
                done = self._train_epoch(run)
                self._end_epoch(run)
        finally:
            for cb in self.callbacks:
                cb.on_phase_end(self, run.phase)

    def _train_epoch(self, run: "_PhaseRun") -> bool:
        """One epoch's steps (fewer where the budget ends); True when it stopped before a step that would overrun."""
        meter = run.meter
        run.batches.set_epoch(run.epoch)
        steps_per_epoch = len(run.loader)
        weights = [p.weight_at(run.epoch, phase_epochs(meter, run.epoch, steps_per_epoch)) for p in run.parts]
        run.part_weights.append(weights)
        for x, y, _ in run.loader:
            n_global = len(x) * self.dist.world
            cost = {"epochs": 1 / steps_per_epoch, "steps": 1,
                    "flops": (run.flops_per_image or 0) * n_global, "seconds": run.step_seconds or 0}[meter.budget.unit]
            if meter.spent.steps and meter.spent.get(meter.budget.unit) + cost + run.checks.reserve() \
                    > meter.budget.amount * (1 + 1e-9):
                return True  # the next step would overrun the budget: stop before it
            whole = meter.budget == self._budget
            loss, elapsed = self._train_step(run, x, y, weights)
            self._account_step(run, loss, elapsed, n_global, steps_per_epoch)
            if whole and meter.spent.steps == 1 and meter.budget.unit == "flops":
                _check_one_step(meter.budget, meter.spent.flops)
            if meter.exhausted:
                break
        return False

    def _train_step(self, run: "_PhaseRun", x: torch.Tensor, y: torch.Tensor,
                    weights: list[float]) -> tuple[torch.Tensor, float]:
        """One optimizer step at the schedule's lr (the first one FLOP-counted); (loss, local seconds)."""
        cfg, device, optimizer, phase = self.cfg, self.device, run.optimizer, run.phase
        factor = lr_factor(run.schedule_progress(), run.warmup_share(cfg.warmup, cfg.warmup_steps), cfg.lr_floor,
                           cfg.warmup_start)
        for g in optimizer.param_groups:
            g["lr"] = cfg.effective_lr * g["lr_scale"] * factor
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)

        def step(fwd=run.forward) -> torch.Tensor:
            loss, _ = forward_loss(fwd, x, y, run.loss_fns, weights, phase.mixup, self.autocast)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            return loss

        with Stopwatch(device) as sw:
            if run.flops_per_image is None:
                holder: list[torch.Tensor] = []
                flops = count_flops(lambda: holder.append(step(run.counted)))
                loss = holder[0]
                run.flops_per_image = flops / len(x)
            else:
                loss = step()
            if not torch.isfinite(loss):
                ckpt = self.checkpoint.path if self.checkpoint else None
                kept = f"the last good checkpoint is {ckpt}" if ckpt and ckpt.is_file() \
                    else "no checkpoint was written yet"
                raise TrainingError(f"{phase.name}: loss is {loss.item()} at step {run.meter.spent.steps + 1}"
                                    f" (epoch {run.epoch}); training stopped, {kept}")
            optimizer.step()
            if phase.on_step is not None:
                phase.on_step()
        return loss, sw.elapsed

    def _account_step(self, run: "_PhaseRun", loss: torch.Tensor, elapsed: float, n_global: int,
                      steps_per_epoch: int) -> None:
        """Charge a step to the budget, run the phase's checks now due, then tell the callbacks."""
        meter = run.meter
        seconds = all_ranks_sum(elapsed, self.dist, self.device)
        run.step_seconds = seconds if run.step_seconds is None else 0.9 * run.step_seconds + 0.1 * seconds
        meter.charge(steps=1, images=n_global, epochs=1 / steps_per_epoch,
                     flops=run.flops_per_image * n_global, seconds=seconds)
        run.losses.append(loss.item())
        lr, ips = run.optimizer.param_groups[-1]["lr"], n_global / max(elapsed, 1e-9)
        run.checks.due(run.schedule_progress())
        so_far = Spent(**self._result.spent.as_dict())
        so_far.add(meter.spent)
        event = StepEvent(label=self.method.name, phase=run.phase.name, epoch=meter.spent.epochs,
                          loss=run.losses[-1], lr=lr, images_per_s=ips, spent=meter.spent, fraction=meter.fraction,
                          run_spent=so_far, run_progress=so_far.get(self._budget.unit) / self._budget.amount)
        for cb in self.callbacks:
            cb.on_step(self, event)

    def _end_epoch(self, run: "_PhaseRun") -> None:
        for cb in self.callbacks:
            cb.on_epoch_end(self, run)
        run.epoch += 1

    def _close_phase(self, run: "_PhaseRun", loss_name: str, train_images: int) -> dict:
        """The last check, the phase's end hook, and its log entry."""
        phase, checks = run.phase, run.checks
        checks.due(1.0)  # the last check closes the phase, however its steps ended
        if phase.on_end is not None:
            phase.on_end()
        return {"phase": phase.name, "spent": run.meter.spent.as_dict(), "budget": str(run.meter.budget),
                "final_loss": float(np.mean(run.losses[-10:])) if run.losses else None,
                "loss": loss_name, "sampler": "+".join(p.sampler for p in run.parts), "train_images": train_images,
                **({"val_checks": checks.scores} if phase.val_checks else {}),
                **({"part_weights": run.part_weights} if len(run.parts) > 1 else {})}

    def val_pass_flops(self) -> float:
        """FLOPs of one forward pass over the validation split (one image counted, times its size)."""
        if self._val_flops is None:
            x0 = next(iter(self._eval_loader(self.data.val)))[0][:1].to(self.device)
            self.method.eval()
            with torch.no_grad():
                self._val_flops = float(count_flops(lambda: self.method(x0)) * len(self.data.val))
            train_mode(self.method)
        return self._val_flops

    def val_pass(self) -> tuple[torch.Tensor, float, float]:
        """(validation logits of the method's current forward, the pass's FLOPs, its device seconds
        summed over ranks): what a validation check costs, for its caller to charge."""
        self.val_pass_flops()
        with Stopwatch(self.device) as sw:
            logits = self.predict(self.data.val)
        train_mode(self.method)
        seconds = all_ranks_sum(sw.elapsed, self.dist, self.device)  # every rank runs the check
        return logits, self._val_flops * self.dist.world, seconds

    def val_score(self, meter: Meter) -> float:
        """Per-class-averaged accuracy of a `val_pass`, charged to `meter` (a phase's validation checks
        are part of its budget)."""
        logits, flops, self._val_seconds = self.val_pass()
        meter.charge(flops=flops, seconds=self._val_seconds)
        return split_accuracy(logits, self.data.val, self.data.num_classes)

    def _solve_phase(self, phase: Phase, meter: Meter, train, loss_fn, loss_name: str) -> dict:
        """A phase fitted in one call on cached train and val features (val selects its settings).

        The solver runs to convergence whatever the budget: its FLOPs and seconds are charged
        (so they may exceed a FLOPs or seconds budget); its iterations are in the phase log, not
        in the budget's steps or epochs, which count minibatch training.
        """
        feats = self._cached_features(meter, train).tensors
        val = self._cached_features(meter, self.data.val).tensors
        dev = self.device
        with Stopwatch(dev) as sw:
            log = phase.solve(feats[0].to(dev), feats[1].to(dev), val[0].to(dev), val[1].to(dev), loss_fn)
        meter.charge(flops=log["flops"], seconds=all_ranks_sum(sw.elapsed, self.dist, dev))
        if phase.on_end is not None:
            phase.on_end()
        return {"phase": phase.name, "spent": meter.spent.as_dict(), "budget": str(meter.budget),
                "budget_applies": False, "solver": log, "loss": loss_name, "sampler": None,
                "train_images": len(train)}

    # -- checkpoints ----------------------------------------------------------------------
    def checkpoint_state(self, run: "_PhaseRun") -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly, and every callback's state."""
        return {
            "phase": run.index, "epoch": run.epoch, "delta": self.method.delta_state_dict(),
            "method_state": self.method.resume_state(),
            "optimizer": run.optimizer.state_dict(), "spent": run.meter.spent.as_dict(),
            "flops_per_image": run.flops_per_image, "step_seconds": run.step_seconds,
            "rng": rng_state(), "phase_log": list(self._result.phases), "schedule_base": run.schedule_base,
            "config_hash": config_hash(self.spec.config),
            "callbacks": {cb.key: cb.state() for cb in self.callbacks if cb.key},
        }

    def _resume_state(self) -> dict | None:
        """The checkpoint's state, its callbacks' and earlier phases' tensors restored; None without one."""
        state = self.checkpoint.load(config_hash(self.spec.config)) if self.checkpoint else None
        if state is None:
            return None
        for cb in self.callbacks:
            if cb.key:
                cb.load_state(state.get("callbacks", {}).get(cb.key))
        if state["phase"] > 0:  # earlier phases' tensors are part of the delta saved at this point
            self.method.load_delta(state["delta"])
            self.method.load_resume_state(state.get("method_state", {}))
        return state

    # -- evaluation ----------------------------------------------------------------------
    def train_mode(self) -> None:
        """Back to training mode after an evaluation (a callback's)."""
        train_mode(self.method)

    def epoch_val_accuracy(self, run: "_PhaseRun") -> float:
        """Per-class-averaged validation accuracy of the phase now training, for the history, without
        touching the training RNG stream (a DataLoader draws its base seed from torch's RNG). A
        cached-feature phase embeds the val images once and only re-runs its classifier each epoch."""
        phase, cache = run.phase, run.val_cache
        state = rng_state()
        method = self.method
        try:
            method.eval()
            val = self.data.val
            if phase.cache_features:
                if "feats" not in cache:
                    cache["feats"] = run_batches(method.embed, self._eval_loader(val), self.device, self.autocast,
                                                 self.channels_last)
                with torch.no_grad():
                    logits = method.classify(cache["feats"].to(self.device)).float().cpu()
            else:
                logits = run_batches(method, self._eval_loader(val), self.device, self.autocast, self.channels_last)
        finally:
            set_rng_state(state)
            train_mode(method)
        return split_accuracy(logits, val, self.data.num_classes)

    def predict(self, split) -> torch.Tensor:
        """Logits of the method on `split`, in eval mode (used for the registered test/val logits)."""
        self.method.eval()
        return run_batches(self.method, self._eval_loader(split), self.device, self.autocast, self.channels_last)
