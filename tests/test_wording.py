"""The product speaks of the software only: no README, doc, code, comment, suite, test, benchmark or
script line refers to how it was built (tracker numbers, rounds of work, the machines it ran on).

History belongs in git; a measured state is named by its commit in docs/results.md. The patterns are
assembled from pieces so that this file does not match them itself.
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("README.md", "docs", "ltbench", "tests", "benchmarks", "scripts")
TEXT_SUFFIXES = {".md", ".py", ".yaml", ".yml", ".sh", ".toml", ".txt", ".cfg", ".ini", ".json", ".rst"}

_STOP, _ISSUE, _SESSION, _ROUND = "st" + "op", "iss" + "ue", "sess" + "ion", "ro" + "und"
#: Each pattern is case-insensitive and names the kind of wording it catches.
PATTERNS = {
    "stop-number": rf"\b{_STOP}s? ?#?[0-9]",
    "tracker-number": rf"\b{_ISSUE}s? ?[-#]?[0-9]",
    "session-number": rf"\b{_SESSION}s? ?#?[0-9]",
    "current-stop": rf"\b(this|that|at|since|before|after) {_STOP}\b",
    "rounds-of-work": rf"\b(work|build)[- ]{_ROUND}s?\b",
    "building-sessions": rf"\bthe {_SESSION}s (that|which)\b",
    "offline-machines": r"\bno " + "inter" + r"net on\b",
    "parent-commit": r"\b[0-9a-f]{7,40}" + re.escape("^"),
}
_COMPILED = {why: re.compile(p, re.IGNORECASE) for why, p in PATTERNS.items()}


def _files(root: Path) -> list[Path]:
    """Every text file under the scanned paths (caches and binary data skipped)."""
    out = []
    for name in SCANNED:
        top = root / name
        found = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        out += [p for p in found if p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts]
    return out


def history_wording(root: Path = ROOT) -> list[str]:
    """`file:line: kind: text` for every line that speaks of how the software was built."""
    hits = []
    for path in _files(root):
        for no, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for why, pattern in _COMPILED.items():
                if pattern.search(line):
                    hits.append(f"{path.relative_to(root)}:{no}: {why}: {line.strip()[:120]}")
    return hits


def test_the_product_never_speaks_of_how_it_was_built():
    hits = history_wording()
    assert not hits, "history wording (say it of the software, or leave it to git):\n" + "\n".join(hits)


def test_each_pattern_catches_its_wording(tmp_path):
    """The grep is live: one line of each kind in a scanned folder is reported with its file and line."""
    samples = {
        "stop-number": "numbers as of " + _STOP + " 19",
        "tracker-number": "the " + _ISSUE + "-7 figures",
        "session-number": _SESSION + " 4 added it",
        "current-stop": "on this " + _STOP + "'s machine",
        "rounds-of-work": "in the last work " + _ROUND,
        "building-sessions": "no GPU for the " + _SESSION + "s that built it",
        "offline-machines": "there is no " + "inter" + "net on the benchmark machines",
        "parent-commit": "the overrides at 2f55653" + "^",
    }
    assert set(samples) == set(PATTERNS)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "x.md").write_text("clean line\n" + "\n".join(samples.values()) + "\n")
    hits = history_wording(tmp_path)
    assert {h.split(":")[1] for h in hits} == {str(no) for no in range(2, len(samples) + 2)}  # not line 1
    for no, why in enumerate(samples, 2):
        assert any(h.startswith(f"docs/x.md:{no}: {why}:") for h in hits), (why, hits)


def test_software_wording_passes(tmp_path):
    """Words that merely look alike are not flagged: a stop condition, a pytest session, an issue in prose."""
    (tmp_path / "README.md").write_text(
        "a run stops before the step that would overrun it\n"
        "@pytest.fixture(scope=\"session\")\n"
        "file an issue if a step fails; stop at 3 failures\n"
        "measured on 2026-12-02 at 6a5cc1a\n")
    assert history_wording(tmp_path) == []
