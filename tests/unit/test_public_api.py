"""Every public module of the layer declares its public face, and it is complete."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
from types import ModuleType

import pytest

import lambdaloop

# Every public module and subpackage (lambdaloop.compute.kinds, ...), private ones aside.
MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(lambdaloop.__path__, "lambdaloop.")
    if not any(part.startswith("_") for part in m.name.split("."))
)


def _is_submodule(package: str, name: str) -> bool:
    return importlib.util.find_spec(f"{package}.{name}") is not None


def _public_definitions(module: ModuleType) -> set[str]:
    """Public classes and functions defined in the module itself."""
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and getattr(value, "__module__", None) == module.__name__
    }


def test_the_layer_has_the_modules_the_design_names() -> None:
    expected = {
        "runtime",
        "settings",
        "clients",
        "observability",
        "errors",
        "health",
        "asgi",
        "store",
        "cache",
        "breaker",
    }
    assert expected <= {name.rsplit(".", 1)[1] for name in MODULES}


@pytest.mark.parametrize("name", MODULES)
def test_all_is_declared_and_complete(name: str) -> None:
    module = importlib.import_module(name)

    exported = set(getattr(module, "__all__", ()))

    assert exported, f"{name} has no __all__"
    missing = [n for n in exported if not hasattr(module, n) and not _is_submodule(name, n)]
    assert sorted(missing) == []
    assert sorted(_public_definitions(module) - exported) == []


def test_importing_the_layer_imports_no_sdk() -> None:
    import subprocess
    import sys

    code = (
        f"import sys, {', '.join(MODULES)};"
        "heavy = [m for m in ('boto3', 'botocore', 'redis', 'aiohttp', 'aws_xray_sdk', 'mangum')"
        " if m in sys.modules]; print(','.join(heavy))"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()

    assert found == ""
