"""`train_expert`: a resolved run → data → backbone → method → the loop → the registry."""
from __future__ import annotations

import contextlib
import time
from typing import Any, Sequence

import numpy as np
import torch
from rich.console import Console

from .. import reproducible
from ..backbones.factory import create_backbone
from ..budget import Stopwatch
from ..data import create_dataset
from ..data.base import LTDataset
from ..methods import create_method
from ..methods.base import Method
from ..metrics import evaluate_logits, thresholds
from ..spec import RunSpec
from ..store.index import Registry
from ..store.records import expert_record
from .callbacks import Callback
from .distributed import Dist, device_for, init_distributed
from .tracking import Tracker
from .trainer import Trainer, resolve_device, seed_everything


def build_all(spec: RunSpec, registry: Registry | None = None, tuning: bool = False) -> tuple[LTDataset, Method]:
    """Data, backbone and method for a run (shared by training and tuning's trials).

    With `init=EXPERT`, that expert's tensors are applied twice: those that belong to the bare
    backbone (e.g. LiT-aligned projections) before the method is built, so a text classifier
    built at construction already sees them; all matching tensors (prompts, adapters, head)
    after it. `tuning` drops the test split (and adds no OOD sets) before anything can read them.
    """
    from ..errors import ConfigError

    data = create_dataset(spec.dataset, root=spec.root, seed=spec.seed, **spec.data)
    data.many_threshold, data.few_threshold = thresholds(spec.config)
    if tuning:
        from ..data.base import ArraySplit

        data.test, data.ood = ArraySplit(np.zeros((0, 1, 1), np.uint8), np.zeros(0, np.int64)), {}
    elif spec.ood:
        from ..data.ood import attach_ood

        attach_ood(data, list(spec.ood))
    try:  # before validating the data: a bad img_size fails at once
        backbone = create_backbone(spec.backbone, img_size=spec.img_size, weights=spec.weights,
                                   pretrained=spec.pretrained)
    except ValueError as e:
        from ..errors import BackboneError

        raise BackboneError(f"backbone {spec.backbone!r}: {e}") from None
    data.validate(skip_bad_images=spec.skip_bad_images)
    init = spec.method_config.init
    delta: dict[str, torch.Tensor] = {}
    loaded: list[str] = []
    if init:
        src = (registry or Registry()).get(init)
        if src.config["backbone"] != spec.backbone or src.config["dataset"] != spec.dataset:
            raise ConfigError(f"init={init}: that expert was trained on {src.config['backbone']} /"
                              f" {src.config['dataset']}, this run uses {spec.backbone} / {spec.dataset}")
        delta = src.delta()
        own = dict(backbone.model.named_parameters())
        with torch.no_grad():
            for k, v in delta.items():
                name = k.removeprefix("backbone.")
                if k.startswith("backbone.") and name in own and own[name].shape == v.shape:
                    own[name].copy_(v)
                    loaded.append(k)
    try:
        method = create_method(spec.method, backbone, data.num_classes, data.class_counts, data.classnames,
                               config=spec.method_config)
    except ValueError as e:
        raise ConfigError(f"method {spec.method!r}: {e}") from None
    if init and not (method.load_delta(delta, partial=True) or loaded):
        raise ConfigError(f"init={init}: none of its tensors fit method {spec.method!r}")
    return data, method


def train_expert(spec: RunSpec, registry: Registry | None = None, console: Console | None = None,
                 quiet: bool = False, callbacks: Sequence[Callback] = (),
                 tuning: dict[str, Any] | None = None) -> "Expert | None":  # noqa: F821
    """Train one expert from a resolved run and register it; nothing is registered on failure.

    `tuning`: the study that chose the config's tuned values (recorded in the expert's meta).

    Under torchrun every rank trains; rank 0 alone evaluates and registers (others return None).
    """
    registry = registry or Registry()
    name = spec.name
    registry.check_free(name)  # indexed, or a folder the index does not know: refuse before any work
    reproducible.check(spec.reproducible)
    requested = resolve_device(spec.device)
    d = init_distributed(requested)
    device = device_for(requested, d)
    with contextlib.ExitStack() as held:
        if d.is_main:  # one run per checkpoint folder: a second run of this name stops here
            held.enter_context(registry.lock_run(name))
        return _train_locked(spec, registry, d, device, console, quiet, callbacks, tuning)


def _train_locked(spec: RunSpec, registry: Registry, d: Dist, device: torch.device,
                  console: Console | None, quiet: bool,
                  callbacks: Sequence[Callback] = (),
                  tuning: dict[str, Any] | None = None) -> "Expert | None":  # noqa: F821
    name = spec.name
    seed_everything(spec.seed)
    t0 = time.perf_counter()
    data, method = build_all(spec, registry)
    spec = spec.replace(img_size=method.info.img_size)  # the backbone's own size when none was asked for
    method.to(device)
    tracker = Tracker(spec.config, console or Console(stderr=True), quiet, home=registry.home, enabled=d.is_main)
    trainer = Trainer(method, data, spec, device, console, ckpt_dir=registry.run_dir(name), quiet=quiet, dist=d,
                      callbacks=[tracker, *callbacks])
    try:
        result = trainer.fit(spec.budget, resume=spec.resume)
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
        spec.config, metrics, seed=spec.seed, budget=str(spec.budget), spent=result.spent.as_dict(),
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
