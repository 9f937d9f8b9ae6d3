"""`ltbench predict`: classify image files with a registered or exported expert.

Every input is checked (exists, is an image file PIL can identify) before the model is
built; folders are searched recursively for image files, in sorted order.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

from ..errors import DataError, ExpertError

FORMATS = ("table", "json", "csv")


def image_files(inputs: Sequence[str | Path]) -> list[Path]:
    """The image files named or found (recursively) under the folders named; checked up front."""
    from PIL import Image, UnidentifiedImageError

    from ..data.folder import IMAGE_EXTENSIONS

    if not inputs:
        raise DataError("predict: name at least one image file or folder")
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                           and not any(part.startswith(".") for part in p.relative_to(item).parts))
            if not found:
                raise DataError(f"{item}: no image files in this folder (extensions: {', '.join(IMAGE_EXTENSIONS)})")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise DataError(f"{item}: no such file or folder")
    for f in files:
        try:
            with Image.open(f):  # reads the header only (PIL refuses a decompression bomb here)
                pass
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
            raise DataError(f"{f}: not an image PIL can read ({e})") from None
    return files


def predict(expert: str | Path, inputs: Sequence[str | Path], top: int = 5, batch_size: int = 32,
            device: str = "cpu", registry=None, weights: str | None = None) -> list[dict[str, Any]]:
    """[{"file", "predictions": [{"class", "index", "prob"} × top]}], one per image, in input order."""
    import torch
    from PIL import Image

    from ..data.base import load_image
    from .model import load_expert

    if top < 1:
        raise ExpertError(f"--top must be at least 1, got {top}")
    if batch_size < 1:
        raise ExpertError(f"--batch-size must be at least 1, got {batch_size}")
    files = image_files(inputs)
    model = load_expert(expert, registry=registry, device=_device(device), weights=weights)
    k = min(top, len(model.classnames))
    rows = []
    for i in range(0, len(files), batch_size):
        chunk = files[i:i + batch_size]
        images = []
        for f in chunk:
            try:
                images.append(load_image(f))  # exactly as training reads an image (16-bit greys scaled)
            except (OSError, Image.DecompressionBombError) as e:
                raise DataError(f"{f}: unreadable image ({e})") from None
        x = model.prepare(images)
        x = x.to(model.device) if isinstance(x, torch.Tensor) else tuple(t.to(model.device) for t in x)
        probs = torch.softmax(model(x).float().cpu(), dim=1)
        if not torch.isfinite(probs).all():
            raise ExpertError(f"expert {model.name!r} gives non-finite outputs (a damaged delta?); run `ltbench doctor`")
        p, idx = probs.topk(k, dim=1)
        for f, ps, ix in zip(chunk, p.tolist(), idx.tolist()):
            rows.append({"file": str(f), "predictions": [
                {"class": model.classnames[j], "index": j, "prob": q} for j, q in zip(ix, ps)]})
    return rows


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ExpertError(f"--device {name!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ExpertError(f"--device {name!r}: this machine has no CUDA device (use cpu or auto)")
    return device


def render(rows: list[dict[str, Any]], fmt: str):
    """table → a rich Table; json / csv → text (strict JSON: finite numbers only)."""
    if fmt == "json":
        clean = [{**r, "predictions": [{**p, "prob": p["prob"] if math.isfinite(p["prob"]) else None}
                                       for p in r["predictions"]]} for r in rows]
        return json.dumps(clean, indent=2, allow_nan=False) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["file", "rank", "class", "index", "prob"])
        for r in rows:
            for rank, p in enumerate(r["predictions"], 1):
                w.writerow([r["file"], rank, p["class"], p["index"], f"{p['prob']:.6g}"])
        return buf.getvalue()
    if fmt == "table":
        from rich.table import Table

        table = Table(title="predictions")
        table.add_column("file")
        table.add_column("class")
        table.add_column("prob", justify="right")
        table.add_column("next")
        for r in rows:
            best, *rest = r["predictions"]
            table.add_row(r["file"], best["class"], f"{100 * best['prob']:.1f}%",
                          ", ".join(f"{p['class']} {100 * p['prob']:.1f}%" for p in rest))
        return table
    raise ExpertError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
