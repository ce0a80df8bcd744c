"""What the local stack gives ``sam local``: the --env-vars of ``lambdaloop env-vars``, and the
template's SQS events in provisioned mode (which the emulator accepts and ignores)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from lambdaloop_local.cli import sam_env_vars
from lambdaloop_local.stack import LocalStack, StackConfig
from lambdaloop_local.template import TemplateError
from support import run

#: The name a container reaches the host by (Docker Desktop's, or --add-host on Linux).
CONTAINER_HOST = "host.docker.internal"


@pytest.fixture
def attached(session_stack: LocalStack) -> Iterator[LocalStack]:
    """A stack on the session's moto and Redis, as `lambdaloop env-vars` makes one: attached
    to a running dev's services, looking its resources up."""
    stack = LocalStack(
        StackConfig(aws_endpoint=session_stack.aws_endpoint, redis_url=session_stack.redis_url)
    )
    with stack:
        yield stack


def test_env_vars_cover_every_variable_each_function_declares(attached: LocalStack) -> None:
    # When writing sam local's --env-vars for a container
    variables = sam_env_vars(attached, CONTAINER_HOST)
    # Then every function gets every variable the template declares for it, and no other
    # (SAM passes no other: an extra one would only mislead)
    functions = {spec.logical_id: spec for spec in attached.template.functions()}
    assert set(variables) == set(functions)
    for logical_id, spec in functions.items():
        assert set(variables[logical_id]) == set(spec.environment), logical_id
        assert all(isinstance(value, str) for value in variables[logical_id].values())


def test_env_vars_point_at_the_stack_as_a_container_reaches_it(attached: LocalStack) -> None:
    listening = urlsplit(attached.aws_endpoint)
    endpoint = f"http://{CONTAINER_HOST}:{listening.port}"

    variables = sam_env_vars(attached, CONTAINER_HOST)

    for logical_id, values in variables.items():
        environment = attached.function_environment(logical_id)
        assert values["AWS_ENDPOINT_URL"] == endpoint, logical_id
        for name, value in values.items():
            # Nothing names the address the stack listens on: a container cannot reach it
            assert listening.netloc not in value, (logical_id, name)
            # And the rest is what the emulator gives the function
            assert value == environment[name].replace(listening.hostname or "", CONTAINER_HOST)
    api = variables["ApiFunction"]
    assert api["REDIS_URL"] == f"redis://{CONTAINER_HOST}:{urlsplit(attached.redis_url).port}/0"
    assert api["USERS_TABLE"] == attached.resources.refs["UsersTable"]
    assert api["NOTIFY_QUEUE_URL"] == attached.resources.refs["NotifyQueue"].replace(
        listening.netloc, f"{CONTAINER_HOST}:{listening.port}"
    )


def test_env_vars_refuse_a_template_that_would_not_pass_the_endpoint(
    session_stack: LocalStack, tmp_path: Path
) -> None:
    # Given a template whose function does not declare AWS_ENDPOINT_URL
    (tmp_path / "code").mkdir()
    template = tmp_path / "template.yaml"
    template.write_text(
        "Transform: AWS::Serverless-2016-10-31\n"
        "Resources:\n"
        "  Worker:\n"
        "    Type: AWS::Serverless::Function\n"
        "    Properties: {CodeUri: code/, Handler: w.handler, Runtime: python3.13,\n"
        "                 Environment: {Variables: {NAME: x}}}\n"
    )
    config = StackConfig(
        template_path=template,
        aws_endpoint=session_stack.aws_endpoint,
        redis_url=session_stack.redis_url,
    )
    # Then no --env-vars are written: sam local would let the function call real AWS
    with LocalStack(config) as stack, pytest.raises(TemplateError, match="AWS_ENDPOINT_URL"):
        sam_env_vars(stack, CONTAINER_HOST)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://127.0.0.1:5000", "http://box:5000"),
        ("http://127.0.0.1:5000/123456789012/queue", "http://box:5000/123456789012/queue"),
        ("redis://user:secret@127.0.0.1:6379/0", "redis://user:secret@box:6379/0"),
        ("http://127.0.0.1/path", "http://box/path"),
        ("https://hooks.example.com/a", "https://hooks.example.com/a"),
        ("127.0.0.1", "127.0.0.1"),
        ("lambdaloop-local-UsersTable", "lambdaloop-local-UsersTable"),
        ("", ""),
    ],
)
def test_only_urls_on_the_stacks_address_are_rehosted(value: str, expected: str) -> None:
    from lambdaloop_local.cli import _rehost

    assert _rehost(value, "127.0.0.1", "box") == expected


def test_sqs_events_in_provisioned_mode_poll_as_in_standard_mode(
    session_stack: LocalStack, caplog: pytest.LogCaptureFixture
) -> None:
    # Given the template deployed in provisioned mode (no ScalingConfig then)
    caplog.set_level(logging.INFO, logger="lambdaloop_local.sqs")
    config = StackConfig(
        aws_endpoint=session_stack.aws_endpoint,
        redis_url=session_stack.redis_url,
        parameters={"ProvisionedPollersMinimum": "3", "ProvisionedPollersMaximum": "8"},
    )
    with LocalStack(config) as stack:
        try:
            # When the emulator makes its event sources
            sources = stack.sqs_event_sources()
        finally:
            run(stack.aclose_functions())
    # Then each consumer still gets one, with Lambda's default MaximumConcurrency, and the
    # emulator says it ignored the pollers
    assert len(sources) == 3
    assert {source.config.max_concurrency for source in sources} == {2}
    ignored = [
        r.getMessage() for r in caplog.records if "ProvisionedPollerConfig" in r.getMessage()
    ]
    for source in sources:
        assert len([m for m in ignored if source.config.queue_arn in m]) == 1, ignored


def test_sqs_events_in_standard_mode_say_nothing_of_pollers(
    local_stack: LocalStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lambdaloop_local.sqs")
    try:
        sources = local_stack.sqs_event_sources()
    finally:
        run(local_stack.aclose_functions())
    concurrency = {
        source.config.queue_arn.rsplit("-", 1)[-1]: source.config.max_concurrency
        for source in sources
    }
    assert concurrency == {"NotifyQueue": 5, "JobsQueue": 5, "ComputeQueue": 10}
    assert not [r for r in caplog.records if "ProvisionedPollerConfig" in r.getMessage()]
