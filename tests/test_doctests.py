"""Every docstring example of the installed `codi2_agent` package runs and prints what it shows.

The modules are found the way Python finds them once the package is installed: the packages the
distribution declares (``[tool.setuptools] packages`` in pyproject.toml, which maps the top-level
``graphs/``, ``memory/`` and ``tools/`` folders to ``codi2_agent.graphs`` / ``.memory`` / ``.tools``)
are located with `importlib.util.find_spec`, and each one's modules are listed from there. Nothing is
imported by its folder name: a top-level ``tools`` or ``memory`` module must never exist.

Every module must import with the test command's dependencies; an import error fails its test.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import io
import pkgutil
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "codi2_agent"
OPTIONFLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _declared_packages() -> list[str]:
    packages = _pyproject()["tool"]["setuptools"]["packages"]
    assert PACKAGE in packages
    return sorted(packages)


def _walk() -> tuple[list[str], list[str]]:
    """(every module, every package) under the declared packages, found through the import system
    (not the folders), without importing them."""
    modules: set[str] = set()
    packages: list[str] = []
    queue = _declared_packages()
    while queue:
        package = queue.pop(0)
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.submodule_search_locations, f"{package} is not installed"
        modules.add(package)
        packages.append(package)
        for info in pkgutil.iter_modules(spec.submodule_search_locations, prefix=package + "."):
            modules.add(info.name)
            if info.ispkg and info.name not in packages and info.name not in queue:
                queue.append(info.name)
    return sorted(modules), sorted(packages)


MODULES, PACKAGES = _walk()


def _import(name: str) -> ModuleType:
    """Import `name`: every module must import with the test command's dependencies (the dev extra)."""
    return importlib.import_module(name)


def _examples(module: ModuleType) -> list[doctest.DocTest]:
    # The finder skips objects imported from other modules: each docstring is tested where it lives.
    return [t for t in doctest.DocTestFinder(exclude_empty=True).find(module) if t.examples]


def test_the_mapped_packages_are_walked() -> None:
    for package in ("codi2_agent.graphs", "codi2_agent.memory", "codi2_agent.tools"):
        assert package in MODULES
        assert any(m.startswith(package + "._") for m in MODULES), f"no modules found under {package}"
    assert not {"graphs", "memory", "tools"} & {m.split(".")[0] for m in MODULES}


def test_every_subpackage_is_declared() -> None:
    """A package missing from ``[tool.setuptools] packages`` works in a checkout but not in a wheel."""
    assert sorted(set(PACKAGES) - set(_declared_packages())) == []


@pytest.mark.parametrize("name", MODULES)
def test_module_doctests(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _import(name)
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    runner = doctest.DocTestRunner(optionflags=OPTIONFLAGS)
    report = io.StringIO()
    for test in _examples(module):
        runner.run(test, out=report.write)
    failures = report.getvalue()
    assert runner.failures == 0, f"{runner.failures} failing doctest example(s) in {name}:\n{failures}"


def test_the_package_has_doctests() -> None:
    found = {name: sum(len(t.examples) for t in _examples(_import(name))) for name in MODULES}
    assert sum(found.values()) > 0
    # The modules whose docstrings teach by example keep doing so.
    for name in ("codi2_agent.media", "codi2_agent.artifacts", "codi2_agent.graphs._references"):
        assert found[name] > 0, f"{name} lost its doctest examples"
