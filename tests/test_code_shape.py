"""Code shape: no function under ltbench/ longer than 80 lines, the expert folder's layout
known to the store's expert module alone, the shot-group thresholds written once."""
import re
import ast
from pathlib import Path

MAX_LINES = 80
#: Functions allowed over the limit, each with its reason (none today): the test below also fails
#: on an entry that is no longer needed, so an allowance cannot outlive its reason.
ALLOWED: set[str] = set()


def long_functions() -> dict[str, int]:
    """'path:name' -> lines, for every function (methods and nested ones too) over MAX_LINES."""
    root = Path(__file__).resolve().parent.parent / "ltbench"
    out = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    out[f"{path.relative_to(root.parent).as_posix()}:{node.name}"] = lines
    return out


def test_no_function_is_longer_than_80_lines():
    found = long_functions()
    assert {k: v for k, v in found.items() if k not in ALLOWED} == {}
    assert sorted(ALLOWED - set(found)) == [], "now short enough: remove it from ALLOWED"


ROOT = Path(__file__).resolve().parent.parent / "ltbench"
#: the expert folder's file names: only ltbench/store/expert.py may spell them
LAYOUT = re.compile(r"delta\.safetensors|metrics\.json|meta\.json|\blogits/")


def test_only_the_expert_module_knows_the_expert_folder_layout():
    found = [f"{p.relative_to(ROOT.parent).as_posix()}:{i}" for p in sorted(ROOT.rglob("*.py"))
             if p != ROOT / "store" / "expert.py"
             for i, line in enumerate(p.read_text().splitlines(), 1) if LAYOUT.search(line)]
    assert found == []


def test_the_shot_thresholds_are_written_once():
    """100 and 20 as the many / few defaults appear in ltbench/metrics.py only; others import them."""
    pattern = re.compile(r"\b(many|few)\w*\s*[:=]\s*[^=\n]*\b(100|20)\b|=\s*100\s*,\s*20\b|\(100,\s*20\)")
    found = [f"{p.relative_to(ROOT.parent).as_posix()}:{i}" for p in sorted(ROOT.rglob("*.py"))
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if pattern.search(line) and not line.lstrip().startswith("#")]
    assert found == ["ltbench/metrics.py:18"]
