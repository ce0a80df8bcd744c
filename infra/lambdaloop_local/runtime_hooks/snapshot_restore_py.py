"""A stand-in for Lambda's ``snapshot_restore_py`` (the SnapStart runtime hooks of its
Python runtimes), with the real module's interface: hooks register with
``register_before_snapshot``/``register_after_restore`` (as calls, with arguments, or as
decorators), and the runtime reads them with ``get_before_snapshot``/``get_after_restore``
as lists of ``(func, args, kwargs)``.

The emulator puts this folder on the path of a function with SnapStart (as Lambda's runtime
has the module on its own), so the layer installs its hooks and the restored environments run
them. It is not a package of the emulator: only a function's worker imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = [
    "get_after_restore",
    "get_before_snapshot",
    "register_after_restore",
    "register_before_snapshot",
]

Hook = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]

_before_snapshot_registry: list[Hook] = []
_after_restore_registry: list[Hook] = []


def register_before_snapshot(
    func: Callable[..., Any], *args: Any, **kwargs: Any
) -> Callable[..., Any]:
    _before_snapshot_registry.append((func, args, kwargs))
    return func


def register_after_restore(
    func: Callable[..., Any], *args: Any, **kwargs: Any
) -> Callable[..., Any]:
    _after_restore_registry.append((func, args, kwargs))
    return func


def get_before_snapshot() -> list[Hook]:
    return _before_snapshot_registry


def get_after_restore() -> list[Hook]:
    return _after_restore_registry
