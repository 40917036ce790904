"""The README's layout is the newcomer's map: every module of the package is on it, and nothing
on it is gone, so it cannot go stale silently."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "functions/batchpredict/"
BENCHMARKS = "benchmarks/"
INDENT = 2  # spaces a folder level


def layout_paths(readme: str) -> list[str]:
    """The paths the ``## Layout`` tree names, rebuilt from its indentation (a name ending in
    ``/`` is a folder; the words after a name describe it)."""
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    tree = re.search(r"\n```\n(.*?)\n```", section, re.S)
    assert tree is not None, "README ## Layout has no ``` tree"
    folders: list[str] = []
    paths = []
    for line in tree.group(1).splitlines():
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip(" "))) // INDENT
        name = line.split()[0]
        folders = folders[:depth]
        paths.append("".join(folders) + name)
        if name.endswith("/"):
            folders.append(name)
    return paths


def test_layout_lists_every_module_of_the_package_and_every_benchmark() -> None:
    listed = set(layout_paths((ROOT / "README.md").read_text()))
    files = [*(ROOT / PACKAGE).rglob("*.py"), *(ROOT / BENCHMARKS).glob("*.py")]
    modules = {path.relative_to(ROOT).as_posix() for path in files if path.name != "__init__.py"}
    missing = sorted(modules - listed)
    assert not missing, f"README ## Layout lacks {missing}: add one line for each"


def test_everything_the_layout_lists_exists() -> None:
    gone = [path for path in layout_paths((ROOT / "README.md").read_text()) if not (ROOT / path).exists()]
    assert not gone, f"README ## Layout lists {gone}, which are not in the repository"


def test_layout_paths_follow_the_indentation() -> None:
    tree = "a/        x\n  b/      y\n    c.py  z\n  d.py    w\ne.py      v"
    readme = f"\n## Layout\n\n```\n{tree}\n```\n\n## Next\n"
    assert layout_paths(readme) == ["a/", "a/b/", "a/b/c.py", "a/d.py", "e.py"]
