"""`train_expert`: a resolved run → data → backbone → method → the loop → the registry."""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable

import numpy as np
import torch
from rich.console import Console

from .. import reproducible
from ..backbones.factory import create_backbone
from ..budget import Budget, Stopwatch, parse_budget
from ..data import create_dataset
from ..data.base import LTDataset
from ..methods import create_method
from ..methods.base import Method
from ..metrics import evaluate_logits, thresholds
from ..store.expert import check_name
from ..store.index import Registry
from ..store.records import expert_record
from .distributed import Dist, device_for, init_distributed
from .tracking import Tracker
from .trainer import Trainer, resolve_device, seed_everything


def default_name(run: dict[str, Any]) -> str:
    """The expert name when none is given: method, backbone, dataset and seed, path-safe."""
    return f"{run['method']}_{run['backbone'].replace('/', '-').replace(':', '-')}_{run['dataset']}_s{run['seed']}"


def build_all(run: dict[str, Any], registry: Registry | None = None, tuning: bool = False) -> tuple[LTDataset, Method]:
    """Data, backbone and method for a resolved config (shared by train and evaluation).

    With `init=EXPERT`, that expert's tensors are applied twice: those that belong to the bare
    backbone (e.g. LiT-aligned projections) before the method is built, so a text classifier
    built at construction already sees them; all matching tensors (prompts, adapters, head)
    after it. `tuning` drops the test split (and adds no OOD sets) before anything can read them.
    """
    from ..errors import ConfigError

    data = create_dataset(run["dataset"], root=run["root"], seed=run["seed"], **run["data"])
    data.many_threshold, data.few_threshold = thresholds(run)
    if tuning:
        from ..data.base import ArraySplit

        data.test, data.ood = ArraySplit(np.zeros((0, 1, 1), np.uint8), np.zeros(0, np.int64)), {}
    elif run.get("ood"):
        from ..data.ood import attach_ood

        attach_ood(data, run["ood"])
    try:  # before validating the data: a bad img_size fails at once
        backbone = create_backbone(run["backbone"], img_size=run["img_size"], weights=run["weights"],
                                   pretrained=run["pretrained"])
    except ValueError as e:
        from ..errors import BackboneError

        raise BackboneError(f"backbone {run['backbone']!r}: {e}") from None
    data.validate(skip_bad_images=run.get("skip_bad_images", False))
    init = run["method_config"].get("init")
    delta: dict[str, torch.Tensor] = {}
    loaded: list[str] = []
    if init:
        src = (registry or Registry()).get(init)
        if src.config["backbone"] != run["backbone"] or src.config["dataset"] != run["dataset"]:
            raise ConfigError(f"init={init}: that expert was trained on {src.config['backbone']} /"
                              f" {src.config['dataset']}, this run uses {run['backbone']} / {run['dataset']}")
        delta = src.delta()
        own = dict(backbone.model.named_parameters())
        with torch.no_grad():
            for k, v in delta.items():
                name = k.removeprefix("backbone.")
                if k.startswith("backbone.") and name in own and own[name].shape == v.shape:
                    own[name].copy_(v)
                    loaded.append(k)
    try:
        method = create_method(run["method"], backbone, data.num_classes, data.class_counts, data.classnames,
                               **run["method_config"])
    except ValueError as e:
        raise ConfigError(f"method {run['method']!r}: {e}") from None
    if init and not (method.load_delta(delta, partial=True) or loaded):
        raise ConfigError(f"init={init}: none of its tensors fit method {run['method']!r}")
    return data, method


def train_expert(run: dict[str, Any], registry: Registry | None = None, console: Console | None = None,
                 quiet: bool = False, on_progress: Callable[[str, float], None] | None = None,
                 tuning: dict[str, Any] | None = None) -> "Expert | None":  # noqa: F821
    """Train one expert from a resolved config and register it; nothing is registered on failure.

    `tuning`: the study that chose the config's tuned values (recorded in the expert's meta).

    Under torchrun every rank trains; rank 0 alone evaluates and registers (others return None).
    """
    registry = registry or Registry()
    name = check_name(run["name"] or default_name(run))
    run = {**run, "name": name}
    registry.check_free(name)  # indexed, or a folder the index does not know: refuse before any work
    reproducible.check(run)
    budget = parse_budget(run["budget"])
    requested = resolve_device(run["device"])
    d = init_distributed(requested)
    device = device_for(requested, d)
    with contextlib.ExitStack() as held:
        if d.is_main:  # one run per checkpoint folder: a second run of this name stops here
            held.enter_context(registry.lock_run(name))
        return _train_locked(run, registry, budget, d, device, console, quiet, on_progress, tuning)


def _train_locked(run: dict[str, Any], registry: Registry, budget: Budget, d: Dist, device: torch.device,
                  console: Console | None, quiet: bool,
                  on_progress: Callable[[str, float], None] | None = None,
                  tuning: dict[str, Any] | None = None) -> "Expert | None":  # noqa: F821
    name = run["name"]
    seed_everything(run["seed"])
    t0 = time.perf_counter()
    data, method = build_all(run, registry)
    run["img_size"] = method.info.img_size
    method.to(device)
    tracker = Tracker(run, console or Console(stderr=True), quiet, home=registry.home, enabled=d.is_main)
    trainer = Trainer(method, data, run, device, console, ckpt_dir=registry.run_dir(name), quiet=quiet, dist=d,
                      tracker=tracker, on_progress=on_progress)
    try:
        result = trainer.fit(budget, resume=run["resume"])
    except BaseException:
        tracker.fail()  # an MLflow run ends FAILED instead of staying RUNNING
        raise
    if not d.is_main:
        d.barrier()
        return None
    logits, artifacts = {}, {}
    with Stopwatch(device) as sw:
        for split, s in data.eval_splits().items():
            method.recorder = [] if split == "test" else None  # per-sample choices, e.g. LPT's prompts
            logits[split] = (trainer.predict(s), s.labels)
            if split == "test":
                artifacts = method.artifacts(test_labels=s.labels)
        method.recorder = None
    groups = data.shot_groups()
    subsets = {k: s.class_subset for k, s in data.eval_splits().items()}
    metrics = {split: evaluate_logits(lg, lb, groups, subsets[split]) for split, (lg, lb) in logits.items()}
    if data.skipped:
        metrics["skipped_images"] = data.skipped
    record = expert_record(
        run, metrics, seed=run["seed"], budget=str(budget), spent=result.spent.as_dict(),
        params=method.param_counts(), class_counts=data.class_counts.tolist(), classnames=data.classnames,
        groups=groups, device=device, world_size=d.world, phases=result.phases, eval_seconds=sw.elapsed,
        wall_seconds=time.perf_counter() - t0,
        class_subsets={k: [int(c) for c in v] for k, v in subsets.items() if v is not None},
        skipped_images=data.skipped,
        pretrained_cfg=method.info.pretrained_cfg,  # where the backbone's weights came from
        **({"tuning": tuning} if tuning is not None else {}),
    )
    config, metrics, meta = record.files()
    expert = registry.register(name, config, method.delta_state_dict(), logits, metrics, meta,
                               extra_files=artifacts, history=tracker.rows)
    ckpt = registry.run_dir(name)
    if ckpt.exists():
        import shutil

        shutil.rmtree(ckpt, ignore_errors=True)
    tracker.finish(config, metrics, expert.path)
    d.barrier()
    return expert
