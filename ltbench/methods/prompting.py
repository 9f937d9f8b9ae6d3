"""Prompt tokens on any backbone that exposes `embed_tokens`, `blocks`, `finish`.

VPT, LPT and LPT++ share this one mechanism: learnable tokens are inserted right after the
prefix tokens (class + register tokens) before a block, and replaced (deep) or kept
(shallow) before the next; they are removed before the final norm and pooling.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import nn

from ..backbones.base import Backbone

PromptFn = Callable[[int], Optional[torch.Tensor]]


def vpt_init_(t: torch.Tensor, patch_area: int) -> torch.Tensor:
    """VPT's uniform Xavier init over (3·patch area + dim) fan."""
    bound = math.sqrt(6.0 / (3 * patch_area + t.shape[-1]))
    return nn.init.uniform_(t, -bound, bound)


def patch_area(backbone: Backbone) -> int:
    """Pixels per patch: VPT's Xavier bound counts the patch embedding's fan-in."""
    ps = backbone.patch_size
    return int(ps[0] * ps[1])


def insert(x: torch.Tensor, prompts: torch.Tensor, npt: int, prev: int) -> torch.Tensor:
    """Replace the `prev` prompt tokens after the prefix with `prompts` ([P, D] or [B, P, D])."""
    if prompts.dim() == 2:
        prompts = prompts.unsqueeze(0).expand(x.shape[0], -1, -1)
    return torch.cat([x[:, :npt], prompts.to(x.dtype), x[:, npt + prev:]], dim=1)


def strip(x: torch.Tensor, npt: int, prev: int) -> torch.Tensor:
    """The tokens without the `prev` prompt tokens after the prefix, so pooling sees what the backbone expects."""
    return torch.cat([x[:, :npt], x[:, npt + prev:]], dim=1) if prev else x


def run_blocks(backbone: Backbone, x: torch.Tensor, start: int, end: int, prompt_fn: PromptFn,
               prev: int = 0) -> tuple[torch.Tensor, int]:
    """Blocks [start, end) with prompts; `prompt_fn(i)` None keeps the current prompt tokens.

    Returns the tokens and how many prompt tokens they still carry.
    """
    npt = backbone.num_prefix_tokens
    for i in range(start, end):
        p = prompt_fn(i)
        if p is not None:
            x = insert(x, p, npt, prev)
            prev = p.shape[-2]
        x = backbone.blocks[i](x)
    return x, prev


def prompted_features(backbone: Backbone, images: torch.Tensor, prompt_fn: PromptFn,
                      project: bool = True) -> torch.Tensor:
    """Pre-logits features of a full prompted pass (`project`: see `Backbone.finish`)."""
    x, prev = run_blocks(backbone, backbone.embed_tokens(images), 0, backbone.depth, prompt_fn)
    return backbone.finish(strip(x, backbone.num_prefix_tokens, prev), project)
