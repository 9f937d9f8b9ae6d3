"""ltbench: long-tailed classifiers on frozen pretrained ViTs, trained, registered, fused, compared."""
__version__ = "0.1.0"
