#!/usr/bin/env python
"""Training and inference throughput (images/s) of vpt-deep and lpt on a GPU.

    python benchmarks/bench_throughput.py                    # ViT-B/16 at 224, batch 128, on CUDA when present
    python benchmarks/bench_throughput.py --quick            # CPU smoke run on a tiny ViT (seconds)
    python benchmarks/bench_throughput.py --compile          # also torch.compile the training forward

Random backbone weights and synthetic RGB images (no files, no network), 365 classes with a
Places-LT-like profile. Two numbers per method and phase:

- **end to end**: `Trainer.fit` under a steps budget, exactly as `ltbench train` runs it
  (loader workers, pinned memory, the phase's sampler and loss, bf16 autocast on CUDA);
  images/s over the steady steps (the first `--warmup` optimiser steps of each phase — the FLOP
  count, allocator and kernel warm-up — are left out), timed by an optimiser post-step hook;
  inference is `Trainer.predict` over the eval split, as registering an expert does.
- **model only**: the same forward/backward/step on one batch already on the device, with the
  trainer's autocast setting and with fp32, interleaved call by call, so their ratio is
  measured side by side; the gap to "end to end" is the data pipeline's cost.

LPT's phase 2 forward runs L + (L−K) blocks (block reuse), phase 1 and VPT-deep L blocks.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.optim.optimizer import register_optimizer_step_post_hook

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ltbench.spec import resolve_run  # noqa: E402
from ltbench.data.base import LTDataset, Split, exponential_profile  # noqa: E402
from ltbench.backbones.factory import create_backbone  # noqa: E402
from ltbench.methods import create_method  # noqa: E402
from ltbench.training.trainer import Trainer, begin_phase, make_optimizer, resolve_device  # noqa: E402


class PoolSplit(Split):
    """`len(labels)` images drawn in turn from a small pool of random RGB images (no big copy)."""

    def __init__(self, pool: np.ndarray, labels: np.ndarray):
        self.pool, self.labels = pool, np.asarray(labels, dtype=np.int64)

    def image(self, i: int) -> Image.Image:
        return Image.fromarray(self.pool[i % len(self.pool)])

    def subset(self, idx) -> "PoolSplit":
        idx = np.asarray(idx, dtype=np.int64)
        return PoolSplit(self.pool[idx % len(self.pool)], self.labels[idx])


def synthetic_data(num_classes: int, train_images: int, eval_images: int, side: int, seed: int = 0) -> LTDataset:
    """Random RGB images (side × side, like decoded JPEGs) with an exponential LT profile."""
    rng = np.random.default_rng(seed)
    counts = np.array(exponential_profile(num_classes, head=max(1, train_images // 20), imbalance=100))
    counts = np.maximum(1, np.round(counts * train_images / counts.sum())).astype(int)
    pool = rng.integers(0, 256, size=(64, side, side, 3), dtype=np.uint8)
    eval_labels = np.arange(eval_images) % num_classes
    return LTDataset("synthetic-lt", [f"c{i}" for i in range(num_classes)],
                     PoolSplit(pool, np.repeat(np.arange(num_classes), counts)), PoolSplit(pool, eval_labels[:2]),
                     PoolSplit(pool, eval_labels))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def end_to_end(args, method_name: str, device: torch.device) -> dict:
    """Trainer.fit + Trainer.predict, images/s of each phase's steady steps and of inference."""
    run = resolve_run({"method": method_name, "backbone": args.backbone, "budget": f"{args.steps}steps",
                          "img_size": args.img_size, "pretrained": False, "device": str(device),
                          "num_workers": args.workers, "eval_batch_size": args.batch, "compile": args.compile},
                         {"batch_size": args.batch})
    data = synthetic_data(args.num_classes, args.train_images, args.eval_images, args.image_side)
    torch.manual_seed(0)
    bb = create_backbone(args.backbone, img_size=args.img_size, pretrained=False)
    method = create_method(method_name, bb, data.num_classes, data.class_counts, data.classnames,
                           config=run.method_config).to(device)
    trainer = Trainer(method, data, run, device, quiet=True)
    stamps: list[tuple[int, float]] = []

    def hook(opt, *_):
        sync(device)
        stamps.append((id(opt), time.perf_counter()))

    handle = register_optimizer_step_post_hook(hook)
    try:
        result = trainer.fit(run.budget)
    finally:
        handle.remove()
    out = {"autocast": trainer.autocast, "phases": []}
    for phase, opt in zip(result.phases, dict.fromkeys(o for o, _ in stamps)):
        ts = [t for o, t in stamps if o == opt][args.warmup:]
        rate = args.batch * (len(ts) - 1) / (ts[-1] - ts[0]) if len(ts) > 1 else float("nan")
        out["phases"].append((phase["phase"], phase["sampler"], len(ts) - 1, rate))
    sync(device)
    t0 = time.perf_counter()
    trainer.predict(data.test)
    sync(device)
    out["infer"] = len(data.test) / (time.perf_counter() - t0)
    return out


def model_only(args, method_name: str, device: torch.device) -> list[dict]:
    """Per phase: train step and eval forward on a resident batch, trainer autocast vs fp32."""
    torch.manual_seed(0)
    bb = create_backbone(args.backbone, img_size=args.img_size, pretrained=False)
    counts = np.array(exponential_profile(args.num_classes, 500, 100))
    cfg = resolve_run({"method": method_name, "backbone": args.backbone}, {"batch_size": args.batch})
    method = create_method(method_name, bb, args.num_classes, counts, config=cfg.method_config).to(device)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)
    y = torch.randint(args.num_classes, (args.batch,), device=device)
    amp = device.type == "cuda"  # the trainer's default ("auto")
    rows = []
    for phase in method.phases():
        if phase.cache_features:
            continue
        begin_phase(method, phase)
        opt = make_optimizer(phase, method.cfg)

        def train_step(bf16: bool):
            def f():
                method.train()
                method.backbone.eval()
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    out = method(x)
                    extra = method.extra_loss()
                loss = F.cross_entropy(out.float(), y) + (extra.float().mean() if extra is not None else 0.0)  # extra_loss is per image
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            return f

        def infer(bf16: bool):
            def f():
                method.eval()
                with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    method(x)
            return f

        row = {"phase": phase.name}
        for kind, make in (("train", train_step), ("infer", infer)):
            sides = {"trainer": make(amp), "fp32": make(False)}
            times = {k: [] for k in sides}
            for f in sides.values():
                for _ in range(args.warmup):
                    f()
            for i in range(args.reps):
                for name in (("trainer", "fp32") if i % 2 == 0 else ("fp32", "trainer")):
                    sync(device)
                    t0 = time.perf_counter()
                    sides[name]()
                    sync(device)
                    times[name].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) for k, v in times.items()}
            row[kind] = args.batch / med["trainer"]
            row[f"{kind}_ratio"] = statistics.median(a / b for a, b in zip(times["fp32"], times["trainer"]))
        rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CPU-sized smoke run (vit-tiny-test, 32 px)")
    ap.add_argument("--backbone", default="vit_base_patch16_224")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--methods", default="vpt-deep,lpt")
    ap.add_argument("--steps", type=int, default=40, help="training budget in steps (LPT: split over its 2 phases)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--reps", type=int, default=20, help="timed calls per side, model-only part")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--num-classes", type=int, default=365)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", action="store_true", help="torch.compile the training forward (end to end)")
    ap.add_argument("--skip", default="", help="comma list: e2e,model")
    args = ap.parse_args(argv)
    if args.quick:
        args.backbone, args.img_size, args.batch, args.steps = "vit-tiny-test", 32, 8, 8
        args.warmup, args.reps, args.workers, args.num_classes = 1, 3, 0, 10
    args.image_side = args.img_size * 8 // 7  # like a short side resized to 256 for a 224 crop
    args.train_images = max(args.batch * (args.steps + 2), 2000 if not args.quick else 0)
    args.eval_images = args.batch * (4 if args.quick else 20)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"bench_throughput: torch {torch.__version__}, {name}, {args.backbone} at {args.img_size} px, batch"
          f" {args.batch}, {args.num_classes} classes, {args.workers} loader workers"
          f"{', torch.compile' if args.compile else ''}")
    for m in args.methods.split(","):
        if "e2e" not in skip:
            r = end_to_end(args, m, device)
            for phase, sampler, steps, rate in r["phases"]:
                print(f"{m:9s} {phase:14s} train end to end  {rate:9.1f} img/s  ({steps} steady steps,"
                      f" sampler {sampler}, bf16 autocast {r['autocast']})")
            print(f"{m:9s} {'(final)':14s} infer end to end  {r['infer']:9.1f} img/s  ({args.eval_images} images,"
                  f" Trainer.predict)")
        if "model" not in skip:
            for row in model_only(args, m, device):
                print(f"{m:9s} {row['phase']:14s} train model only  {row['train']:9.1f} img/s  (fp32 time / trainer"
                      f" time {row['train_ratio']:.2f})")
                print(f"{m:9s} {row['phase']:14s} infer model only  {row['infer']:9.1f} img/s  (fp32 time / trainer"
                      f" time {row['infer_ratio']:.2f})")
    if device.type != "cuda":
        print("(on CPU the trainer runs fp32 too: the model-only ratios compare fp32 with itself)")
    else:
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
