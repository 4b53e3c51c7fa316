"""The README's python snippets run as written (each in a fresh namespace).

The README is the user's guide; a snippet that no longer runs is a broken promise, so every
```python block is executed here. A block whose first line is ``# no-test`` is skipped.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(text: str) -> list[str]:
    """The bodies of the ```python fenced blocks of a markdown text, in order."""
    return [b for b in _BLOCK.findall(text) if not b.startswith("# no-test")]


def test_python_blocks_finds_fenced_python_only():
    text = "x\n```python\na = 1\n```\n```bash\nls\n```\n```python\n# no-test\nb\n```\n"
    assert python_blocks(text) == ["a = 1\n"]


SNIPPETS = python_blocks(README.read_text())


def test_readme_has_the_library_snippets():
    # physics, metrics, invertible blocks, training, data I/O
    assert len(SNIPPETS) >= 5


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_readme_snippet_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"readme_snippet_{index}"}
    exec(compile(SNIPPETS[index], f"README.md snippet {index}", "exec"), namespace)
