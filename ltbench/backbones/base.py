"""Backbones: a frozen ViT plus the facts methods and transforms need about it.

`create_backbone(name, img_size=…, weights=…)` is the one entry point (timm's
`create_model` habit). Names are parsed by `names.parse_backbone_name`: registered names are
the offline and test backbones; any name `timm.is_model()` accepts (tags included:
`vit_base_patch16_224.augreg_in21k`) is built by timm, with weights from the hub or from
`--weights FILE`. Every backbone says where its weights came from in `pretrained_cfg`
(recorded in each expert's provenance).
"""
from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import resolve_data_config
from timm.models import VisionTransformer
from torch import nn

from ..errors import BackboneError


@dataclass
class Backbone:
    """A frozen ViT with its data config: the one interface prompt and adapter methods use.

    `embed_tokens` → `blocks` → `finish` is the image path; the timm implementation is
    here, open_clip towers (experts/clip.py) implement the same four members.
    """

    name: str
    model: nn.Module  # the module a method owns (frozen); for timm, the VisionTransformer itself
    img_size: int
    data_config: dict[str, Any] = field(default_factory=dict)
    #: the attribute of a block that normalises the MLP branch's input (adapters tap its input)
    mlp_norm: str = "norm2"
    #: where the weights came from (source, architecture, tag, hub id, file and its sha256)
    pretrained_cfg: dict[str, Any] = field(default_factory=dict, kw_only=True)

    @property
    def vit(self) -> VisionTransformer:
        """The timm VisionTransformer underneath (methods reach into its blocks and tokens)."""
        return self.model

    @property
    def embed_dim(self) -> int:
        """Token width (prompts and adapters live here)."""
        return self.vit.embed_dim

    @property
    def feature_dim(self) -> int:
        """Width of `finish`'s output (what a classifier sees)."""
        return self.vit.num_features

    @property
    def pooled_dim(self) -> int:
        """Width of `finish(project=False)`: a timm ViT has no projection, so the same as `feature_dim`."""
        return self.feature_dim

    @property
    def num_prefix_tokens(self) -> int:
        """Class and register tokens before the patch tokens."""
        return self.vit.num_prefix_tokens

    @property
    def patch_size(self) -> tuple[int, int]:
        """Patch height and width in pixels."""
        return tuple(self.vit.patch_embed.patch_size)

    @property
    def depth(self) -> int:
        """Number of transformer blocks (where per-layer prompts and adapters go)."""
        return len(self.blocks)

    @property
    def blocks(self) -> nn.Sequential:
        """The transformer blocks, in order."""
        return self.vit.blocks

    @property
    def is_clip(self) -> bool:
        """False: only CLIP backbones have a text tower for zero-shot heads."""
        return False

    def qkv_weight(self, block: nn.Module) -> tuple[nn.Module, str]:
        """(module, parameter name) of a block's fused q/k/v projection, for LoRA."""
        return block.attn.qkv, "weight"

    def embed_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Images to the token sequence the first block sees (prefix tokens first)."""
        m = self.vit
        return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))

    def finish(self, tokens: torch.Tensor, project: bool = True) -> torch.Tensor:
        """The last block's tokens (prompts already removed) to pre-logits features; `project` is for
        backbones with a projection after the pooling (CLIP): a timm ViT has none, so it changes nothing."""
        return self.vit.forward_head(self.vit.norm(tokens), pre_logits=True)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Images through every block (no prompts): the last block's token sequence."""
        x = self.embed_tokens(x)
        for block in self.blocks:
            x = block(x)
        return x

    def features(self, x: torch.Tensor, project: bool = True) -> torch.Tensor:
        """Pre-logits features (the final class token for token-pooled ViTs); see `finish` for `project`."""
        return self.finish(self.tokens(x), project)

    def num_params(self) -> int:
        """Parameter count of the whole backbone, for the report."""
        return sum(p.numel() for p in self.model.parameters())


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, computed once per process for a given (path, size, mtime)."""
    st = Path(path).stat()
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def weights_record(source: str, file: str | Path | None = None, **facts: Any) -> dict[str, Any]:
    """The provenance of a backbone's weights; a file is named by its resolved path and sha256."""
    out: dict[str, Any] = {"source": source, **{k: v for k, v in facts.items() if v is not None}}
    if file is not None:
        out["file"] = str(Path(file).resolve())
        out["file_sha256"] = file_sha256(file)
    return out


def _timm_record(model: nn.Module, pretrained: bool, weights: str | None) -> dict[str, Any]:
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    if not (pretrained or weights):
        return weights_record("random init", architecture=cfg.get("architecture"))
    return weights_record("file" if weights else "timm hub", weights, architecture=cfg.get("architecture"),
                          tag=cfg.get("tag") or None, hf_hub_id=cfg.get("hf_hub_id") or None,
                          url=cfg.get("url") or None)


def finish_timm(name: str, model: nn.Module, img_size: int, pretrained_cfg: dict[str, Any] | None = None) -> Backbone:
    if not isinstance(model, VisionTransformer):
        raise BackboneError(f"backbone {name!r} is a {type(model).__name__}; ltbench needs a timm VisionTransformer")
    model.eval()
    cfg = resolve_data_config({}, model=model)
    cfg["input_size"] = (3, img_size, img_size)
    return Backbone(name, model, img_size, cfg, pretrained_cfg=pretrained_cfg or {})


def go_offline_if_hub_unreachable(timeout: float = 3.0) -> bool:
    """Whether the hub is reachable; if not, huggingface_hub is switched to its offline mode for this
    process, so a missing download fails at once (cache only) instead of after a minute of retries."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            from huggingface_hub import constants

            constants.HF_HUB_OFFLINE = True  # read at import time; calls read the constant
        except ImportError:
            pass
        return False


def timm_backbone(name: str, img_size: int | None, weights: str | None, pretrained: bool,
                   display: str | None = None) -> Backbone:
    kwargs: dict[str, Any] = {"num_classes": 0}
    if img_size:
        kwargs["img_size"] = img_size
    if weights:
        path = Path(weights)
        if not path.is_file():
            raise BackboneError(f"--weights {weights}: no such file")
        kwargs["pretrained_cfg_overlay"] = {"file": str(path.resolve())}
    elif pretrained:
        go_offline_if_hub_unreachable()
    try:
        model = timm.create_model(name, pretrained=pretrained or bool(weights), **kwargs)
    except (OSError, RuntimeError, ValueError) as e:
        if weights:
            raise BackboneError(f"could not load --weights {weights} into timm model {name!r}: {e}") from e
        raise BackboneError(
            f"could not fetch pretrained weights for timm model {name!r} ({type(e).__name__}: {str(e)[:120]}). "
            f"Without a network, download them elsewhere and pass --weights FILE (a .safetensors or .pth checkpoint)."
        ) from e
    size = img_size or model.patch_embed.img_size[0]
    return finish_timm(display or name, model, size, _timm_record(model, pretrained, weights))
