"""Tables (and later plots) built from the registry alone: no retraining, no re-evaluation."""
from .tables import collect, render, rich_table

__all__ = ["collect", "render", "rich_table"]
