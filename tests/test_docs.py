"""Documentation cross-references: no file cites RESEARCH.md (the notes are
docs/research_notes.md), and every docs/NAME.md a docstring or comment in research/ or configs/
names exists."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC_PATH = re.compile(r"docs/[\w./-]+?\.md\b")


def _files(*tops: str, suffixes=(".py", ".md")) -> list[pathlib.Path]:
    out = []
    for top in tops:
        p = ROOT / top
        out += [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.suffix in suffixes)
    return out


def test_nothing_cites_research_md():
    files = _files("research", "configs", "docs", "README.md")
    assert len(files) > 50
    cites = [
        f"{f.relative_to(ROOT)}:{i}"
        for f in files
        for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1)
        if "RESEARCH.md" in line
    ]
    assert not cites, f"cite docs/research_notes.md instead of RESEARCH.md: {cites}"


def test_every_docs_path_named_in_code_exists():
    named = {}
    for f in _files("research", "configs", suffixes=(".py",)):
        for m in DOC_PATH.finditer(f.read_text(encoding="utf-8")):
            named.setdefault(m.group(), f.relative_to(ROOT))
    assert "docs/research_notes.md" in named  # the pattern does find them
    missing = {doc: str(where) for doc, where in named.items() if not (ROOT / doc).is_file()}
    assert not missing, f"docs named but not in the repository: {missing}"
