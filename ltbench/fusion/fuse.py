"""`fuse_experts`: registered experts' cached logits → a fitted scorer → a new registered expert.

Order of work, which is also the protocol:

1. ``check_compatible`` — same dataset, data options and data seed, class order, class count,
   training class counts and shot-group thresholds, the same split names and sizes, and
   identical validation labels (order included). Only validation labels are read here.
2. ``fit`` — the scorer gets the validation probabilities and the validation labels, nothing else.
3. ``apply`` — the fitted model is applied to every split (val, test, ood:*) from the
   constituents' cached logits. Only now are the other splits' labels read, to evaluate the
   fused expert as `train` evaluates any expert, and to check that the constituents agree
   on them.

The fused expert is registered like any other: config ``method = "fuse:<scorer>"``, the
constituents and options; delta = the ``FusionModel`` tensors (W_base, class→group map,
offset network state) so ``FusionModel.from_delta`` re-applies it; logits for every split;
metrics by ``evaluate_logits`` with shot groups from the training class counts. Its
``params.trainable`` counts what fusion fitted (W_base when searched, plus the offset
network); ``params.total`` adds the constituents' totals. Its ``spent`` is the honest cost
of the fused result — the constituents' FLOPs and seconds plus the fusion's own seconds
(fusion FLOPs are not counted, 0); both parts are kept apart in ``spent_constituents`` and
``spent_fusion``. OOD sets scored on a class subset use ``meta["class_subsets"]`` of the
first constituent when experts record it (none do yet; then all classes are scored).
"""
from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Sequence

import numpy as np
import torch
from rich.console import Console

from ..errors import FusionError
from ..metrics import (
    FEW_THRESHOLD,
    GROUP_NAMES,
    MANY_THRESHOLD,
    evaluate_logits,
    group_protocol,
    shot_groups,
    thresholds,
)
from ..store.expert import Expert, check_name
from ..store.index import Registry
from ..store.records import ExpertRecord, expert_record
from .core import OBJECTIVES, FusionModel, ProbStack
from .scorers import SCORERS, FitContext

SPLIT_KEYS = ("dataset", "data", "data_seed")  # what decides which samples val / test / OOD hold


def parse_experts(experts: str | Sequence[str]) -> list[str]:
    """`--experts A,B` into distinct names; fewer than two or a repeat is an error before any work."""
    names = [n.strip() for n in (experts.split(",") if isinstance(experts, str) else experts) if n and n.strip()]
    if len(names) < 2:
        raise FusionError(f"fusion needs at least two experts, got {names or 'none'} (--experts A,B)")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise FusionError(f"expert {dup[0]!r} is listed twice in --experts")
    return names


def retrain_command(ex: Expert) -> str:
    """The command that trains an expert again, for errors about what an old expert lacks."""
    c = ex.config
    parts = ["ltbench", "train"]
    for key in ("dataset", "backbone", "method", "budget", "seed"):
        if c.get(key) is not None:
            parts += [f"--{key}", str(c[key])]
    return f"ltbench rm {ex.name} && " + " ".join(parts + ["--name", ex.name])


def check_compatible(members: list[Expert]) -> dict[str, Any]:
    """Refuse experts that were not evaluated on the very same samples and classes.

    Returns what they share (dataset, classnames, class_counts, many/few, split names)."""
    for ex in members:
        if "val" not in ex.splits():
            raise FusionError(
                f"expert {ex.name!r} has no cached validation logits (split 'val'), and fusion fits on validation "
                f"data only; produce them by training it again: {retrain_command(ex)}")
    first = members[0]
    c0, m0 = first.config, first.meta
    n_logits = first.logits("val").shape[1]
    for ex in members[1:]:
        _check_same_data(first, ex)
        _check_same_classes(first, ex, n_logits)
        _check_same_samples(first, ex)
    counts = first.class_counts
    if counts is None or len(counts) != n_logits:
        raise FusionError(f"expert {first.name!r} has no training class_counts in its meta; shot groups are unknown")
    return {"dataset": c0.get("dataset"), "data": c0.get("data"), "data_seed": _split_key(c0, "data_seed"),
            "classnames": m0.get("classnames"), "class_counts": counts,
            "many": int(c0.get("many", MANY_THRESHOLD)), "few": int(c0.get("few", FEW_THRESHOLD)),
            "groups": group_protocol(c0), "splits": first.splits()}


def _mismatch(what: str, first: Expert, ex: Expert, a: Any, b: Any) -> FusionError:
    return FusionError(f"experts {first.name!r} and {ex.name!r} differ in {what}: {a!r} vs {b!r}; "
                       "fuse only experts trained on the same dataset, classes and splits")


def _check_same_data(first: Expert, ex: Expert) -> None:
    """Same dataset, data options and data seed: the val / test samples are drawn from these."""
    c0, c = first.config, ex.config
    for key in SPLIT_KEYS:
        a, b = _split_key(c0, key), _split_key(c, key)
        if a != b:
            what = {"dataset": "dataset", "data": "dataset options",
                    "data_seed": "data seed (the val / test samples are drawn from it)"}[key]
            raise _mismatch(what, first, ex, a, b)


def _check_same_classes(first: Expert, ex: Expert, n_logits: int) -> None:
    """Same class count, order, training counts and shot-group thresholds: one meaning per column."""
    m0, m = first.meta, ex.meta
    n0, n = len(m0.get("classnames") or []), len(m.get("classnames") or [])
    width = ex.logits("val").shape[1]
    if width != n_logits or n != n0:
        raise _mismatch("class count", first, ex, f"{n_logits} logits, {n0} class names", f"{width} logits, {n} class names")
    if m.get("classnames") != m0.get("classnames"):
        i = next(i for i, (a, b) in enumerate(zip(m0["classnames"], m["classnames"])) if a != b)
        raise _mismatch(f"class order (class {i})", first, ex, m0["classnames"][i], m["classnames"][i])
    k0, k = list(m0.get("class_counts") or []), list(m.get("class_counts") or [])
    if k != k0:
        i = next((i for i, (a, b) in enumerate(zip(k0, k)) if a != b), min(len(k0), len(k)))
        raise _mismatch(f"training class counts (class {i}; so their shot groups differ)", first, ex,
                        k0[i] if i < len(k0) else None, k[i] if i < len(k) else None)
    p0, p = group_protocol(first.config), group_protocol(ex.config)
    if p != p0:
        raise _mismatch("shot-group protocol (groups)", first, ex, p0, p)
    for key, a, b in zip(("many", "few"), first.thresholds, ex.thresholds):
        if a != b:
            raise _mismatch(f"shot-group threshold {key!r}", first, ex, a, b)


def _check_same_samples(first: Expert, ex: Expert) -> None:
    """Same split names and sizes, identical validation labels in the same order (only val labels are read)."""
    splits0 = first.splits()
    if ex.splits() != splits0:
        extra = sorted(set(ex.splits()) ^ set(splits0))
        raise _mismatch(f"cached splits (not shared: {', '.join(extra)})", first, ex, splits0, ex.splits())
    labels0, labels = first.labels("val"), ex.labels("val")
    if len(labels) != len(labels0):
        raise _mismatch("validation split size", first, ex, len(labels0), len(labels))
    if not np.array_equal(labels, labels0):
        i = int(np.flatnonzero(labels != labels0)[0])
        raise _mismatch(f"validation labels / sample order (first at row {i})", first, ex, int(labels0[i]), int(labels[i]))
    for s in splits0:
        if ex.rows(s) != first.rows(s):
            raise _mismatch(f"size of split {s!r}", first, ex, first.rows(s), ex.rows(s))


def _split_key(config: dict[str, Any], key: str) -> Any:
    """A trained expert's data seed is its `seed`; a fused one records its constituents' as `data_seed`."""
    if key == "data_seed":
        return config.get("data_seed", config.get("seed"))
    value = config.get(key)
    if key == "data" and isinstance(value, dict):  # where the files live is not which samples they are
        return {k: v for k, v in value.items() if k != "root"}
    return value


def study_name_for(members: list[Expert], scorer: str, objective: str, per_group: bool, seed: int) -> str:
    """Same experts (by name and identity), objective, grouping and seed → same resumable study."""
    ident = [(ex.name, ex.meta.get("config_hash"), ex.meta.get("created")) for ex in members]
    key = json.dumps({"experts": ident, "objective": objective, "per_group": per_group, "seed": seed})
    return f"ltbench-fuse-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _shared_labels(members: list[Expert], split: str) -> np.ndarray:
    """Evaluation only (after fitting): the constituents must agree on the split's labels."""
    labels = members[0].labels(split)
    for ex in members[1:]:
        other = ex.labels(split)
        if not np.array_equal(other, labels):
            raise FusionError(f"experts {members[0].name!r} and {ex.name!r} disagree on the labels of split "
                              f"{split!r} (different samples or order); fuse experts evaluated on the same data")
    return labels


def fit(scorer: str, ctx: FitContext) -> tuple[FusionModel, dict[str, Any]]:
    """Fit a scorer on validation data; the one step that learns anything."""
    return SCORERS.get(scorer)(ctx)


def fuse_experts(
    experts: str | Sequence[str],
    scorer: str = "moe",
    *,
    name: str | None = None,
    trials: int = 200,
    objective: str = "balanced",
    seed: int = 0,
    per_group: bool = False,
    storage: str | None = None,
    workers: int = 1,
    registry: Registry | None = None,
    console: Console | None = None,
    quiet: bool = False,
    options: dict[str, Any] | None = None,
) -> Expert:
    """Fuse registered experts with a scorer fitted on validation data; register the result."""
    t_start = time.perf_counter()
    registry = registry or Registry()
    console = console or Console(stderr=True)
    names = parse_experts(experts)
    _check_request(scorer, objective, trials, workers, storage)
    name = name or f"fuse-{scorer}_{'+'.join(names)}"
    check_name(name)
    registry.check_free(name)
    members = [registry.get(n) for n in names]
    shared = check_compatible(members)
    sg = shot_groups(shared["class_counts"], *thresholds(shared))
    groups, group_names = _weight_groups(sg, per_group)
    ctx = FitContext(stack=ProbStack.build([ex.logits("val") for ex in members], groups, with_features=True),
                     labels=members[0].labels("val"), shot_groups=sg, groups=groups, group_names=group_names,
                     experts=names, objective=objective, seed=seed, trials=trials, storage=storage,
                     study_name=study_name_for(members, scorer, objective, per_group, seed), workers=workers,
                     options=options)
    model, info, best_val, fit_seconds = _fit_on_val(scorer, ctx)
    if not quiet:
        console.print(f"fuse:{scorer} fitted on val in {fit_seconds:.1f}s ({objective} {100 * best_val:.2f}%)",
                      highlight=False)
    t1 = time.perf_counter()
    logits, metrics, mean_weights = _apply_all(model, members, shared["splits"], groups, sg)
    config = _fused_config(name, scorer, members, shared, ctx, per_group, options)
    record = _fused_record(config, metrics, members, model, info, ctx, best_val, sg, shared, mean_weights,
                           fit_seconds=fit_seconds, apply_seconds=time.perf_counter() - t1, t_start=t_start)
    config, metrics, meta = record.files()
    return registry.register(name, config, model.delta(), logits, metrics, meta)


def _check_request(scorer: str, objective: str, trials: int, workers: int, storage: str | None) -> None:
    """Options checked before any expert is read ("did you mean" for an unknown scorer)."""
    SCORERS.get(scorer)
    if objective not in OBJECTIVES:
        raise FusionError(f"unknown objective {objective!r}; use one of {', '.join(OBJECTIVES)}")
    if trials < 1:
        raise FusionError(f"--trials must be at least 1, got {trials}")
    from .parallel import check_workers

    check_workers(workers, storage)


def _weight_groups(sg: np.ndarray, per_group: bool) -> tuple[torch.Tensor, list[str]]:
    """Class → weight group: the shot groups present (per_group), else one group of all classes."""
    if not per_group:
        return torch.zeros(len(sg), dtype=torch.long), ["all"]
    present = [g for g in range(len(GROUP_NAMES)) if (sg == g).any()]
    return torch.as_tensor(np.searchsorted(present, sg), dtype=torch.long), [GROUP_NAMES[g] for g in present]


def _fit_on_val(scorer: str, ctx: FitContext) -> tuple[FusionModel, dict[str, Any], float, float]:
    """(model, scorer info, best validation objective, seconds): validation data only."""
    t0 = time.perf_counter()
    model, info = fit(scorer, ctx)
    with torch.no_grad():
        best_val = ctx.score()(ctx.stack.predict(model.weights(ctx.stack)))
    return model, info, best_val, time.perf_counter() - t0


def _apply_all(model: FusionModel, members: list[Expert], splits: list[str], groups: torch.Tensor,
               sg: np.ndarray) -> tuple[dict[str, tuple[torch.Tensor, np.ndarray]], dict[str, Any], dict[str, Any]]:
    """The fitted model on every split, evaluated as `train` evaluates: (logits, metrics, mean weights)."""
    logits: dict[str, tuple[torch.Tensor, np.ndarray]] = {}
    metrics: dict[str, Any] = {}
    mean_weights: dict[str, list[list[float]]] = {}
    subsets = members[0].meta.get("class_subsets") or {}
    for split in splits:
        stack = ProbStack.build([ex.logits(split) for ex in members], groups, with_features=model.needs_features)
        with torch.no_grad():
            w = model.weights(stack)
            lp = stack.log_probs(w)
        mean_weights[split] = _mean_weights(w).tolist()
        labels = _shared_labels(members, split)
        logits[split] = (lp, labels)
        subset = subsets.get(split)
        metrics[split] = evaluate_logits(lp, labels, sg, None if subset is None else np.asarray(subset))
    return logits, metrics, mean_weights


def _fused_config(name: str, scorer: str, members: list[Expert], shared: dict[str, Any], ctx: FitContext,
                  per_group: bool, options: dict[str, Any] | None) -> dict[str, Any]:
    """The fused expert's config: its constituents, scorer, objective and the data they share."""
    backbones = list(dict.fromkeys(str(ex.config.get("backbone")) for ex in members))
    return {
        "name": name, "method": f"fuse:{scorer}", "backbone": "+".join(backbones), "dataset": shared["dataset"],
        "data": shared["data"], "seed": ctx.seed, "data_seed": shared["data_seed"], "experts": ctx.experts,
        "scorer": scorer, "objective": ctx.objective,
        "per_group": per_group, "weight_groups": ctx.group_names, "trials": ctx.trials, "storage": ctx.storage,
        "study_name": ctx.study_name, "many": shared["many"], "few": shared["few"], "groups": shared["groups"], "fusion_space": "probability",
        "options": options or {},
    }


def _fused_record(config: dict[str, Any], metrics: dict[str, Any], members: list[Expert], model: FusionModel,
                  info: dict[str, Any], ctx: FitContext, best_val: float, sg: np.ndarray, shared: dict[str, Any],
                  mean_weights: dict[str, Any], *, fit_seconds: float, apply_seconds: float,
                  t_start: float) -> ExpertRecord:
    """The record through `expert_record`, like a trained expert's, plus what fusion alone has.

    Compute and parameters count the constituents' as well as the scorer's own: the fused
    expert is all of them (its accuracy-vs-params point would otherwise sit at the scorer's few).
    """
    c_flops = sum(float(ex.spent.get("flops") or 0) for ex in members)
    c_seconds = sum(float(ex.spent.get("seconds") or 0) for ex in members)
    fitted = model.num_params(base=config["scorer"] in ("search", "moe"))  # mean / learned: W_base is fixed
    search = info.get("search", {})
    val_split = info.pop("split", None)
    subsets = members[0].meta.get("class_subsets") or {}
    return expert_record(
        config, metrics, seed=ctx.seed, budget="fuse",
        spent={"flops": c_flops, "seconds": c_seconds + fit_seconds},  # fusion's own FLOPs: 0, uncounted
        params={"trainable": sum(int(ex.params.get("trainable") or 0) for ex in members) + fitted,
                "total": sum(int(ex.params.get("total") or 0) for ex in members) + fitted, "fusion": fitted},
        class_counts=shared["class_counts"].tolist(), classnames=shared["classnames"], groups=sg,
        constituents=[{"name": ex.name, "method": ex.config.get("method"), "backbone": ex.config.get("backbone"),
                       "config_hash": ex.meta.get("config_hash"), "val": ex.metrics.get("val", {}).get("overall"),
                       "test": ex.metrics.get("test", {}).get("overall")} for ex in members],
        weights={"experts": ctx.experts, "groups": ctx.group_names, "w_base": model.w_base.tolist(),
                 "per_sample_offsets": model.offset is not None, "mean_per_split": mean_weights},
        objective=ctx.objective, best_val=best_val,
        trials={"requested": ctx.trials, "completed": search.get("trials_completed", 0),
                "run_now": search.get("trials_run", 0), "best_trial": search.get("best_trial"),
                "study_name": search.get("study_name"), "storage": ctx.storage} if search else None,
        scorer_info=info,
        val_split=val_split,  # which validation rows fitted what (moe: W_base on one part, W_offset on the other)
        spent_constituents={"flops": c_flops, "seconds": c_seconds},
        spent_fusion={"flops": 0.0, "seconds": fit_seconds, "apply_seconds": apply_seconds},
        wall_seconds=time.perf_counter() - t_start,
        **({"class_subsets": subsets} if subsets else {}),
    )


def _mean_weights(w: torch.Tensor) -> torch.Tensor:
    """Mean normalised weight of each expert (per group): [E, G]."""
    if w.dim() == 3:
        w = w / w.sum(1, keepdim=True).clamp_min(1e-12)
        return w.mean(0)
    return w / w.sum(0, keepdim=True).clamp_min(1e-12)


def apply_fused(fused: Expert, registry: Registry, split: str) -> torch.Tensor:
    """Re-apply a fused expert's stored scorer to its constituents' cached logits of a split."""
    model = FusionModel.from_delta(fused.delta())
    members = [registry.get(n) for n in fused.config["experts"]]
    return model.log_probs([ex.logits(split) for ex in members])
