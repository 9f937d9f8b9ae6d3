"""A registered or exported expert loaded back as an eval-mode `torch.nn.Module`.

What an expert needs to be rebuilt is a `Spec`: its resolved config, class names and
training counts (some methods build buffers from them: LiT's caption features, LA priors),
the tensors applied to the bare backbone before the method is built (the `init=` expert's
backbone tensors, as `training.pipeline.build_all` applies them) and its delta. A fused expert's spec
holds its constituents' specs and the fitted scorer's tensors. Specs come from the registry
(`Spec.from_registry`) or from one exported safetensors file (`Spec.from_file`), so
`load_expert(NAME)` and `load_expert(FILE)` build the same model.

An exported file records a fingerprint of the frozen backbone tensors it was trained on;
loading it on a machine whose backbone differs is an error, not silently wrong predictions.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image
from torch import nn

from ..errors import ExpertError

EXPORT_FORMAT = "ltbench-expert/1"


@dataclass
class Spec:
    """Everything needed to rebuild one expert (see the module docstring)."""

    name: str
    config: dict[str, Any]
    classnames: list[str]
    class_counts: list[int] | None
    delta: dict[str, torch.Tensor]
    base: dict[str, torch.Tensor] = field(default_factory=dict)
    members: list["Spec"] = field(default_factory=list)
    fingerprint: str | None = None

    @property
    def fused(self) -> bool:
        """A fused expert is rebuilt from its members and scorer, not from one backbone and delta."""
        return str(self.config.get("method", "")).startswith("fuse:")

    # -- from the registry -------------------------------------------------------------------
    @classmethod
    def from_registry(cls, name: str, registry=None) -> "Spec":
        """How to rebuild a registered expert: its config and meta are the whole recipe."""
        from ..store.index import Registry

        registry = registry or Registry.existing()
        ex = registry.get(name)
        changed = ex.recipe_changed()
        if changed:
            raise ExpertError(f"expert {name!r}: {changed}; it would be rebuilt from another recipe than it was"
                              " trained with — restore it or retrain")
        config, meta = ex.config, ex.meta
        spec = cls(name, config, list(meta.get("classnames") or []), meta.get("class_counts"), ex.delta())
        if spec.fused:
            spec.members = [cls.from_registry(n, registry) for n in config["experts"]]
            return spec
        init = (config.get("method_config") or {}).get("init")
        if init:  # build_all applies the init expert's backbone tensors to the fresh backbone
            spec.base = {k: v for k, v in registry.get(init).delta().items() if k.startswith("backbone.")}
        return spec

    # -- one file ------------------------------------------------------------------------------
    def _flatten(self, prefix: str = "") -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        header = {"name": self.name, "config": self.config, "classnames": self.classnames,
                  "class_counts": self.class_counts, "fingerprint": self.fingerprint}
        tensors = {f"{prefix}delta.{k}": v for k, v in self.delta.items()}
        tensors.update({f"{prefix}base.{k}": v for k, v in self.base.items()})
        members = []
        for i, m in enumerate(self.members):
            h, t = m._flatten(f"{prefix}experts.{i}.")
            members.append(h)
            tensors.update(t)
        header["members"] = members
        return header, tensors

    def save(self, path: str | Path, force: bool = False, protected: Path | None = None) -> Path:
        """One safetensors file: every tensor, and the spec tree as JSON in its metadata.

        Written to a fresh temporary beside `path`, then moved there: an existing `path` is refused
        unless `force` (and then only a regular file is replaced), anything under `protected` (the
        registry home) always; on any failure nothing is left behind."""
        from safetensors.torch import save_file

        path = Path(path)
        _check_target(path, force, protected)
        header, tensors = self._flatten()
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:100]}.", suffix=".tmp", dir=path.parent)
        except OSError as e:
            raise ExpertError(f"cannot write {path}: {e.strerror}") from None
        os.close(fd)
        try:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp,
                      metadata={"format": EXPORT_FORMAT, "spec": json.dumps(header, default=str)})
            if force:
                os.replace(tmp, path)
            else:
                os.link(tmp, path)  # fails with EEXIST, replacing nothing, if `path` appeared meanwhile
        except OSError as e:
            if e.errno == errno.EEXIST:
                raise ExpertError(f"{path} exists; pass --force to replace it") from None
            raise ExpertError(f"cannot write {path}: {e.strerror}; nothing was written") from None
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)
        return path

    @classmethod
    def from_file(cls, path: str | Path) -> "Spec":
        """How to rebuild an exported expert file: the recipe travels in its safetensors header."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise ExpertError(f"{path}: no such file")
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as e:
            raise ExpertError(f"{path}: not a safetensors file ({e})") from None
        if meta.get("format") != EXPORT_FORMAT:
            raise ExpertError(f"{path}: not an ltbench expert export (format {meta.get('format')!r},"
                              f" expected {EXPORT_FORMAT!r}); write one with `ltbench export NAME FILE`")
        return cls._unflatten(json.loads(meta["spec"]), tensors, "")

    @classmethod
    def _unflatten(cls, header: dict[str, Any], tensors: dict[str, torch.Tensor], prefix: str) -> "Spec":
        def part(kind: str) -> dict[str, torch.Tensor]:
            p = f"{prefix}{kind}."
            return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}

        return cls(header["name"], header["config"], header["classnames"], header["class_counts"], part("delta"),
                   part("base"), [cls._unflatten(h, tensors, f"{prefix}experts.{i}.")
                                  for i, h in enumerate(header.get("members") or [])], header.get("fingerprint"))


def backbone_fingerprint(method: nn.Module, stored: Sequence[str]) -> str:
    """sha256 over the frozen backbone tensors (those the expert does not store), names included."""
    h = hashlib.sha256()
    for name, t in sorted({**dict(method.named_parameters()), **dict(method.named_buffers())}.items()):
        if not name.startswith("backbone.") or name in stored:
            continue
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _build_method(spec: Spec, weights: str | None) -> nn.Module:
    """The method as it ended training: backbone (+ init tensors), method, delta. A freshly built
    method is in its inference state (LPT starts in its last stage), so no phase hook is replayed."""
    from ..backbones.factory import create_backbone
    from ..methods import create_method

    c = spec.config
    import numpy as np

    with torch.random.fork_rng():  # building draws initial values that the delta then replaces
        backbone = create_backbone(c["backbone"], img_size=c.get("img_size"), weights=weights or c.get("weights"),
                                   pretrained=c.get("pretrained", True))
        own = dict(backbone.model.named_parameters())
        with torch.no_grad():
            for k, v in spec.base.items():
                name = k.removeprefix("backbone.")
                if name in own and own[name].shape == v.shape:
                    own[name].copy_(v)
        counts = np.asarray(spec.class_counts) if spec.class_counts is not None else None
        method = create_method(c["method"], backbone, len(spec.classnames), counts, spec.classnames,
                               **c.get("method_config", {}))
    try:
        method.load_delta(spec.delta)
    except ValueError as e:
        raise ExpertError(f"expert {spec.name!r}: {e}") from None
    method.requires_grad_(False)
    return method.eval()


class ExpertModel(nn.Module):
    """An expert as a model: `model(x)` → logits [B, C] for images prepared by `model.transform`.

    Attributes: `name`, `config`, `classnames`, `transform` (PIL image → input tensor; for a
    fusion whose constituents prepare images differently, a tuple of their inputs). A fused
    expert's "logits" are the log of its fused probabilities, as registered.
    """

    def __init__(self, spec: Spec, weights: str | None = None, check_fingerprint: bool = False):
        super().__init__()
        self.name, self.config, self.classnames = spec.name, spec.config, spec.classnames
        self.members = nn.ModuleList()
        self.method: nn.Module | None = None
        self.fusion = None
        if spec.fused:
            from ..fusion.core import FusionModel

            self.members.extend(ExpertModel(m, weights, check_fingerprint) for m in spec.members)
            self.fusion = FusionModel.from_delta(spec.delta)
            tfs = [m.transform for m in self.members]
            self._shared_transform = len({repr(t) for t in tfs}) == 1
            self.transform: Callable[[Image.Image], Any] = tfs[0] if self._shared_transform else _Each(tfs)
        else:
            from ..data.transforms import build_transform

            self.method = _build_method(spec, weights)
            info = self.method.info
            self.transform = build_transform(info.data_config, info.img_size, train=False)
            self.fingerprint = backbone_fingerprint(self.method, set(spec.delta) | set(spec.base))
            if check_fingerprint and spec.fingerprint and spec.fingerprint != self.fingerprint:
                raise ExpertError(
                    f"expert {spec.name!r} was trained on a different {spec.config['backbone']!r} backbone than the one"
                    f" this machine builds (fingerprint {self.fingerprint}, exported {spec.fingerprint}): pass the"
                    f" backbone weights it was trained with (weights=FILE)")
        self.eval()

    def train(self, mode: bool = True) -> "ExpertModel":
        """Always eval mode: an expert is for inference, so dropout and batch-norm updates stay off."""
        return super().train(False)  # an expert is for inference: always eval mode

    @torch.no_grad()
    def forward(self, x: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits [B, C]; a fused expert takes one input per member (or one for all) and returns its fused log-probabilities."""
        if self.method is not None:
            return self.method(x).float()
        inputs = [x] * len(self.members) if isinstance(x, torch.Tensor) else list(x)
        if len(inputs) != len(self.members):
            raise ExpertError(f"fused expert {self.name!r} takes {len(self.members)} inputs, got {len(inputs)}")
        logits = [m(xi).cpu() for m, xi in zip(self.members, inputs)]
        return self.fusion.log_probs(logits)

    def prepare(self, images: Sequence[Image.Image]) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """A batch from PIL images (converted to RGB, as training saw them)."""
        items = [self.transform(im.convert("RGB")) for im in images]
        if isinstance(items[0], tuple):
            return tuple(torch.stack(col) for col in zip(*items))
        return torch.stack(items)

    @property
    def device(self) -> torch.device:
        """Where the parameters are, so callers move inputs there (CPU for a parameterless expert)."""
        return next(iter(self.parameters()), torch.empty(0)).device


class _Each:
    """One PIL image → a tuple of inputs, one per constituent transform."""

    def __init__(self, transforms: list[Callable]):
        self.transforms = transforms

    def __call__(self, image: Image.Image) -> tuple:
        return tuple(t(image) for t in self.transforms)

    def __repr__(self) -> str:
        return f"Each({self.transforms!r})"


def _spec(expert: str | Path, registry=None) -> tuple[Spec, bool]:
    path = Path(expert)
    if path.suffix == ".safetensors" or path.is_file():
        return Spec.from_file(path), True
    return Spec.from_registry(str(expert), registry), False


def load_expert(expert: str | Path, registry=None, device: str | torch.device = "cpu",
                weights: str | None = None) -> ExpertModel:
    """A registered expert (by name) or an exported file (`ltbench export`) as an eval-mode module.

    `weights` replaces the backbone weights file the config names (another machine's path).
    """
    spec, from_file = _spec(expert, registry)
    return ExpertModel(spec, weights, check_fingerprint=from_file).to(device)


def _check_target(path: Path, force: bool, protected: Path | None) -> None:
    """Refuse, before any work, an export target that is not a new (or, with `force`, an existing
    regular) file in an existing folder outside the registry home."""
    if protected is not None:
        home = protected.resolve()
        target = path.parent.resolve() / path.name
        if target == home or home in target.parents:
            raise ExpertError(f"{path} is inside the registry home {protected}; export to a file outside it")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise ExpertError(f"cannot write {path}: {e.strerror}") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise ExpertError(f"{path} exists and is not a regular file; give a file path")
    if st is not None and not force:
        raise ExpertError(f"{path} exists; pass --force to replace it")
    if not path.parent.is_dir():
        raise ExpertError(f"cannot write {path}: its folder {path.parent} does not exist")


def export_expert(name: str, file: str | Path, registry=None, force: bool = False) -> Path:
    """Write one safetensors file holding everything `load_expert(FILE)` needs besides the backbone."""
    from ..store.index import Registry

    registry = registry or Registry.existing()
    _check_target(Path(file), force, registry.home)  # before the model is built
    if registry.sqlite and Path(file).resolve() == Path(registry.index).resolve():
        raise ExpertError(f"{file} is the registry index; export to another file")
    spec = Spec.from_registry(name, registry)
    _fill_fingerprints(spec, ExpertModel(spec))
    return spec.save(file, force=force, protected=registry.home)


def _fill_fingerprints(spec: Spec, model: ExpertModel) -> None:
    if spec.fused:
        for s, m in zip(spec.members, model.members):
            _fill_fingerprints(s, m)
    else:
        spec.fingerprint = model.fingerprint
