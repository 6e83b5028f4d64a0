"""The README names the tests behind its promises: every name it gives must be a test that exists, so a
renamed or deleted test cannot leave a promise pointing at nothing."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
# `test_name`, or `test_name_…` (a long name cut short), possibly with an F prefix outside the backticks
NAMED = re.compile(r"`(test_[A-Za-z0-9_]+?)(_?…)?`")
PATHS = re.compile(r"`((?:tests|deploy|engine|adapters|consumers|producers|georep)/[A-Za-z0-9_./-]+)`")


def _test_names() -> set[str]:
    names = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_"):
                names.add(node.name)
    return names


def test_every_test_the_readme_names_exists() -> None:
    names = _test_names()
    text = README.read_text()
    missing = []
    for match in NAMED.finditer(text):
        name, cut = match.group(1), match.group(2)
        found = any(n.startswith(name) for n in names) if cut else name in names
        if not found:
            missing.append(match.group(0))
    assert NAMED.search(text), "the README names no test at all"
    assert not missing, f"the README names tests that do not exist: {missing}"


def test_every_path_the_readme_names_exists() -> None:
    missing = [p for p in PATHS.findall(README.read_text()) if not (ROOT / p.rstrip("/")).exists()]
    assert not missing, f"the README names paths that do not exist: {missing}"
