"""LPT (Dong et al., ICLR 2023): a shared prompt, then a pool of group prompts per image.

Phase 1 trains a VPT-deep shared prompt (every block) and a cosine classifier. Phase 2
freezes them and trains a pool of m group prompts (last L−K blocks) with keys: the query
is the phase-1 model's final class token, the top-k keys by cosine pick prompts that are
averaged and appended to the shared prompt in the last L−K blocks. The first K blocks of
the query pass are exactly the first K blocks of the phase-2 pass, so their output is
reused: a phase-2 forward costs L + (L−K) blocks, not 2L.
"""
from __future__ import annotations

import inspect
from collections import Counter
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checks import Bool, Choice, Float, Int, Opt
from ..losses import LOSSES
from ..plugins import register_method
from .base import Method, MethodConfig, PartSpec, Phase, _samplers, optimizer_space
from .prompting import run_blocks, strip


@dataclass(frozen=True)
class LPTConfig(MethodConfig):
    """LPT's defaults are the paper's (Sec. 4, App. B); REFERENCE holds the official code's
    values (github DongSky/LPT, phase2_test/train_dual_dualloss.py) where they differ.
    docs/methods.md lists every value with its source."""

    REFERENCE: ClassVar[dict[str, Any]] = {
        "lr": 0.02, "weight_decay": 0.01, "warmup": 1 / 40, "batch_size": 256,  # argparse defaults
        # AGCL(m=0.1, s=20, noise_mul=0.5) over ASLSingleLabel(eps=0.1): smoothed targets weigh
        # the off-target terms; the instance-sampled half uses gamma_pos 0.5, gamma_neg 8
        "margin": 0.1, "label_smoothing": 0.1, "neg_weight": 0.0, "ins_gamma_pos": 0.5, "ins_gamma_neg": 8.0,
        # phase 2 (train_dual_dualloss.py) imports no Mixup: only phase 1 mixes
        "phase2_mixup": 0.0,
    }

    # lr per 256 images (lr_ref_batch). SGD: the paper's 0.002 and the code's 0.02 inside, up to 0.08 (0.01 a
    # batch of 32: above it the same prompts under VPT's SGD diverge in a short run; see vpt.py), down to 2e-4.
    # AdamW: 1e-3 … 0.1 (1.25e-4 … 1.25e-2 a batch of 32). The batch (per part) too: under a budget of a few
    # epochs a smaller one gives the prompts more steps (the lr scales with it through lr_ref_batch).
    SEARCH_SPACE: ClassVar[dict[str, tuple]] = optimizer_space(sgd=(2e-4, 0.08), adamw=(1e-3, 0.1),
                                                               batch_size=("choice", [16, 32]))
    # Paper: SGD (momentum 0.9), lr 0.002·B/256, wd 1e-4, cosine schedule, 5 warm-up epochs of 40 a phase.
    optimizer: str = "sgd"
    lr: float = 0.002
    lr_ref_batch: int = 256
    weight_decay: float = 1e-4
    warmup: float = 5 / 40
    batch_size: int = 32  # per batch part (phase 2's dual batches hold two)
    classifier: str = "cosine"
    cosine_scale: float = 20.0  # the loss's α (official s = 20)
    loss: str = "agcl"  # both phases (A-GCL)
    # A-GCL / GCL options (Sec. 4.3; App. B: λ+ 0, λ− 4); ignored by losses that do not take them
    gamma_pos: Annotated[float, Float(lo=0, hi=100)] = 0.0
    gamma_neg: Annotated[float, Float(lo=0, hi=100)] = 4.0
    ins_gamma_pos: Annotated[float, Float(lo=0, hi=100)] = 0.0  # phase 2's instance-sampled part (the paper: the same loss)
    ins_gamma_neg: Annotated[float, Float(lo=0, hi=100)] = 4.0
    neg_weight: Annotated[float, Float(lo=0, hi=100)] = 1.0  # weight of each off-target term of Eq. 8 (official: 0, via smoothing only)
    margin: Annotated[float, Float(lo=-100, hi=100)] = 0.0
    label_smoothing: Annotated[float, Float(lo=0, hi=1, hi_open=True)] = 0.0
    noise_mul: Annotated[float, Float(lo=0, hi=100)] = 0.5
    mixup: Annotated[float, Float(lo=0, hi=100)] = 1.0  # Mixup α in both phases (App. B; α from the official mixup.py)
    phase2_mixup: Annotated[float | None, Opt(Float(lo=0, hi=100))] = None  # phase 2's Mixup α; None: `mixup` (0: off, as the official code)
    dropout: Annotated[float, Float(lo=0, hi=1, hi_open=True)] = 0.1  # before the head (official nn.Dropout(0.1); the paper does not say)
    sampler: str = "instance"  # phase 1; phase 2 uses phase2_sampler
    phase2_sampler: Annotated[str, Choice(_samplers)] = "dual"  # dual: class-balanced part (weight 1) + instance part (weight β)
    eta: Annotated[float, Float(lo=0, hi=1)] = 0.5  # dual sampling: instance part weight β = η·(E−e)/E, stepped per epoch
    match_weight: Annotated[float, Float(lo=0, hi=1e3)] = 1.0  # weight of 1 − mean_k cos(q, chosen keys) (Eq. 5; official −0.5·Σ_k cos)
    prompt_len: Annotated[int, Int(lo=1, hi=4096)] = 10
    pool_size: Annotated[int, Int(lo=1, hi=65536)] = 20
    top_k: Annotated[int, Int(lo=1, hi=65536)] = 2
    group_layers: Annotated[int | None, Opt(Int(lo=0, hi=4096))] = None  # L−K blocks with group prompts; None: half the blocks (6 of 12)
    phase1_share: Annotated[float, Float(lo=0, hi=1)] = 0.5  # share of the budget for phase 1 (paper: 40 + 40 epochs)
    phase: Annotated[int, Choice((0, 1, 2))] = 0  # 0: both phases; 1: shared prompt only; 2: group prompts from `init`
    # the reference code's naive phase 2 runs two full passes; kept for benchmarks and tests
    reuse_blocks: Annotated[bool, Bool()] = True


@register_method("lpt")
class LPT(Method):
    """LPT: shared VPT-deep prompt + cosine head, then group prompts picked per image"""

    Config = LPTConfig

    def __init__(self, backbone, num_classes, cfg, *args):
        super().__init__(backbone, num_classes, cfg, *args)
        if cfg.phase not in (0, 1, 2):
            raise ValueError(f"phase must be 0 (both), 1 or 2, got {cfg.phase}")
        if cfg.phase == 2 and not cfg.init:
            raise ValueError("phase=2 needs init=<registered phase-1 expert> (--set init=NAME)")
        L, D = backbone.depth, backbone.embed_dim
        self.group_layers = cfg.group_layers if cfg.group_layers is not None else L // 2
        if not 0 < self.group_layers <= L:
            raise ValueError(f"group_layers must be in 1..{L}, got {self.group_layers}")
        if not 0 < cfg.top_k <= cfg.pool_size:
            raise ValueError(f"top_k must be in 1..pool_size={cfg.pool_size}, got {cfg.top_k}")
        self.K = L - self.group_layers
        # the official initialisation (PromptLearner): truncated normal, std 0.02, for the shared
        # prompt, the pool and the keys; the cosine head's rows uniform in [−1, 1] (NormedLinear)
        self.shared = nn.Parameter(nn.init.trunc_normal_(torch.empty(L, cfg.prompt_len, D), std=0.02))
        self.pool = nn.Parameter(nn.init.trunc_normal_(torch.empty(cfg.pool_size, self.group_layers, cfg.prompt_len, D),
                                                       std=0.02))
        # the keys are matched against the query, the features the head reads
        self.keys = nn.Parameter(nn.init.trunc_normal_(torch.empty(cfg.pool_size, self.head_dim), std=0.02))
        self.head = self.make_head()
        if cfg.classifier == "cosine" and not (backbone.is_clip and self.classnames):
            with torch.no_grad():
                self.head.weight.uniform_(-1, 1)
        self.dropout = nn.Dropout(cfg.dropout)
        self.stage = 1 if cfg.phase == 1 else 2
        self._match: torch.Tensor | None = None

    # -- forward ---------------------------------------------------------------------------
    def _shared(self, i: int) -> torch.Tensor:
        return self.shared[i]

    def query(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Phase-1 pass: (query = final class token, tokens after block K, prompt count)."""
        bb = self.info
        x, prev = run_blocks(bb, bb.embed_tokens(images), 0, self.K, self._shared)
        xq, prevq = run_blocks(bb, x, self.K, bb.depth, self._shared, prev)
        return bb.finish(strip(xq, bb.num_prefix_tokens, prevq), self.cfg.head_proj), x, prev

    def select(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Top-k keys by cosine: (indices [B,k], their similarities [B,k], averaged prompts)."""
        sim = F.normalize(q, dim=-1) @ F.normalize(self.keys, dim=-1).t()
        top_sim, idx = sim.topk(self.cfg.top_k, dim=1)
        # the mean of the chosen prompts as a product with averaging weights, not `pool[idx].mean(1)`:
        # an indexing backward on CPU adds into the pool's gradient with atomics from several threads,
        # in an order that changes from run to run (the same seed gave different last bits)
        weights = F.one_hot(idx, self.cfg.pool_size).to(self.pool.dtype).mean(dim=1)  # [B, m]
        return idx, top_sim, torch.einsum("bm,m...->b...", weights, self.pool)  # [B, L−K, P, D]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Stage 1: the shared prompt's features. Stage 2: those features as the query pick the top-k
        group prompts, which replace the prompts from block K on; the first K blocks' tokens are
        reused from the query pass (`reuse_blocks`), so phase 2 costs L + (L − K) blocks, not 2L."""
        if self.stage == 1:
            return self.head(self.dropout(self.query(images)[0]))
        frozen_query = not self.shared.requires_grad
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen_query):
            q, xk, prev = self.query(images)
        idx, top_sim, group = self.select(q.detach() if frozen_query else q)
        self._match = 1 - top_sim.mean(dim=1)  # [B]
        if self.recorder is not None:
            self.recorder.append(idx.detach().cpu())
        bb = self.info
        if not self.cfg.reuse_blocks:  # the naive two-full-pass formulation (benchmarks only)
            xk, prev = run_blocks(bb, bb.embed_tokens(images), 0, self.K, self._shared)

        def prompts(i: int) -> torch.Tensor:
            shared = self.shared[i].unsqueeze(0).expand(group.shape[0], -1, -1)
            return torch.cat([shared, group[:, i - self.K]], dim=1)

        x, prev = run_blocks(bb, xk, self.K, bb.depth, prompts, prev)
        return self.head(self.dropout(bb.finish(strip(x, bb.num_prefix_tokens, prev), self.cfg.head_proj)))

    def extra_loss(self) -> torch.Tensor | None:
        """Per image: match_weight · (1 − mean cosine to its top-k keys), Eq. 5's matching term."""
        if self.stage == 1 or self._match is None or not self.training:
            return None
        return self.cfg.match_weight * self._match

    # -- training --------------------------------------------------------------------------
    def _set_stage(self, stage: int) -> None:
        self.stage = stage

    def phase_params(self, phase: int) -> list[nn.Parameter]:
        """Phase 1: shared prompt + classifier; phase 2: pool + keys + classifier (fine-tuned)."""
        head = list(self.head.parameters())
        return [self.shared, *head] if phase == 1 else [self.pool, self.keys, *head]

    def loss_kwargs(self, instance: bool = False) -> dict[str, Any]:
        """The config's loss options that its loss takes (`instance`: phase 2's instance part)."""
        cfg = self.cfg
        opts = {"gamma_pos": cfg.ins_gamma_pos if instance else cfg.gamma_pos,
                "gamma_neg": cfg.ins_gamma_neg if instance else cfg.gamma_neg,
                "neg_weight": cfg.neg_weight, "margin": cfg.margin, "label_smoothing": cfg.label_smoothing,
                "noise_mul": cfg.noise_mul}
        if cfg.classifier == "cosine":
            opts["scale"] = cfg.cosine_scale  # GCL's noise and margin live on cosines (times α)
        accepted = inspect.signature(LOSSES.get(cfg.loss)).parameters
        return {k: v for k, v in opts.items() if k in accepted}

    def phases(self) -> list[Phase]:
        """Phase 1 (shared prompt + head), then phase 2 (pool + keys + head, dual sampling with the
        instance part's weight decaying to 0); `phase=1|2` runs one of them (phase 2 from an `init` expert)."""
        cfg = self.cfg
        p1 = Phase("shared-prompt", [{"params": self.phase_params(1)}], share=cfg.phase1_share,
                   loss_kwargs=self.loss_kwargs(), mixup=cfg.mixup, on_start=lambda: self._set_stage(1))
        if cfg.phase2_sampler == "dual":
            eta = cfg.eta
            parts = [PartSpec("class", loss_kwargs=self.loss_kwargs()),
                     PartSpec("instance", loss_kwargs=self.loss_kwargs(instance=True),
                              weight=lambda e, E: eta * max(0.0, 1.0 - e / E))]
        else:
            parts = [PartSpec(cfg.phase2_sampler, loss_kwargs=self.loss_kwargs())]
        p2 = Phase("group-prompts", [{"params": self.phase_params(2)}], share=1 - cfg.phase1_share,
                   parts=parts, mixup=cfg.mixup if cfg.phase2_mixup is None else cfg.phase2_mixup,
                   on_start=lambda: self._set_stage(2))
        return {0: [p1, p2], 1: [p1], 2: [p2]}[cfg.phase]

    def trainable_names(self) -> list[str]:
        """Both phases' tensors whatever `phase` runs, so a phase-2 run from a phase-1 expert stores a
        complete LPT and reports the paper's parameter count."""
        # a single-phase run still stores and counts the method's full trainable set, as the paper does
        ids = {id(p) for ph in (1, 2) for p in self.phase_params(ph)}
        return [n for n, p in self.named_parameters() if id(p) in ids]

    # -- prompt matching record (the paper's Figure 4) ------------------------------------
    def artifacts(self, test_labels: np.ndarray | None = None) -> dict[str, Any]:
        """Which group prompts each class's test images chose (the paper's Figure 4), to see whether
        the pool specialises by class."""
        if self.stage == 1 or not self.recorder or test_labels is None:
            return {}
        chosen = torch.cat(self.recorder).numpy()  # [N, k]
        counts = np.zeros((self.num_classes, self.cfg.pool_size), dtype=np.int64)
        np.add.at(counts, (np.repeat(test_labels, chosen.shape[1]), chosen.reshape(-1)), 1)
        return {"prompt_matching.json": {
            "split": "test", "pool_size": self.cfg.pool_size, "top_k": self.cfg.top_k,
            "counts": counts.tolist(),  # [class][prompt]: how often the class's images chose it
            "top_prompts": [[int(p) for p, _ in Counter(dict(enumerate(row))).most_common(self.cfg.top_k)]
                            for row in counts],
        }}
