"""ltbench: long-tailed classifiers on frozen pretrained ViTs, trained, registered, fused, compared."""
__version__ = "0.1.0"


def load_expert(expert, registry=None, device="cpu", weights=None):
    """A registered expert (name) or an exported file as an eval-mode `torch.nn.Module` with
    `.transform` and `.classnames` (see `ltbench.experts.load_expert`; torch is imported on call)."""
    from .experts import load_expert as _load

    return _load(expert, registry=registry, device=device, weights=weights)
