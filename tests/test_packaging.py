"""Package metadata: PEP 639 licence fields that setuptools applies without deprecation warnings."""

from __future__ import annotations

import tomllib
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_license_is_an_spdx_expression_with_its_file() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"  # a string (SPDX), not the deprecated {text = ...} table
    files = [p for pattern in project["license-files"] for p in ROOT.glob(pattern)]
    assert files and "MIT License" in files[0].read_text()


def test_setuptools_applies_the_metadata_without_deprecation_warnings() -> None:
    pytest.importorskip("setuptools", minversion="77")  # the first release that reads PEP 639 fields
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), str(ROOT / "pyproject.toml"))
    assert [str(w.message) for w in caught if "deprecat" in str(w.message).lower()] == []
    assert dist.metadata.license_expression == "MIT" and dist.metadata.license_files == ["LICENSE"]
