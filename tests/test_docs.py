"""Every document the code and the docs cite is in the repository, with the section cited.

A citation is a path or file name ending in ``.md`` (``docs/networks.md``, ``[recipes.md](recipes.md)``,
``networks.md §7``), resolved against the citing file's folder, the repository root and ``docs/``; a
``§N`` after it must be a numbered heading of that document, and ``design.md, decision N`` one of its
numbered decisions. Documents outside the repository cannot be cited: no path under ``shared/``, no
"reference doc", no ``DESIGN`` notes.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("medmamba", "kernels", "plans", "docs", "scripts", "tests", "notebooks", "docker", "README.md")
SUFFIXES = {".py", ".md", ".toml", ".ipynb", ".sh", ".txt", ".cfg", ""}
#: File names ending in .md that name an output, not a document (the comparison report's table).
OUTPUT_NAMES = {"table.md"}

CITATION = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w.-]+\.md)\b(?:\)|`|\])*"
                      r"(?P<sections>(?:,?\s*§\s*[\d.]+(?:\s*-\s*\d+)?)*)")
SECTION = re.compile(r"§\s*([\d.]*\d)(?:\s*-\s*(\d+))?")
DECISION = re.compile(r"design\.md\)?,\s*decision\s+(\d+)")
FORBIDDEN = [(re.compile(r"(?<![\w-])shared/[\w./-]+"), "a path under shared/, outside the repository"),
             (re.compile(r"reference doc", re.I), "'the reference doc', which is not in the repository"),
             (re.compile(r"\bDESIGN\b"), "DESIGN notes, which are not in the repository (cite docs/design.md)")]


def _files() -> list[Path]:
    files = []
    for name in SCANNED:
        path = ROOT / name
        candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        files += [p for p in candidates if p.suffix in SUFFIXES and "__pycache__" not in p.parts
                  and p.name != Path(__file__).name]
    return files


def _resolve(citing: Path, cited: str) -> Path | None:
    for base in (citing.parent, ROOT, ROOT / "docs"):
        target = (base / cited).resolve()
        if target.is_file():
            return target
    return None


def _numbered_headings(document: Path) -> set[str]:
    return set(re.findall(r"^#+\s+(\d+(?:\.\d+)*)[.\s]", document.read_text(), flags=re.M))


def _decisions(document: Path) -> set[str]:
    return set(re.findall(r"^(\d+)\.\s+\*\*", document.read_text(), flags=re.M))


def _problems(path: Path, text: str) -> list[str]:
    """What is wrong with the citations in ``text``, the contents of ``path``."""
    where = path.relative_to(ROOT)
    problems = []
    for pattern, why in FORBIDDEN:
        for match in pattern.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            problems.append(f"{where}:{line}: cites {why}: {match.group(0)!r}")
    for match in CITATION.finditer(text):
        cited, line = match.group(1), text.count("\n", 0, match.start()) + 1
        word_start = max(text.rfind(c, 0, match.start()) for c in " \n\t(<\"'[")
        if "://" in text[word_start:match.end()] or Path(cited).name in OUTPUT_NAMES:
            continue
        target = _resolve(path, cited)
        if target is None:
            problems.append(f"{where}:{line}: cites {cited}, which is not in the repository")
            continue
        headings = _numbered_headings(target)
        for first, last in SECTION.findall(match.group("sections")):
            wanted = [first] if not last else [str(n) for n in range(int(first), int(last) + 1)]
            missing = [w for w in wanted if w not in headings]
            if missing:
                problems.append(f"{where}:{line}: cites {cited} §{', §'.join(missing)}, which it does not have")
    for match in DECISION.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        if match.group(1) not in _decisions(ROOT / "docs" / "design.md"):
            problems.append(f"{where}:{line}: cites design.md decision {match.group(1)}, which it does not have")
    return problems


def test_every_cited_document_and_section_is_in_the_repository():
    problems = [p for path in _files() for p in _problems(path, path.read_text(errors="replace"))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("text, says", [
    ("see networks.md §7", None), ("see docs/networks.md §99", "does not have"),
    ("(docs/selective_scan.md §2-4)", None), ("docs/selective_scan.md §8-12", "§10, §11, §12"),
    ("[recipes.md](recipes.md)", None), ("docs/nowhere.md", "not in the repository"),
    ("Reference: `shared/reference/networks.md`", "shared/"), ("(reference doc §12)", "reference doc"),
    ("(DESIGN decision 5)", "DESIGN"), ("(docs/design.md, decision 5)", None),
    ("(docs/design.md, decision 42)", "decision 42"), ("https://github.com/a/b/blob/main/NOTES.md", None),
    ("writes table.md and table.csv", None),
])
def test_the_check_finds_what_it_should(text, says):
    """The checker itself: a citation that resolves passes, every kind of bad one is named."""
    problems = _problems(ROOT / "docs" / "probe.md", text)
    if says is None:
        assert problems == []
    else:
        assert len(problems) >= 1 and all(says in p for p in problems), problems
