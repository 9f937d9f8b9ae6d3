"""Suites: every method of a comparison under one budget, then fusion, then the report.

A suite is a YAML file (`ltbench bench SUITE.yaml`; `ltbench demo` runs the built-in
`ltbench/suites/demo.yaml`):

    name: demo                     # expert names: <name>-<label>-s<seed>; report: <home>/reports/<name>
    dataset: fashion-mnist-lt
    backbone: dinov2-s14           # default backbone of every run
    budget: 45s                    # ONE budget for every run: epochs | steps | flops | seconds
    budgets: [1epochs, 2epochs]    # optional: every run at each of these too (accuracy against budget)
    seeds: [0]                     # every run (and fusion) once per seed
    set: {img_size: 56}            # --set keys common to every run
    groups: standard               # shot-group protocol of every run: standard (few < 20) | lpt (few <= 20)
    runs:
      - method: linear-probe       # label defaults to the method name
      - method: lpt
        set: {lr: 0.05}            # the run's own --set keys (win over the suite's)
      - label: lit                 # a label names a run (needed when a method appears twice)
        method: lit
        backbone: clip:dinov2-minilm
      - label: lpt++-vl
        method: lpt++
        backbone: clip:dinov2-minilm
        init: lit                  # start from an earlier run of the suite (→ --set init=<its expert>)
    tune: {budget: 0.75}           # optional: every run tuned the same way first (see ltbench/tuning/tuner.py)
    fusions:
      - label: moe                 # fused expert: <name>-<label>-s<seed>
        experts: [lpt, lpt++-vl]   # run labels
        scorer: moe                # mean | search | learned | moe
        trials: 200
    reference:                     # published numbers (%, as printed), shown beside the measured rows
      - run: lpt                   # the run (or fusion) label they belong to; omit for a paper-only row
        source: "LPT (ICLR 2023), Table 3"
        overall: 50.07
        many: 49.27
        ood: {imagenet-sketch: 36.22}
        quoted: [many]             # numbers not found in the paper's text (quoted from elsewhere; true: all)

`ltbench bench SUITE --plan` validates the suite and prints what it would run (runs, seeds,
budget, training images counted from the split files, estimated FLOPs) without training,
without weights and without the datasets' images.

The whole suite is validated before anything trains: every run is resolved through
`spec.resolve_run`, so an unknown key, method, dataset or budget fails at once, with
the file and the place in it. Runs already registered are skipped (a suite resumes where it
stopped); a registered run whose stored config disagrees with the suite is an error rather
than a silently stale row. The trainer enforces the budget (a run stops before the step that
would overrun it) and the report shows what each run spent.

With `budgets:` (or `ltbench bench SUITE --budgets 1epochs,2epochs`), every run and fusion
runs once per budget and seed; each budget is tuned on its own when the suite tunes. Experts
at the suite's own `budget:` keep their names; the others get the budget in theirs
(`<name>-<label>-<budget>-s<seed>`), so adding budgets reuses what is registered. The budgets
share one unit (they are one axis of the report's accuracy-against-budget view).

With `tune:`, every run of the suite gets the same tuning: the same multiple of its budget spent
on trials of its method's declared search space, selected on validation accuracy; the suite may
not also set a key that is tuned (that would be a hand-picked override beside the search).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..config import load_yaml
from ..errors import ConfigError
from ..methods import METHODS
from ..plugins.names import UnknownNameError, suggest
from ..spec import RunSpec, read_budget, resolve_run

if TYPE_CHECKING:
    from ..tuning.tuner import TuneSpec


SUITE_KEYS = ("name", "description", "dataset", "backbone", "budget", "budgets", "seeds", "set", "groups", "tune",
              "runs", "fusions", "reference", "resources", "retries")
REFERENCE_KEYS = ("run", "name", "source", "overall", "many", "medium", "few", "ood", "quoted")
ACCURACY_KEYS = ("overall", "many", "medium", "few")
RUN_KEYS = ("label", "method", "backbone", "set", "init", "resources", "retries")
#: What a Ray task of a run asks for (`--executor ray`); never part of a run's config.
RESOURCE_KEYS = ("cpus", "gpus")
FUSION_KEYS = ("label", "experts", "scorer", "trials", "objective", "per_group")
REQUIRED = ("dataset", "backbone", "runs")


class SuiteError(ConfigError):
    """A suite file that cannot run as written; the message names the file and the bad key."""


@dataclass
class SuiteRun:
    """One training job of a suite (a method under a budget, per seed)."""
    label: str
    method: str
    backbone: str
    sets: dict[str, Any] = field(default_factory=dict)
    init: str | None = None
    resources: dict[str, float] = field(default_factory=dict)  # the suite's, updated by the run's
    retries: int = 0


@dataclass
class FusionSpec:
    """One fusion job of a suite: experts combined by a scorer."""
    label: str
    experts: list[str]
    scorer: str = "moe"
    trials: int = 200
    objective: str = "balanced"
    per_group: bool = False


@dataclass
class Job:
    """One unit of work of a suite: a run to train or a fusion to fit, for one seed."""

    kind: str  # "run" | "fusion"
    label: str
    name: str  # the registered expert's name
    seed: int
    run: RunSpec | None = None  # the resolved run (runs)
    explicit: dict[str, Any] | None = None  # what the suite sets (runs): checked against a registered expert
    fusion: FusionSpec | None = None
    members: list[str] | None = None  # expert names (fusions)
    resources: dict[str, float] = field(default_factory=dict)  # Ray task resources: cpus, gpus
    retries: int = 0  # further attempts after a failure (Ray executor)
    needs: list[str] = field(default_factory=list)  # expert names this job waits for (init, fusion members)
    budget: str = ""  # the budget it runs under (one of the suite's budgets)
    tune: "TuneSpec | None" = None  # runs: tuned first (the suite's `tune:`)


@dataclass
class Suite:
    """A parsed, validated suite file: the jobs to run, in order, and what to report."""
    name: str
    dataset: str
    backbone: str
    budget: str
    seeds: list[int]
    sets: dict[str, Any]
    runs: list[SuiteRun]
    fusions: list[FusionSpec]
    source: str = "<suite>"
    description: str = ""
    tune: "TuneSpec | None" = None
    jobs: list[Job] = field(default_factory=list)
    #: published rows: {run, name, source, overall, many, medium, few (fractions or None), ood: {set: fraction}}
    references: list[dict[str, Any]] = field(default_factory=list)
    resources: dict[str, float] = field(default_factory=dict)
    retries: int = 0
    #: every budget the suite runs at (normalised, one unit); [budget] unless `budgets:` / --budgets
    budgets: list[str] = field(default_factory=list)

    def expert_name(self, label: str, seed: int, budget: str | None = None) -> str:
        """The registered name of a job's expert, unique per suite, label, budget and seed (the
        suite's own `budget:` is not written, so its experts keep their names when budgets are added)."""
        tag = "" if budget is None or budget == self.budget else f"-{budget}"
        return f"{self.name}-{label}{tag}-s{seed}"

    def with_budgets(self, budgets: list[str]) -> "Suite":
        """The same suite run at each of `budgets` (already checked by `read_budgets`)."""
        from dataclasses import replace

        suite = replace(self, budgets=list(budgets))
        suite.jobs = plan(suite)
        return suite

    @property
    def names(self) -> list[str]:
        """Every expert name the suite registers."""
        return [j.name for j in self.jobs]


# -- loading and validation ------------------------------------------------------------------
def _hint(key: str, known) -> str:
    return suggest(key, known, cutoff=0.6)


def _check_keys(where: str, data: dict, known: tuple[str, ...], source: str) -> None:
    for key in data:
        if key not in known:
            raise SuiteError(f"{source}: {where}unknown key {key!r}.{_hint(key, known)} Known keys: {', '.join(known)}")


def _mapping(value: Any, what: str, source: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SuiteError(f"{source}: {what} must be a mapping of key: value, got {type(value).__name__}")
    return dict(value)


def _label_ok(label: Any, where: str, source: str) -> str:
    if not isinstance(label, str) or not label.strip() or "/" in label or label.startswith("."):
        raise SuiteError(f"{source}: {where}label {label!r} must be a non-empty string without '/'")
    return label


#: `set:` keys a suite decides itself, and where they go instead.
_SUITE_DECIDES = {"name": "the suite's name and the run's label", "seed": "seeds:", "dataset": "dataset:",
                  "budget": "the top-level budget: (one budget for every run)", "resume": "the suite (it resumes by itself)",
                  "method": "the run's method:", "backbone": "backbone: (top level or the run's)",
                  "init": "the run's init: <label of an earlier run>"}


def _resources(value: Any, where: str, source: str) -> dict[str, float]:
    """`resources: {cpus: 8, gpus: 1}`: what one Ray task asks for; gpus > 1 runs the task as DDP."""
    res = _mapping(value, f"{where}resources", source)
    _check_keys(f"{where}resources: ", res, RESOURCE_KEYS, source)
    for key, v in res.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (key == "cpus" and v == 0):
            raise SuiteError(f"{source}: {where}resources: {key} must be a {'positive' if key == 'cpus' else 'non-negative'}"
                             f" number, got {v!r}")
        if key == "gpus" and v > 1 and v != int(v):
            raise SuiteError(f"{source}: {where}resources: gpus above 1 must be whole (one DDP process a GPU), got {v!r}")
    return res


def _retries(value: Any, where: str, source: str, default: int = 0) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SuiteError(f"{source}: {where}retries must be a non-negative integer, got {value!r}")
    return value


def _check_set(sets: dict[str, Any], where: str, source: str) -> None:
    for key, instead in _SUITE_DECIDES.items():
        if key in sets:
            raise SuiteError(f"{source}: {where}set: {key!r} is not a --set key in a suite; use {instead}")


def _check_backbone(name: str, where: str, source: str) -> None:
    """Fail on an unknown backbone name before any run builds a model (no weights are loaded)."""
    import timm

    from ..backbones.factory import create_backbone
    from ..plugins import BACKBONES

    if name.startswith("clip:"):
        import open_clip

        from ..plugins import CLIP_BACKBONES

        body = name[len("clip:"):]
        if body in CLIP_BACKBONES or body.partition("/")[0] in open_clip.list_models():
            return
    elif name in BACKBONES or name in timm.list_models() or name in timm.list_models(pretrained=True):
        return  # a tagged name (vit_base_patch16_224.augreg_in21k) is known without its weights
    try:
        create_backbone(name, pretrained=False)  # raises its "did you mean" for unknown names
    except UnknownNameError as e:
        raise SuiteError(f"{source}: {where}{e}") from None


def parse_suite(data: Any, source: str = "<suite>") -> Suite:
    """Validate a suite mapping (as read from YAML) and resolve every run of it; nothing trains."""
    if not isinstance(data, dict):
        raise SuiteError(f"{source}: a suite is a mapping of keys ({', '.join(SUITE_KEYS)}), "
                         f"got {type(data).__name__}")
    _check_keys("", data, SUITE_KEYS, source)
    for key in REQUIRED:
        if data.get(key) in (None, "", []):
            raise SuiteError(f"{source}: missing required key {key!r}")
    name = data.get("name") or Path(source).stem
    _label_ok(name, "suite name: ", source)
    from ..errors import BudgetError

    if data.get("budget") in (None, "") and data.get("budgets") in (None, "", []):
        raise SuiteError(f"{source}: missing required key 'budget'")
    budgets = read_budgets(data["budgets"], f"{source}: budgets") if data.get("budgets") not in (None, "", []) else []
    try:
        budget = str(read_budget(str(data["budget"]))) if data.get("budget") not in (None, "") else budgets[-1]
    except BudgetError as e:
        raise SuiteError(f"{source}: budget: {e}") from None
    seeds = _parse_seeds(data, source)
    common = _mapping(data.get("set"), "set", source)
    _check_set(common, "", source)
    if "groups" in data:  # one shot-group protocol for the suite (a run may not set another: see plan)
        from ..metrics import GROUP_PROTOCOLS

        if data["groups"] not in GROUP_PROTOCOLS:
            raise SuiteError(f"{source}: groups: expected {' or '.join(GROUP_PROTOCOLS)}, got {data['groups']!r}")
        if common.get("groups", data["groups"]) != data["groups"]:
            raise SuiteError(f"{source}: set: groups={common['groups']} contradicts groups: {data['groups']}")
        common["groups"] = data["groups"]
    resources = _resources(data.get("resources"), "", source)
    retries = _retries(data.get("retries"), "", source)
    if not isinstance(data["runs"], list):
        raise SuiteError(f"{source}: runs must be a list of runs (each with a method), got {type(data['runs']).__name__}")

    runs: list[SuiteRun] = []
    labels: dict[str, SuiteRun] = {}
    for i, raw in enumerate(data["runs"]):
        spec = _parse_run(i, raw, data, labels, resources, retries, source)
        labels[spec.label] = spec
        runs.append(spec)

    fusions: list[FusionSpec] = []
    raw_fusions = data.get("fusions") or []
    if not isinstance(raw_fusions, list):
        raise SuiteError(f"{source}: fusions must be a list, got {type(raw_fusions).__name__}")
    for i, raw in enumerate(raw_fusions):
        fusions.append(_parse_fusion(i, raw, labels, fusions, source))

    references = _parse_references(data.get("reference"), [*labels, *(f.label for f in fusions)], source)
    from ..tuning.tuner import parse_tune

    try:
        tune = parse_tune(data.get("tune"), f"{source}: tune")
    except ConfigError as e:
        raise SuiteError(str(e)) from None
    suite = Suite(name=name, dataset=str(data["dataset"]), backbone=str(data["backbone"]), budget=budget,
                  budgets=budgets or [budget], seeds=seeds, sets=common, runs=runs, fusions=fusions, source=source,
                  description=str(data.get("description") or ""), references=references, resources=resources,
                  retries=retries, tune=tune)
    suite.jobs = plan(suite)
    return suite


def read_budgets(value: Any, where: str = "--budgets") -> list[str]:
    """A list of budgets ("1epochs,2epochs,4epochs" or a YAML list), normalised: distinct, one
    unit, in the order given; anything else is a one-line SuiteError naming the bad value."""
    from ..errors import BudgetError

    items = [x.strip() for x in value.split(",")] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or any(isinstance(x, (bool, dict, list)) or x in (None, "")
                                                       for x in items):
        raise SuiteError(f"{where}: expected a list of budgets such as 1epochs,2epochs,4epochs, got {value!r}")
    out, units = [], set()
    for x in items:
        try:
            b = read_budget(str(x))
        except BudgetError as e:
            raise SuiteError(f"{where}: {e}") from None
        if str(b) in out:
            raise SuiteError(f"{where}: budget {str(b)!r} is listed twice")
        out.append(str(b))
        units.add(b.unit)
    if len(units) > 1:
        raise SuiteError(f"{where}: budgets must share one unit (one axis of the report), got {', '.join(out)}")
    return out


def _parse_seeds(data: dict, source: str) -> list[int]:
    """The suite's seeds: one integer or a list of distinct ones (default [0])."""
    seeds = data.get("seeds", [0])
    seeds = [seeds] if isinstance(seeds, int) and not isinstance(seeds, bool) else seeds
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) or len(set(seeds)) < len(seeds)):
        raise SuiteError(f"{source}: seeds must be a list of distinct integers, e.g. [0, 1, 2], got {seeds!r}")
    return seeds


def _parse_run(i: int, raw: Any, data: dict, labels: dict[str, SuiteRun], resources: dict, retries: int,
               source: str) -> SuiteRun:
    """runs[i] of a suite as a SuiteRun; `labels` are the runs before it (an `init` must name one)."""
    if isinstance(raw, str):
        raw = {"method": raw}
    if not isinstance(raw, dict):
        raise SuiteError(f"{source}: runs[{i}] must be a mapping with a method, got {raw!r}")
    if "budget" in raw:
        raise SuiteError(f"{source}: runs[{i}]: a suite has one budget for every run; "
                         f"set it at the top level (budget: …)")
    _check_keys(f"runs[{i}]: ", raw, RUN_KEYS, source)
    if not raw.get("method"):
        raise SuiteError(f"{source}: runs[{i}]: missing required key 'method'")
    label = _label_ok(raw.get("label") or raw["method"], f"runs[{i}]: ", source)
    where = f"runs[{i}] ({label}): "
    try:
        METHODS.get(str(raw["method"]))
    except UnknownNameError as e:
        raise SuiteError(f"{source}: {where}{e}") from None
    if label in labels:
        raise SuiteError(f"{source}: {where}label {label!r} is used twice; give one of the runs its own `label:`")
    sets = _mapping(raw.get("set"), f"runs[{i}].set", source)
    _check_set(sets, where, source)
    init = raw.get("init")
    if init is not None:
        if init not in labels:
            later = any((r.get("label") or r.get("method")) == init
                        for r in data["runs"][i + 1:] if isinstance(r, dict))
            why = ("is a later run: list it before this one" if later
                   else f"is no run of this suite.{_hint(init, labels)} Runs so far: {', '.join(labels) or 'none'}")
            raise SuiteError(f"{source}: {where}init {init!r} {why}")
    spec = SuiteRun(label, str(raw["method"]), str(raw.get("backbone") or data["backbone"]), sets, init,
                   {**resources, **_resources(raw.get("resources"), where, source)},
                   _retries(raw.get("retries"), where, source, retries))
    if init is not None and labels[init].backbone != spec.backbone:
        raise SuiteError(f"{source}: {where}init {init!r} runs on {labels[init].backbone}, this run on "
                         f"{spec.backbone}: a run can only start from one on the same backbone")
    return spec


def _parse_fusion(i: int, raw: Any, labels: dict[str, SuiteRun], fusions: list[FusionSpec],
                  source: str) -> FusionSpec:
    """fusions[i] of a suite as a FusionSpec; its experts must be runs of the suite."""
    from ..fusion import OBJECTIVES, SCORERS

    if not isinstance(raw, dict):
        raise SuiteError(f"{source}: fusions[{i}] must be a mapping with experts, got {raw!r}")
    _check_keys(f"fusions[{i}]: ", raw, FUSION_KEYS, source)
    scorer = raw.get("scorer", "moe")
    label = _label_ok(raw.get("label") or f"fuse-{scorer}", f"fusions[{i}]: ", source)
    where = f"fusions[{i}] ({label}): "
    if label in labels or label in {f.label for f in fusions}:
        raise SuiteError(f"{source}: {where}label {label!r} is used twice; give the fusion its own `label:`")
    experts = raw.get("experts")
    if not isinstance(experts, list) or len(experts) < 2:
        raise SuiteError(f"{source}: {where}experts must list at least two run labels, got {experts!r}")
    for e in experts:
        if e not in labels:
            raise SuiteError(f"{source}: {where}expert {e!r} is no run of this suite.{_hint(e, labels)}"
                             f" Runs: {', '.join(labels)}")
    if len(set(experts)) < len(experts):
        raise SuiteError(f"{source}: {where}an expert is listed twice in {experts}")
    try:
        SCORERS.get(scorer)
    except UnknownNameError as e:
        raise SuiteError(f"{source}: {where}{e}") from None
    objective = raw.get("objective", "balanced")
    if objective not in OBJECTIVES:
        raise SuiteError(f"{source}: {where}unknown objective {objective!r}; use one of {', '.join(OBJECTIVES)}")
    trials = raw.get("trials", 200)
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise SuiteError(f"{source}: {where}trials must be a positive integer, got {trials!r}")
    return FusionSpec(label, list(experts), scorer, trials, objective, bool(raw.get("per_group", False)))


def _parse_references(raw: Any, labels: list[str], source: str) -> list[dict[str, Any]]:
    """`reference:` rows, percentages as published → fractions; each names its source."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise SuiteError(f"{source}: reference must be a list of published rows, got {type(raw).__name__}")
    out = []
    for i, row in enumerate(raw):
        where = f"{source}: reference[{i}]: "
        if not isinstance(row, dict):
            raise SuiteError(f"{where}must be a mapping (run, source, overall, many, medium, few, ood), got {row!r}")
        _check_keys(f"reference[{i}]: ", row, REFERENCE_KEYS, source)
        if not isinstance(row.get("source"), str) or not row["source"].strip():
            raise SuiteError(f"{where}missing 'source' (the paper and table the numbers come from)")
        run = row.get("run")
        if run is not None and run not in labels:
            raise SuiteError(f"{where}run {run!r} is no run or fusion of this suite.{_hint(run, labels)}")
        ood = _mapping(row.get("ood"), f"reference[{i}].ood", source)
        values = {k: row.get(k) for k in ACCURACY_KEYS}
        for key, v in [*values.items(), *((f"ood.{k}", v) for k, v in ood.items())]:
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 100):
                raise SuiteError(f"{where}{key} must be a percentage in [0, 100] as published, got {v!r}")
        if all(v is None for v in [*values.values(), *ood.values()]):
            raise SuiteError(f"{where}gives no number (overall, many, medium, few or ood)")
        given = [k for k, v in values.items() if v is not None] + [f"ood.{k}" for k, v in ood.items() if v is not None]
        quoted = row.get("quoted", False)
        quoted = given if quoted is True else [] if quoted is False else quoted
        if not isinstance(quoted, list) or not set(quoted) <= set(given):
            raise SuiteError(f"{where}quoted must be true, false or a list of the row's numbers ({', '.join(given)}),"
                             f" got {row.get('quoted')!r}")
        out.append({"run": run, "name": str(row.get("name") or run or f"reference {i}"), "source": row["source"],
                    **{k: None if v is None else v / 100 for k, v in values.items()},
                    "ood": {str(k): v / 100 for k, v in ood.items() if v is not None}, "quoted": list(quoted)})
    return out


def plan(suite: Suite) -> list[Job]:
    """Resolve every run (so a bad key fails before anything trains) into the suite's jobs, in order."""
    src = suite.source
    for bb in dict.fromkeys([suite.backbone] + [r.backbone for r in suite.runs]):
        _check_backbone(bb, "backbone: ", src)
    jobs: list[Job] = []
    for budget, seed in ((b, s) for b in suite.budgets or [suite.budget] for s in suite.seeds):
        for i, spec in enumerate(suite.runs):
            name = suite.expert_name(spec.label, seed, budget)
            flags = {"dataset": suite.dataset, "backbone": spec.backbone, "method": spec.method,
                     "budget": budget, "seed": seed, "name": name}
            sets = {**suite.sets, **spec.sets}
            if spec.init is not None:
                sets["init"] = suite.expert_name(spec.init, seed, budget)
            try:
                run = resolve_run(flags, sets)
            except UnknownNameError as e:
                raise SuiteError(f"{src}: runs[{i}] ({spec.label}): {e}") from None
            except ConfigError as e:
                raise SuiteError(f"{src}: runs[{i}] ({spec.label}): {e}".replace("--set ", "set: ")) from None
            if suite.tune is not None:
                from ..tuning.tuner import search_space

                tuned = sorted(set(search_space(run)) & set(sets))
                if tuned:
                    raise SuiteError(f"{src}: runs[{i}] ({spec.label}): set: {', '.join(tuned)} is tuned (the suite's"
                                     f" tune: block searches it); drop the override or the tune: block")
            if jobs and run.groups != jobs[0].run.groups:
                raise SuiteError(f"{src}: runs[{i}] ({spec.label}): groups={run.groups}, but {jobs[0].label} has"
                                 f" groups={jobs[0].run.groups}: a suite reports one shot-group protocol")
            jobs.append(Job("run", spec.label, name, seed, run=run, explicit={**flags, **sets},
                            resources=spec.resources, retries=spec.retries,
                            needs=[sets["init"]] if spec.init is not None else [], tune=suite.tune,
                            budget=budget))
        for f in suite.fusions:
            members = [suite.expert_name(e, seed, budget) for e in f.experts]
            jobs.append(Job("fusion", f.label, suite.expert_name(f.label, seed, budget), seed, fusion=f,
                            members=members, resources={"cpus": suite.resources.get("cpus", 1)},
                            retries=suite.retries, needs=list(members), budget=budget))
    return jobs


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file (YAML or JSON)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SuiteError(f"{path}: no such suite file") from None
    except IsADirectoryError:
        raise SuiteError(f"{path}: is a folder, not a suite file") from None
    except UnicodeDecodeError as e:
        raise SuiteError(f"{path}: not a text file (byte {e.start} is not UTF-8)") from None
    except OSError as e:
        raise SuiteError(f"{path}: cannot read it ({e.strerror})") from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as e:
        raise SuiteError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    return parse_suite(data, str(path))


def builtin_suite(name: str = "demo") -> Suite:
    """A suite shipped in the package (`ltbench/suites/<name>.yaml`)."""
    try:
        res = resources.files("ltbench.suites") / f"{name}.yaml"
        text = res.read_text() if res.is_file() else None
    except (OSError, TypeError, ValueError):
        # a stale editable install can leave the package a namespace package that
        # importlib.resources cannot read: the file next to this module is the same file
        path = Path(__file__).resolve().parent / f"{name}.yaml"
        text = path.read_text() if path.is_file() else None
    if text is None:
        raise SuiteError(f"no built-in suite {name!r}")
    return parse_suite(load_yaml(text), f"<built-in>/suites/{name}.yaml")


