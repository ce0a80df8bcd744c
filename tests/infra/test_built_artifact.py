"""What `make build` and `make build-x86_64` produce: the x86_64 variant of the template, and
bytecode for every module the layer and the functions ship.

The artifact checks read .aws-sam/build (arm64, what deploys) and .aws-sam/build-x86_64 (for
`sam local` on x86); each is skipped, saying so, when its build is absent. `.ci/run` builds
both before `make test`.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lambdaloop_local.template import load_template

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
ARCH_VARIANT = ROOT / "infra" / "build" / "arch_variant.py"
BUILDS = {
    "arm64": (ROOT / ".aws-sam" / "build", "make build"),
    "x86_64": (ROOT / ".aws-sam" / "build-x86_64", "make build-x86_64"),
}
#: The pyc magic of CPython 3.13 (importlib.util.MAGIC_NUMBER there), whatever Python runs this.
PY313_MAGIC = (3571).to_bytes(2, "little") + b"\r\n"
#: PEP 552 flags: bit 0 = hash-based, bit 1 = check_source. Unchecked-hash is 0b01.
UNCHECKED_HASH = 0b01
_ELF_MACHINE_X86_64 = 62
_ARCHITECTURE_LINE = re.compile(
    r"^\s*(?:Architectures|CompatibleArchitectures|BuildArchitecture):\s*\S"
)

Path_ = tuple[str, ...]


# ------------------------------------------------------------------------ the x86_64 variant


def _write_variant(source: Path, destination: Path) -> subprocess.CompletedProcess[str]:
    # The script as make runs it, with this test's interpreter (3.11 or 3.13).
    command = [sys.executable, str(ARCH_VARIANT), "--architecture", "x86_64"]
    return subprocess.run(
        [*command, str(source), str(destination)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def _leaf_differences(left: Any, right: Any, path: Path_ = ()) -> Iterator[Path_]:
    """Paths of the keys whose values differ (a value that differs anywhere below counts
    once, at its key)."""
    if isinstance(left, dict) and isinstance(right, dict):
        for key in left.keys() | right.keys():
            if left.get(key, ...) != right.get(key, ...):
                yield from _leaf_differences(left.get(key), right.get(key), (*path, str(key)))
    elif left != right:
        yield path


def _architecture_keys(body: dict[str, Any]) -> set[Path_]:
    """Where a template states an architecture (what the variant may change, and must)."""
    keys: set[Path_] = set()
    for section, settings in (body.get("Globals") or {}).items():
        keys.update(("Globals", section, key) for key in ("Architectures",) if key in settings)
    for name, resource in body["Resources"].items():
        for key in ("Architectures", "CompatibleArchitectures"):
            if key in resource.get("Properties", {}):
                keys.add(("Resources", name, "Properties", key))
        if "BuildArchitecture" in resource.get("Metadata", {}):
            keys.add(("Resources", name, "Metadata", "BuildArchitecture"))
    return keys


def _value(body: dict[str, Any], path: Path_) -> Any:
    for key in path:
        body = body[key]
    return body


def test_x86_64_variant_differs_from_the_template_only_in_architectures(tmp_path: Path) -> None:
    variant_path = tmp_path / "template.yaml"
    done = _write_variant(TEMPLATE, variant_path)
    assert done.returncode == 0, done.stderr

    template, variant = load_template(TEMPLATE).body, load_template(variant_path).body
    keys = _architecture_keys(template)
    # Not vacuous: the functions (through Globals) and the layer and its build are there.
    assert {
        ("Globals", "Function", "Architectures"),
        ("Resources", "CoreLayer", "Properties", "CompatibleArchitectures"),
        ("Resources", "CoreLayer", "Metadata", "BuildArchitecture"),
    } <= keys
    assert set(_leaf_differences(template, variant)) == keys
    for path in keys:
        assert _value(template, path) in (["arm64"], "arm64"), path  # what deploys
        assert _value(variant, path) in (["x86_64"], "x86_64"), path

    # Comments and layout stay: a diff of the two files shows the architecture lines only.
    lines, variant_lines = TEMPLATE.read_text().splitlines(), variant_path.read_text().splitlines()
    assert len(lines) == len(variant_lines)
    changed = [old for old, new in zip(lines, variant_lines, strict=True) if old != new]
    assert len(changed) == len(keys)
    assert all(_ARCHITECTURE_LINE.match(line) for line in changed), changed


def test_arch_variant_refuses_an_architecture_it_cannot_rewrite(tmp_path: Path) -> None:
    # A block list is not rewritten by the text edit: the check must catch it, write nothing.
    source = tmp_path / "source.yaml"
    source.write_text(
        "Resources:\n"
        "  Fn:\n"
        "    Type: AWS::Serverless::Function\n"
        "    Properties:\n"
        "      Architectures:\n"
        "        - arm64\n"
    )
    destination = tmp_path / "out" / "template.yaml"
    done = _write_variant(source, destination)
    assert done.returncode != 0
    assert "/Resources/Fn/Properties/Architectures" in done.stderr
    assert not destination.exists()
    assert not list(destination.parent.iterdir())  # no partial file left either


def _built(architecture: str) -> Path:
    build, command = BUILDS[architecture]
    if not (build / "template.yaml").is_file():
        pytest.skip(f"no {build.relative_to(ROOT)}: run `{command}` to check the built artifact")
    return build


def test_x86_64_build_targets_x86_64() -> None:
    build = _built("x86_64")
    built = load_template(build / "template.yaml")
    functions = built.functions()
    assert functions
    assert all(function.architectures == ["x86_64"] for function in functions)
    layer = built.body["Resources"]["CoreLayer"]
    assert layer["Properties"]["CompatibleArchitectures"] == ["x86_64"]
    extensions = sorted(build.rglob("*.so"))
    assert extensions  # pydantic-core, aiohttp, ...: the wheels sam build picked
    wrong = [
        path.relative_to(build)
        for path in extensions
        if int.from_bytes(path.read_bytes()[18:20], "little") != _ELF_MACHINE_X86_64
    ]
    assert not wrong


# ------------------------------------------------------------------------ bytecode


def _artifact_folders(build: Path) -> dict[str, Path]:
    """Each function's and layer's folder in ``build``, by logical id (from the built
    template, whose CodeUri/ContentUri sam build points at them)."""
    folders = {}
    for name, resource in load_template(build / "template.yaml").body["Resources"].items():
        properties = resource.get("Properties", {})
        if resource["Type"] == "AWS::Serverless::Function":
            folders[name] = build / properties["CodeUri"]
        elif resource["Type"] == "AWS::Serverless::LayerVersion":
            folders[name] = build / properties["ContentUri"]
    return folders


def _modules(build: Path) -> dict[str, list[Path]]:
    modules = {
        name: sorted(folder.rglob("*.py")) for name, folder in _artifact_folders(build).items()
    }
    assert "CoreLayer" in modules
    assert "ApiFunction" in modules
    assert all(modules.values()), [name for name, found in modules.items() if not found]
    return modules


def _pyc(source: Path) -> Path:
    return source.parent / "__pycache__" / f"{source.stem}.cpython-313.pyc"


@pytest.mark.parametrize("architecture", sorted(BUILDS))
def test_every_built_module_ships_unchecked_hash_bytecode_for_python313(
    architecture: str,
) -> None:
    build = _built(architecture)
    missing: list[str] = []
    wrong: list[str] = []
    for sources in _modules(build).values():
        for source in sources:
            pyc = _pyc(source)
            if not pyc.is_file():
                missing.append(str(source.relative_to(build)))
                continue
            header = pyc.read_bytes()[:16]
            flags = int.from_bytes(header[4:8], "little")
            if header[:4] != PY313_MAGIC or flags != UNCHECKED_HASH:
                wrong.append(f"{pyc.relative_to(build)}: magic {header[:4]!r}, flags {flags:#b}")
    hint = f"plain `sam build` ships no bytecode: run `{BUILDS[architecture][1]}`"
    assert not missing, f"{len(missing)} modules without bytecode ({hint}): {missing[:10]}"
    assert not wrong, wrong[:10]


@pytest.mark.skipif(
    sys.version_info[:2] != (3, 13),
    reason="source hashes are keyed by the running Python's magic number: checked on 3.13",
)
@pytest.mark.parametrize("architecture", sorted(BUILDS))
def test_built_bytecode_was_compiled_from_the_shipped_source(architecture: str) -> None:
    # Python never checks an unchecked-hash pyc against its source, so a stale one would run
    # silently: each must carry the hash of the source beside it.
    build = _built(architecture)
    stale = [
        str(source.relative_to(build))
        for sources in _modules(build).values()
        for source in sources
        # A missing pyc is the test above's failure.
        if _pyc(source).is_file()
        and _pyc(source).read_bytes()[8:16] != importlib.util.source_hash(source.read_bytes())
    ]
    assert not stale, f"{len(stale)} pycs of another source: {stale[:10]}"
