"""The layer's SnapStart hook: installed only where the runtime has hooks, and after a restore
nothing of the snapshot's loop or clients is used again, and random is re-seeded."""

from __future__ import annotations

import importlib.util
import random
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from lambdaloop import clients, snapstart
from lambdaloop.clients import aclose_clients, aws_client, redis_client
from lambdaloop.runtime import get_loop
from lambdaloop.settings import reset_settings
from lambdaloop.ssrf import Policy, aclose_sessions, guarded_session
from lambdaloop_local.stack import RUNTIME_HOOKS

HOOKS_STAND_IN = RUNTIME_HOOKS / "snapshot_restore_py.py"


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    reset_settings()
    get_loop().run_until_complete(aclose_clients())
    yield
    get_loop().run_until_complete(aclose_clients())
    get_loop().run_until_complete(aclose_sessions())
    reset_settings()


@pytest.fixture
def runtime_hooks(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A fresh stand-in for Lambda's snapshot_restore_py, importable as the real one is."""
    spec = importlib.util.spec_from_file_location("snapshot_restore_py", HOOKS_STAND_IN)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", module)
    monkeypatch.setattr(snapstart, "_installed", False)
    return module


def test_nothing_is_installed_where_the_runtime_has_no_hooks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(snapstart, "_installed", False)
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", None)  # import fails

    assert snapstart.install() is False


def test_the_after_restore_hook_is_registered_once(runtime_hooks: Any) -> None:
    assert snapstart.install() is True
    assert snapstart.install() is True

    assert runtime_hooks.get_after_restore() == [(snapstart.after_restore, (), {})]
    assert runtime_hooks.get_before_snapshot() == []


def test_after_a_restore_the_loop_and_every_client_are_new() -> None:
    # Given an environment whose init built every kind of client on its loop
    old_loop = get_loop()

    async def build() -> tuple[Any, Any]:
        return redis_client(), guarded_session(Policy.for_user_urls(True))

    old_redis, old_http = old_loop.run_until_complete(build())
    old_dynamodb = aws_client("dynamodb")

    # When it is restored from a snapshot
    snapstart.after_restore()

    # Then the old loop is closed, with the clients bound to it, and none is reused
    assert old_loop.is_closed()
    assert old_http.closed
    new_loop = get_loop()
    assert new_loop is not old_loop
    new_redis, new_http = new_loop.run_until_complete(build())
    assert new_redis is not old_redis
    assert new_http is not old_http
    assert aws_client("dynamodb") is not old_dynamodb
    assert not clients._blocking_pool.cache_info().currsize  # the thread pool is new, too


def test_after_a_restore_random_draws_differ_from_the_snapshots() -> None:
    random.seed(1234)
    from_the_snapshot = [random.random() for _ in range(4)]
    random.seed(1234)  # every restored copy starts from the snapshot's state

    snapstart.after_restore()

    assert [random.random() for _ in range(4)] != from_the_snapshot


def test_a_restore_before_any_loop_still_closes_the_clients() -> None:
    from lambdaloop.runtime import discard_loop

    old_dynamodb = aws_client("dynamodb")
    old = discard_loop()  # as in a function whose init never ran the loop
    assert old is not None
    old.close()

    snapstart.after_restore()

    assert aws_client("dynamodb") is not old_dynamodb
    assert not get_loop().is_closed()
