"""The core layer installs what the lock resolved, minus what the Lambda runtime provides."""

from __future__ import annotations

import re
import tomllib
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "shared" / "requirements.txt"
LOCK = ROOT / "uv.lock"
PYPROJECT = ROOT / "pyproject.toml"
BUILD = ROOT / ".aws-sam" / "build"
# The Lambda Python runtime ships these; a second copy in the layer only adds cold start.
RUNTIME_PROVIDED = frozenset({"boto3", "botocore", "s3transfer"})
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==(?P<version>[^\s;]+)$")
_ELF_MACHINE_AARCH64 = 183


def _normalise(name: str) -> str:
    """PEP 503: case-insensitive, runs of -, _ and . are one -."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_lines() -> list[str]:
    lines = REQUIREMENTS.read_text(encoding="utf-8").splitlines()
    return [
        line.split(";", 1)[0].strip()  # environment markers do not change the pin
        for line in lines
        if line.strip() and not line.lstrip().startswith(("#", "-"))
    ]


def _pins() -> dict[str, str]:
    pins = {}
    for line in _requirement_lines():
        match = _PIN.match(line)
        assert match, f"not pinned with ==: {line!r}"
        pins[_normalise(match["name"])] = match["version"]
    return pins


def _locked_versions() -> dict[str, set[str]]:
    lock = tomllib.loads(LOCK.read_text(encoding="utf-8"))
    versions: defaultdict[str, set[str]] = defaultdict(set)
    for package in lock["package"]:
        if "version" in package:
            versions[_normalise(package["name"])].add(package["version"])
    return versions


def test_every_requirement_is_pinned_to_the_locked_version() -> None:
    pins, locked = _pins(), _locked_versions()
    assert pins
    for name, version in pins.items():
        assert name in locked, f"{name} is not in uv.lock"
        assert version in locked[name], f"{name}=={version}, uv.lock has {sorted(locked[name])}"


def test_runtime_provided_packages_stay_out_of_the_layer() -> None:
    assert not RUNTIME_PROVIDED & set(_pins())


def test_every_runtime_dependency_is_in_the_layer() -> None:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    dependencies = {
        _normalise(re.split(r"[\s<>=!~;\[]", dependency, maxsplit=1)[0])
        for dependency in project["dependencies"]
    }
    assert dependencies <= set(_pins())


def test_built_extensions_are_aarch64() -> None:
    # sam build without BuildArchitecture: arm64 ships x86_64 wheels; catch it after `make build`.
    if not BUILD.is_dir():
        pytest.skip("no .aws-sam/build: run `make build` to check the built layer")
    extensions = sorted(BUILD.rglob("*.so"))
    wrong = [
        path.relative_to(BUILD)
        for path in extensions
        if int.from_bytes(path.read_bytes()[18:20], "little") != _ELF_MACHINE_AARCH64
    ]
    assert not wrong
