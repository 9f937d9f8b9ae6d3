"""`ltbench bench SUITE --plan`: what a suite would run and cost, counted without training, weights or images."""
from __future__ import annotations

from typing import Any

from ..data import train_image_count
from ..spec import RunSpec
from .results import budget_words
from .schema import Suite


def forward_flops(backbone: str, img_size: int | None) -> tuple[float | None, int | None]:
    """(FLOPs of one image's forward through the backbone, its input size), counted on the meta
    device: no weights are loaded or allocated. (None, None) when the model cannot be built so."""
    import torch

    from ..backbones.factory import create_backbone
    from ..budget import count_flops

    try:
        body = backbone[len("clip:"):] if backbone.startswith("clip:") else None
        from ..plugins import CLIP_BACKBONES

        if body is not None and body not in CLIP_BACKBONES:  # an open_clip architecture: its image tower
            import open_clip

            from ..backbones.clip import _quiet_open_clip

            with _quiet_open_clip():
                model = open_clip.create_model(body.partition("/")[0], pretrained=None, device="meta")
            size = model.visual.image_size
            size = int(size[0] if isinstance(size, (tuple, list)) else size)
            x = torch.zeros(1, 3, size, size, device="meta")
            return float(count_flops(lambda: model.encode_image(x))), size
        arch = backbone if body is not None else backbone.partition(".")[0]  # a timm tag names weights only
        with torch.device("meta"):
            bb = create_backbone(arch, img_size=img_size, pretrained=False)
        x = torch.zeros(1, 3, bb.img_size, bb.img_size, device="meta")
        return float(count_flops(lambda: bb.features(x))), int(bb.img_size)
    except Exception:  # an estimate only: a model that cannot be built on meta is "unknown"
        return None, None


#: A training step costs about 3 forward passes (forward + backward) per image.
TRAIN_FORWARDS = 3


def vs_paper(run: RunSpec) -> dict[str, Any]:
    """The resolved method values that differ from the method's paper defaults (what a preset or
    the suite's `set:` changed), so a plan shows which recipe a run trains."""
    from dataclasses import asdict

    paper = asdict(type(run.method_config)())
    return {k: v for k, v in asdict(run.method_config).items() if k != "preset" and k in paper and paper[k] != v}


def plan_rows(suite: Suite) -> list[dict[str, Any]]:
    """One row per run and fusion label (per budget): seeds, budget, training images, estimated FLOPs per seed.

    FLOPs ≈ 3 × the backbone's forward FLOPs × the images a run sees (epochs × training images, or
    steps × batch size); a FLOPs budget is its own estimate, a seconds budget has none. Runs on
    cached features spend less (one forward per image); evaluation passes are not counted."""
    from ..spec import read_budget

    rows: list[dict[str, Any]] = []
    fwd_cache: dict[tuple, tuple] = {}
    for text in suite.budgets or [suite.budget]:
        rows += _plan_rows_at(suite, read_budget(text), fwd_cache)
    return rows


def _plan_rows_at(suite: Suite, budget, fwd_cache: dict[tuple, tuple]) -> list[dict[str, Any]]:
    """`plan_rows` at one budget."""
    rows: list[dict[str, Any]] = []
    first = {j.label: j for j in reversed(suite.jobs) if j.budget == str(budget)}  # the first seed's job of each label
    for spec in suite.runs:
        run = first[spec.label].run
        key = (run.backbone, run.img_size)
        if key not in fwd_cache:
            fwd_cache[key] = forward_flops(*key)
        fwd, size = fwd_cache[key]
        images = train_image_count(run.dataset, root=run.root, seed=run.seed, **run.data)
        seen = {"epochs": None if images is None else budget.amount * images,
                "steps": budget.amount * getattr(run.method_config, "batch_size", 0), "flops": None,
                "seconds": None}[budget.unit]
        flops = budget.amount if budget.unit == "flops" else \
            (TRAIN_FORWARDS * fwd * seen if fwd is not None and seen is not None else None)
        rows.append({"label": spec.label, "kind": "run", "method": spec.method, "backbone": spec.backbone,
                     "img_size": size, "seeds": list(suite.seeds), "budget": str(budget), "train_images": images,
                     "forward_flops": fwd, "flops_per_seed": flops,
                     "reference": [r["name"] for r in suite.references if r["run"] == spec.label],
                     "preset": run.method_config.preset, "groups": run.groups, "vs_paper": vs_paper(run)})
    for f in suite.fusions:
        rows.append({"label": f.label, "kind": "fusion", "method": f"fuse:{f.scorer}", "backbone": "+".join(f.experts),
                     "img_size": None, "seeds": list(suite.seeds), "budget": str(budget), "train_images": None,
                     "forward_flops": None, "flops_per_seed": 0.0,
                     "reference": [r["name"] for r in suite.references if r["run"] == f.label],
                     "preset": None, "groups": None, "vs_paper": {}})
    return rows


def plan_table(suite: Suite, rows: list[dict[str, Any]]):
    """The plan as a rich table (what `ltbench bench SUITE --plan` prints)."""
    from rich.table import Table

    from ..metrics import GROUP_PROTOCOLS

    unknown = "unknown"
    several = len(suite.budgets) > 1
    groups = next((r["groups"] for r in rows if r["groups"]), "standard")
    table = Table(title=f"ltbench suite {suite.name} on {suite.dataset} — plan ({len(suite.jobs)} jobs, seeds {suite.seeds},"
                        f" {budget_words(suite)} a run, shot groups {groups}: {GROUP_PROTOCOLS[groups]})",
                  caption="est. FLOPs ≈ 3 × forward × (epochs × training images, or steps × batch) per seed: an upper"
                          " estimate (class-capped subsets and cached-feature phases see fewer); training measures"
                          " exactly. vs paper: resolved values that differ from the method's paper defaults")
    cols = ("run", *(["budget"] if several else []), "method", "backbone", "px", "train images", "est. FLOPs / seed",
            "published", "preset", "vs paper")
    for col in cols:
        table.add_column(col, justify="left" if col in ("run", "budget", "method", "backbone", "published", "preset",
                                                        "vs paper") else "right")
    total = 0.0
    for r in rows:
        flops = r["flops_per_seed"]
        total = total + flops * len(r["seeds"]) if flops is not None and total is not None else None
        table.add_row(r["label"], *([r["budget"]] if several else []), r["method"], r["backbone"], str(r["img_size"] or "—"),
                      unknown if r["kind"] == "run" and r["train_images"] is None else
                      f"{r['train_images']:,}" if r["train_images"] is not None else "—",
                      unknown if flops is None else f"{flops:.2e}", ", ".join(r["reference"]) or "—",
                      r["preset"] or "—", ", ".join(f"{k}={v}" for k, v in r["vs_paper"].items()) or "—")
    table.add_row("total", *([""] if several else []), "", "", "", "", unknown if total is None else f"{total:.2e}", "",
                  "", "", end_section=True)
    return table
