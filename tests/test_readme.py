"""Executes every ```python block of README.md, so the documented examples keep working."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples():
    assert BLOCKS, "README.md has no ```python blocks"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, capsys):
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out
    if "ln(11)" in BLOCKS[index]:
        assert "2.3978" in out
    if "research.sampling import generate" in BLOCKS[index]:  # the decoding section
        assert "(2, 8) (2, 8) (2, 4, 8) (2, 4)" in out


def test_readme_decoding_section_is_run():
    """The decoding section's example is a ```python block, so test_readme_block_runs runs it."""
    assert any("generate(model, prompt" in b and 'method="beam"' in b for b in BLOCKS)
