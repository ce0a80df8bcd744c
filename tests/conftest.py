"""Fixtures shared by every test folder."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lambdaloop_local.stack import LocalStack, StackConfig


@pytest.fixture(scope="session")
def local_stack() -> Iterator[LocalStack]:
    """moto (server mode) + Redis (real redis-server when installed) + the template's
    resources, on free ports, for the whole session."""
    stack = LocalStack(StackConfig(aws_port=0, redis_port=0))
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
