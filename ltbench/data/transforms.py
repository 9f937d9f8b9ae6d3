"""Image transforms from a backbone's data config (timm's `resolve_data_config` output).

Training: timm's standard train transform (random resized crop + horizontal flip), colour
jitter off unless asked for. Evaluation: resize to img_size / crop_pct, centre crop.
Images arrive as PIL RGB (Split.image converts grey to RGB).
"""
from __future__ import annotations

from typing import Any, Callable

from timm.data import create_transform
from timm.data.constants import (
    DEFAULT_CROP_PCT,
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
)


def build_transform(
    data_config: dict[str, Any],
    img_size: int,
    train: bool,
    *,
    color_jitter: float | None = None,
    scale: tuple[float, float] | None = None,
    hflip: float = 0.5,
) -> Callable:
    """timm transform for (3, img_size, img_size) inputs with the backbone's mean/std/interpolation/crop_pct."""
    cfg = data_config or {}
    kwargs: dict[str, Any] = dict(
        input_size=(3, int(img_size), int(img_size)),
        is_training=train,
        mean=tuple(cfg.get("mean", IMAGENET_DEFAULT_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_DEFAULT_STD)),
        interpolation=cfg.get("interpolation", "bicubic"),
    )
    if train:
        kwargs.update(color_jitter=color_jitter, scale=scale, hflip=hflip)
    else:
        kwargs.update(crop_pct=cfg.get("crop_pct", DEFAULT_CROP_PCT), crop_mode=cfg.get("crop_mode"))
    return create_transform(**kwargs)
