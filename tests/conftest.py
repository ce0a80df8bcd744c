"""Fixtures shared by every test folder."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from lambdaloop_local.stack import LocalStack, StackConfig


@pytest.fixture(scope="session")
def session_stack() -> Iterator[LocalStack]:
    stack = LocalStack(StackConfig(aws_port=0, redis_port=0))
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def local_stack(session_stack: LocalStack) -> LocalStack:
    """moto (server mode) + Redis (real redis-server when installed) + the template's
    resources, on free ports, shared by the session.

    moto keeps its state per process, so a test that resets moto empties it for everyone:
    the resources are made sure of (idempotently) before each test.
    """
    session_stack.create_resources()
    return session_stack


@pytest.fixture
def layer_caplog(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """``caplog`` that hears the layer's loggers even once the function's logger is set up
    (any test that ran a request did that): it stops them propagating to the root logger."""
    layer = logging.getLogger("lambdaloop")
    layer.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        layer.removeHandler(caplog.handler)


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    """An empty folder where a test's function writes what it saw (its ``LOG_DIR``)."""
    folder = tmp_path / "log"
    folder.mkdir()
    return folder
