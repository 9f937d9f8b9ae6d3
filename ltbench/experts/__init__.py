"""The expert concept: a registered (or exported) expert loaded back as a model, `predict`, `export`."""
from .model import ExpertModel, Spec, export_expert, load_expert
from .predict import predict

__all__ = ["ExpertModel", "Spec", "export_expert", "load_expert", "predict"]
