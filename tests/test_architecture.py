"""Dependencies point inward: core imports no front end; front ends do not import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FRONT_ENDS = ("intake", "bot", "notifications")


def imported_packages(package: str) -> set[tuple[str, str]]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found.update((str(path.relative_to(ROOT)), name.split(".")[0]) for name in names)
    return found


def test_core_imports_no_front_end_and_not_the_cli() -> None:
    offending = {(f, m) for f, m in imported_packages("core") if m in FRONT_ENDS + ("cli",)}
    assert offending == set()


@pytest.mark.parametrize("package", [p for p in FRONT_ENDS if (ROOT / p).is_dir()])
def test_front_ends_do_not_import_each_other(package: str) -> None:
    others = set(FRONT_ENDS) - {package} | {"cli"}
    offending = {(f, m) for f, m in imported_packages(package) if m in others}
    assert offending == set()


def test_the_check_sees_imports() -> None:
    # Guard against a check that passes because it reads nothing.
    assert ("core/store.py", "sqlalchemy") in imported_packages("core")
