"""Checks on template.yaml (what gets deployed) and on the reader the emulator builds from it."""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lambdaloop_local.template import (
    TEMPLATE_PATH,
    FunctionSpec,
    Resolver,
    Template,
    TemplateError,
    load_template,
)

PSEUDO_PARAMETERS = frozenset(
    {
        "AWS::AccountId",
        "AWS::NotificationARNs",
        "AWS::NoValue",
        "AWS::Partition",
        "AWS::Region",
        "AWS::StackId",
        "AWS::StackName",
        "AWS::URLSuffix",
    }
)
# The environment each function's code reads (its settings fail fast without them).
EXPECTED_ENVIRONMENT = {
    "ApiFunction": {
        "USERS_TABLE",
        "NOTIFICATIONS_TABLE",
        "REDIS_URL",
        "NOTIFY_QUEUE_URL",
        "JOBS_TABLE",
        "JOBS_RESULTS_BUCKET",
    },
    "NotifyFunction": {
        "NOTIFICATIONS_TABLE",
        "IDEMPOTENCY_TABLE",
        "NOTIFY_QUEUE_URL",
        "WEBHOOK_SECRET_ID",
        "NOTIFY_MAX_ATTEMPTS",
    },
    "JobsFunction": {
        "JOBS_TABLE",
        "JOBS_QUEUE_URL",
        "JOBS_RESULTS_BUCKET",
        "IDEMPOTENCY_TABLE",
        "JOBS_MAX_ATTEMPTS",
    },
    "ComputeFunction": {"JOBS_TABLE", "COMPUTE_QUEUE_URL", "COMPUTE_MAX_ATTEMPTS"},
    "RelayFunction": {"NOTIFY_QUEUE_URL", "JOBS_QUEUE_URL", "COMPUTE_QUEUE_URL"},
}
#: The queues work goes to, and the environment variable that names each.
WORK_QUEUES = {
    "NotifyQueue": "NOTIFY_QUEUE_URL",
    "JobsQueue": "JOBS_QUEUE_URL",
    "ComputeQueue": "COMPUTE_QUEUE_URL",
}
#: The outbox tables and the only records of each that ask for messages (the relay's filter):
#: a new notification (its status updates are MODIFYs); a new job's META item (its results
#: are INSERTs of R#<index>, its progress MODIFYs).
OUTBOX_FILTERS: dict[str, dict[str, Any]] = {
    "NotificationsTable": {"eventName": ["INSERT"]},
    "JobsTable": {"eventName": ["INSERT"], "dynamodb": {"Keys": {"sk": {"S": ["META"]}}}},
}
#: How long DynamoDB Streams keeps a record.
STREAM_RETENTION_S = 86_400
POWERTOOLS_ENVIRONMENT = {
    "POWERTOOLS_SERVICE_NAME",
    "POWERTOOLS_METRICS_NAMESPACE",
    "POWERTOOLS_LOG_LEVEL",
    "LAMBDALOOP_STAGE",
}
#: Lambda's bounds on an SQS event source's provisioned pollers: at least 2, and a minimum of at
#: most 200.
SQS_MINIMUM_POLLERS = 2
SQS_MAXIMUM_MINIMUM_POLLERS = 200
# The notify consumer (functions/notify) runs with a 30 s timeout.
NOTIFY_CONSUMER_TIMEOUT = 30
# AWS: a queue feeding Lambda needs a visibility timeout of at least 6x the function's timeout.
VISIBILITY_TIMEOUT_FACTOR = 6
BROAD_MANAGED_POLICY = re.compile(r"FullAccess|AdministratorAccess|PowerUserAccess")
_SUB_VARIABLE = re.compile(r"\$\{([^}]*)\}")


@pytest.fixture(scope="module")
def template() -> Template:
    return load_template()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "template.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------- helpers


def _referenced_names(value: Any) -> Iterator[str]:
    """Every name a Ref, Fn::GetAtt or Fn::Sub inside ``value`` points at."""
    if isinstance(value, list):
        for item in value:
            yield from _referenced_names(item)
        return
    if not isinstance(value, dict):
        return
    if set(value) == {"Ref"} and isinstance(value["Ref"], str):
        yield value["Ref"]
    elif set(value) == {"Fn::GetAtt"}:
        target = value["Fn::GetAtt"]
        yield target.split(".", 1)[0] if isinstance(target, str) else target[0]
    elif set(value) == {"Fn::Sub"}:
        argument = value["Fn::Sub"]
        text, variables = (argument, {}) if isinstance(argument, str) else argument
        for name in _SUB_VARIABLE.findall(text):
            if name.startswith("!") or name in variables:
                continue
            yield name if name.startswith("AWS::") else name.split(".", 1)[0]
        yield from _referenced_names(list(variables.values()))
    else:
        yield from _referenced_names(list(value.values()))


def _ref_target(value: Any) -> str | None:
    """The logical id behind ``!Ref X`` or ``!GetAtt X.Attr``, else None."""
    if isinstance(value, dict) and set(value) == {"Ref"}:
        return str(value["Ref"])
    if isinstance(value, dict) and set(value) == {"Fn::GetAtt"}:
        return str(value["Fn::GetAtt"][0])
    return None


def _ref_targets(values: Any) -> set[str]:
    return {target for value in values or [] if (target := _ref_target(value)) is not None}


def _placeholder_resolver(template: Template) -> Resolver:
    """Every resource resolves to ``<LogicalId>``, parameters to their defaults."""
    return Resolver(
        refs={logical_id: f"<{logical_id}>" for logical_id in template.resources},
        attributes={},
        parameters=template.parameter_defaults(),
        pseudo={name: f"<{name}>" for name in PSEUDO_PARAMETERS},
    )


def _dead_letter_queues(template: Template) -> set[str]:
    """Queues that take failures: redrive targets of other queues, and the OnFailure
    destinations of event sources."""
    redrive_targets = {
        target
        for queue in template.of_type("AWS::SQS::Queue").values()
        if (redrive := queue.get("Properties", {}).get("RedrivePolicy"))
        and (target := _ref_target(redrive.get("deadLetterTargetArn"))) is not None
    }
    return redrive_targets | {queue for _, _, queue in _on_failure_destinations(template)}


def _on_failure_destinations(template: Template) -> Iterator[tuple[str, str, str]]:
    """(function, event, queue logical id) for every event source's OnFailure queue."""
    for function in template.functions():
        for name, event in function.events.items():
            on_failure = event.get("Properties", {}).get("DestinationConfig", {}).get("OnFailure")
            if on_failure and (queue := _ref_target(on_failure.get("Destination"))) is not None:
                yield function.logical_id, name, queue


def _stream_sources(template: Template) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """Table logical id -> (function, event name, event properties) for every DynamoDB event."""
    sources: dict[str, tuple[str, str, dict[str, Any]]] = {}
    for function in template.functions():
        for name, event in function.events.items():
            if event.get("Type") != "DynamoDB":
                continue
            properties = event["Properties"]
            stream = properties["Stream"]
            assert stream == {"Fn::GetAtt": [_ref_target(stream), "StreamArn"]}, name
            table = str(_ref_target(stream))
            assert table not in sources, f"{table} has two stream consumers"
            sources[table] = (function.logical_id, name, properties)
    return sources


def _sqs_send_targets(template: Template, function: str) -> set[str]:
    """Queues (logical ids) a function's policies let it send to: SAM's
    SQSSendMessagePolicy templates and statements allowing sqs:SendMessage*."""
    targets: set[str] = set()
    for policy in template.resources[function]["Properties"].get("Policies", []):
        if isinstance(policy, dict) and "SQSSendMessagePolicy" in policy:
            targets.add(str(_ref_target(policy["SQSSendMessagePolicy"]["QueueName"])))
            continue
        for statement in _policy_statements(policy):
            if statement["Effect"] == "Allow" and any(
                a.lower().startswith("sqs:sendmessage") or a.lower() == "sqs:*"
                for a in _actions(statement)
            ):
                resources = statement["Resource"]
                for resource in resources if isinstance(resources, list) else [resources]:
                    targets.add(_ref_target(resource) or str(resource))
    return targets


def _sqs_consumers(template: Template) -> Iterator[tuple[FunctionSpec, str]]:
    """(function, queue logical id) for every SQS event source in the template."""
    for function in template.functions():
        for name, event in function.events.items():
            if event.get("Type") != "SQS":
                continue
            queue = _ref_target(event.get("Properties", {}).get("Queue"))
            if queue is None:
                raise AssertionError(f"{function.logical_id}.{name}: Queue is not a template queue")
            yield function, queue


def _visibility_problems(template: Template) -> list[str]:
    queues = template.of_type("AWS::SQS::Queue")
    problems = []
    for function, queue_id in _sqs_consumers(template):
        if queue_id not in queues:
            problems.append(f"{function.logical_id} consumes {queue_id}, not a queue here")
            continue
        visibility = int(queues[queue_id].get("Properties", {}).get("VisibilityTimeout", 30))
        if visibility < VISIBILITY_TIMEOUT_FACTOR * function.timeout:
            problems.append(
                f"{queue_id} VisibilityTimeout {visibility} < "
                f"{VISIBILITY_TIMEOUT_FACTOR} x {function.logical_id} Timeout {function.timeout}"
            )
    return problems


def _private_subnets(template: Template) -> set[str]:
    """Subnets without a public IP on launch and with no route to an internet or NAT gateway."""
    public_tables = {
        _ref_target(route["Properties"].get("RouteTableId"))
        for route in template.of_type("AWS::EC2::Route").values()
        if {"GatewayId", "NatGatewayId", "EgressOnlyInternetGatewayId"} & set(route["Properties"])
    }
    public_subnets = {
        _ref_target(association["Properties"].get("SubnetId"))
        for association in template.of_type("AWS::EC2::SubnetRouteTableAssociation").values()
        if _ref_target(association["Properties"].get("RouteTableId")) in public_tables
    }
    return {
        logical_id
        for logical_id, subnet in template.of_type("AWS::EC2::Subnet").items()
        if subnet["Properties"].get("MapPublicIpOnLaunch") is not True
        and logical_id not in public_subnets
    }


def _actions(statement: dict[str, Any]) -> list[str]:
    listed = statement.get("Action", [])
    return [listed] if isinstance(listed, str) else list(listed)


def _policy_statements(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        if "Effect" in value and ("Action" in value or "NotAction" in value):
            yield value
        for item in value.values():
            yield from _policy_statements(item)
    elif isinstance(value, list):
        for item in value:
            yield from _policy_statements(item)


# ------------------------------------------------------------------------------- functions


def test_template_path_is_the_repository_template() -> None:
    assert TEMPLATE_PATH.name == "template.yaml"
    assert (TEMPLATE_PATH.parent / "pyproject.toml").is_file()


def test_the_template_has_functions(template: Template) -> None:
    assert {function.logical_id for function in template.functions()} >= {"ApiFunction"}


def test_every_function_uses_the_core_layer(template: Template) -> None:
    for function in template.functions():
        assert {"Ref": "CoreLayer"} in function.layers, function.logical_id


def test_core_layer_is_built_by_sam_for_python313_on_arm64(template: Template) -> None:
    layer = template.of_type("AWS::Serverless::LayerVersion")["CoreLayer"]
    # Without BuildArchitecture, sam build puts x86_64 wheels into the layer.
    assert layer["Metadata"] == {"BuildMethod": "python3.13", "BuildArchitecture": "arm64"}
    assert layer["Properties"]["CompatibleRuntimes"] == ["python3.13"]
    assert layer["Properties"]["CompatibleArchitectures"] == ["arm64"]
    assert (template.path.parent / layer["Properties"]["ContentUri"] / "lambdaloop").is_dir()


def test_every_function_runs_python313_on_arm64(template: Template) -> None:
    for function in template.functions():
        assert function.runtime == "python3.13", function.logical_id
        assert function.architectures == ["arm64"], function.logical_id


def test_every_function_code_uri_is_a_folder(template: Template) -> None:
    for function in template.functions():
        assert function.code_uri.is_dir(), function.code_uri


def test_functions_get_the_environment_their_code_reads(template: Template) -> None:
    for logical_id, names in EXPECTED_ENVIRONMENT.items():
        environment = template.function(logical_id).environment
        assert names | POWERTOOLS_ENVIRONMENT <= set(environment), logical_id


def test_every_reference_points_at_something_in_the_template(template: Template) -> None:
    # Given every name a Ref, GetAtt or Sub may point at
    known = set(template.resources) | set(template.body.get("Parameters", {})) | PSEUDO_PARAMETERS
    # When walking the resources, globals and outputs
    sections = [template.resources, template.body.get("Globals", {}), template.body["Outputs"]]
    unknown = {name for section in sections for name in _referenced_names(section)} - known
    # Then nothing dangles
    assert not unknown


def test_function_environment_resolves_with_local_values(template: Template) -> None:
    # Given the values the emulator provides for the resources
    resolver = Resolver(
        refs={
            "UsersTable": "users",
            "NotificationsTable": "notifications",
            "NotifyQueue": "http://127.0.0.1:5000/q/notify",
            "JobsTable": "jobs",
            "JobsQueue": "http://127.0.0.1:5000/q/jobs",
            "JobResultsBucket": "job-results",
            "ComputeQueue": "http://127.0.0.1:5000/q/compute",
            "IdempotencyTable": "idempotency",
        },
        attributes={"Cache.Endpoint.Address": "127.0.0.1", "Cache.Endpoint.Port": 6379},
        parameters=template.parameter_defaults(),
        pseudo={"AWS::StackName": "lambdaloop-local", "AWS::Region": "us-east-1"},
    )
    # When resolving the API function's environment
    environment = resolver.resolve(template.function("ApiFunction").environment)
    # Then every variable is a plain string, and Redis is reached over TLS in AWS
    assert all(isinstance(value, str) for value in environment.values())
    assert environment["USERS_TABLE"] == "users"
    assert environment["REDIS_URL"] == "rediss://127.0.0.1:6379/0"
    assert environment["LAMBDALOOP_STAGE"] == "lambdaloop-local"
    assert environment["POWERTOOLS_LOG_LEVEL"] == "INFO"
    assert environment["JOBS_RESULTS_BUCKET"] == "job-results"
    assert environment["IDEMPOTENCY_TABLE"] == "idempotency"


def test_every_function_has_a_log_group_with_retention(template: Template) -> None:
    resolver = _placeholder_resolver(template)
    log_groups = template.of_type("AWS::Logs::LogGroup")
    named = {
        resolver.resolve(group["Properties"]["LogGroupName"])
        for group in log_groups.values()
        if "LogGroupName" in group["Properties"]
    }
    for function in template.functions():
        assert f"/aws/lambda/<{function.logical_id}>" in named, function.logical_id
    for logical_id, group in log_groups.items():
        assert "RetentionInDays" in group["Properties"], logical_id


# ------------------------------------------------------------------------------- queues


def test_queues_are_encrypted(template: Template) -> None:
    queues = template.of_type("AWS::SQS::Queue")
    assert queues
    for logical_id, queue in queues.items():
        properties = queue["Properties"]
        assert properties.get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in properties, (
            logical_id
        )


def test_every_work_queue_redrives_to_a_dead_letter_queue_here(template: Template) -> None:
    queues = template.of_type("AWS::SQS::Queue")
    dead_letter_queues = _dead_letter_queues(template)
    assert dead_letter_queues
    for logical_id, queue in queues.items():
        if logical_id in dead_letter_queues:
            assert "RedrivePolicy" not in queue["Properties"], logical_id
            continue
        redrive = queue["Properties"].get("RedrivePolicy")
        assert redrive, f"{logical_id} has no RedrivePolicy"
        assert redrive["deadLetterTargetArn"] == {
            "Fn::GetAtt": [_ref_target(redrive["deadLetterTargetArn"]), "Arn"]
        }
        assert _ref_target(redrive["deadLetterTargetArn"]) in queues
        max_receive = redrive["maxReceiveCount"]
        if isinstance(max_receive, dict):  # a parameter: its default, and its floor
            parameter = template.body["Parameters"][max_receive["Ref"]]
            assert int(parameter["MinValue"]) >= 5, logical_id
            max_receive = parameter["Default"]
        assert int(max_receive) >= 5, logical_id


def test_consumed_queues_hide_messages_for_six_function_timeouts(template: Template) -> None:
    assert _visibility_problems(template) == []


def test_the_notify_function_knows_its_last_attempt_from_the_queues_own_setting(
    template: Template,
) -> None:
    redrive = template.resources["NotifyQueue"]["Properties"]["RedrivePolicy"]
    environment = template.function("NotifyFunction").environment

    assert environment["NOTIFY_MAX_ATTEMPTS"] == redrive["maxReceiveCount"]
    assert template.function("NotifyFunction").timeout == NOTIFY_CONSUMER_TIMEOUT


def test_visibility_check_bites_on_a_slow_consumer(tmp_path: Path) -> None:
    # Given a consumer whose timeout is more than a sixth of its queue's visibility timeout
    path = _write(
        tmp_path,
        """
        Resources:
          Work:
            Type: AWS::SQS::Queue
            Properties: {VisibilityTimeout: 180}
          Worker:
            Type: AWS::Serverless::Function
            Properties:
              CodeUri: functions/worker/
              Handler: worker.handler
              Runtime: python3.13
              Timeout: 60
              Events:
                Jobs:
                  Type: SQS
                  Properties: {Queue: !GetAtt Work.Arn}
        """,
    )
    # When checking / Then the check names the queue and the function
    assert _visibility_problems(load_template(path)) == [
        "Work VisibilityTimeout 180 < 6 x Worker Timeout 60"
    ]


def test_every_dead_letter_queue_keeps_messages_14_days_and_has_an_alarm(
    template: Template,
) -> None:
    queues = template.of_type("AWS::SQS::Queue")
    alarmed = {
        _ref_target(dimension["Value"])
        for alarm in template.of_type("AWS::CloudWatch::Alarm").values()
        if alarm["Properties"]["Namespace"] == "AWS/SQS"
        and alarm["Properties"]["MetricName"] == "ApproximateNumberOfMessagesVisible"
        and alarm["Properties"]["ComparisonOperator"] == "GreaterThanThreshold"
        and alarm["Properties"]["Threshold"] == 0
        and alarm["Properties"]["AlarmActions"] == [{"Ref": "AlarmTopic"}]
        for dimension in alarm["Properties"]["Dimensions"]
        if dimension["Name"] == "QueueName"
    }
    dead_letter_queues = _dead_letter_queues(template)
    assert "RelayDeadLetterQueue" in dead_letter_queues
    for logical_id in dead_letter_queues:
        assert queues[logical_id]["Properties"]["MessageRetentionPeriod"] == 1_209_600, logical_id
        assert logical_id in alarmed, logical_id


# ------------------------------------------------------------------------------- outbox relay


def test_the_outbox_tables_stream_their_new_items(template: Template) -> None:
    tables = template.of_type("AWS::DynamoDB::Table")
    for logical_id in OUTBOX_FILTERS:
        specification = tables[logical_id]["Properties"]["StreamSpecification"]
        assert specification == {"StreamViewType": "NEW_IMAGE"}, logical_id
    # And no other table pays for a stream nobody reads
    streamed = {lid for lid, t in tables.items() if "StreamSpecification" in t["Properties"]}
    assert streamed == set(OUTBOX_FILTERS)


def test_the_relay_alone_reads_the_outbox_streams(template: Template) -> None:
    sources = _stream_sources(template)
    assert set(sources) == set(OUTBOX_FILTERS)
    assert {function for function, _, _ in sources.values()} == {"RelayFunction"}
    assert {name for _, name, _ in sources.values()} == {"NotificationsStream", "JobsStream"}
    relay = template.function("RelayFunction")
    assert relay.properties["Handler"] == "relay.handler.handler"
    assert (relay.timeout, relay.memory_size) == (30, 512)
    # It needs no Redis, so no VPC (and no NAT to reach SQS's public endpoint from one)
    assert "VpcConfig" not in relay.properties
    assert "REDIS_URL" not in relay.environment


def test_the_relay_reads_from_the_start_and_retries_only_what_failed(template: Template) -> None:
    for table, (_, name, properties) in _stream_sources(template).items():
        # Records written before the mapping first polls are relayed too (LATEST skips them)
        assert properties["StartingPosition"] == "TRIM_HORIZON", name
        # The handler names the records it could not publish; a failed batch is halved
        assert properties["FunctionResponseTypes"] == ["ReportBatchItemFailures"], name
        assert properties["BisectBatchOnFunctionError"] is True, name
        assert 1 <= properties["BatchSize"] <= 100, name
        assert properties["MaximumBatchingWindowInSeconds"] == 0, name
        assert "ParallelizationFactor" not in properties, table  # per-shard order is kept


def test_the_relay_filters_to_the_records_that_ask_for_messages(template: Template) -> None:
    for table, (_, name, properties) in _stream_sources(template).items():
        filters = properties["FilterCriteria"]["Filters"]
        patterns = [json.loads(entry["Pattern"]) for entry in filters]
        assert patterns == [OUTBOX_FILTERS[table]], name


def test_the_relay_gives_up_on_a_record_into_its_dead_letter_queue(template: Template) -> None:
    queues = template.of_type("AWS::SQS::Queue")
    for _, (_, name, properties) in _stream_sources(template).items():
        # Bounded retries (-1, the default, retries a poison record until it leaves the
        # stream, holding back its shard), and a bounded age for throttled batches
        retries = properties["MaximumRetryAttempts"]
        assert type(retries) is int, name
        assert 1 <= retries <= 10, name
        age = properties["MaximumRecordAgeInSeconds"]
        # Lambda's range is 60 to 604,800; under the stream's retention, the records a
        # dead-letter message names can still be read back
        assert type(age) is int, name
        assert 60 <= age <= STREAM_RETENTION_S // 2, name
        on_failure = properties["DestinationConfig"]["OnFailure"]
        # With Type, SAM grants sqs:SendMessage on the destination itself
        assert on_failure == {
            "Type": "SQS",
            "Destination": {"Fn::GetAtt": ["RelayDeadLetterQueue", "Arn"]},
        }, name
    relay_dead_letters = queues["RelayDeadLetterQueue"]["Properties"]
    assert relay_dead_letters["SqsManagedSseEnabled"] is True
    assert "RedrivePolicy" not in relay_dead_letters
    outputs = template.body["Outputs"]
    assert outputs["RelayDeadLetterQueueUrl"]["Value"] == {"Ref": "RelayDeadLetterQueue"}


def test_only_the_relay_publishes_new_work_and_the_api_publishes_nothing(
    template: Template,
) -> None:
    # The relay may send to every work queue, and knows where each is
    relay = template.function("RelayFunction")
    assert _sqs_send_targets(template, "RelayFunction") == set(WORK_QUEUES)
    for queue, variable in WORK_QUEUES.items():
        assert relay.environment[variable] == {"Ref": queue}, variable
    # The API writes records only: no send of any kind, and no queue URL it could send to
    # but the notify queue's, whose attributes the health check reads
    api = template.function("ApiFunction")
    assert _sqs_send_targets(template, "ApiFunction") == set()
    assert set(WORK_QUEUES.values()) & set(api.environment) == {"NOTIFY_QUEUE_URL"}
    sqs_statements = [
        statement
        for statement in _policy_statements(api.properties["Policies"])
        if any(action.startswith("sqs:") for action in _actions(statement))
    ]
    assert sqs_statements == [
        {
            "Effect": "Allow",
            "Action": "sqs:GetQueueAttributes",
            "Resource": {"Fn::GetAtt": ["NotifyQueue", "Arn"]},
        }
    ]
    # A consumer that continues its own work (the next part of a fetch job) still may
    assert _sqs_send_targets(template, "JobsFunction") == {"JobsQueue"}


def test_the_send_check_sees_statements_too(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        Resources:
          Q: {Type: AWS::SQS::Queue}
          R: {Type: AWS::SQS::Queue}
          Sender:
            Type: AWS::Serverless::Function
            Properties:
              CodeUri: .
              Handler: app.handler
              Policies:
                - SQSSendMessagePolicy: {QueueName: !GetAtt Q.QueueName}
                - Statement:
                    - Effect: Allow
                      Action: [sqs:GetQueueAttributes, sqs:SendMessageBatch]
                      Resource: !GetAtt R.Arn
        """,
    )
    assert _sqs_send_targets(load_template(path), "Sender") == {"Q", "R"}


def test_the_relay_alarms_when_it_falls_behind(template: Template) -> None:
    alarms = [
        alarm["Properties"]
        for alarm in template.of_type("AWS::CloudWatch::Alarm").values()
        if alarm["Properties"]["MetricName"] == "IteratorAge"
    ]
    (alarm,) = alarms
    assert alarm["Namespace"] == "AWS/Lambda"
    assert alarm["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": "RelayFunction"}}]
    assert alarm["Statistic"] == "Maximum"
    # IteratorAge is in milliseconds: a minute behind, for five minutes
    assert (alarm["Threshold"], alarm["Period"], alarm["EvaluationPeriods"]) == (60_000, 60, 5)
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
    # No new records, no metric: that is not a stuck relay
    assert alarm["TreatMissingData"] == "notBreaching"
    assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]


# ------------------------------------------------------------------------------- data, network


def test_tables_are_on_demand_encrypted_recoverable_and_retained(template: Template) -> None:
    assert not template.of_type("AWS::Serverless::SimpleTable")
    tables = template.of_type("AWS::DynamoDB::Table")
    assert tables
    for logical_id, table in tables.items():
        properties = table["Properties"]
        assert properties["BillingMode"] == "PAY_PER_REQUEST", logical_id
        assert properties["SSESpecification"]["SSEEnabled"] is True, logical_id
        pitr = properties["PointInTimeRecoverySpecification"]
        assert pitr["PointInTimeRecoveryEnabled"] is True, logical_id
        assert table["DeletionPolicy"] == table["UpdateReplacePolicy"] == "Retain", logical_id


def test_users_table_is_single_table_with_ttl(template: Template) -> None:
    properties = template.resources["UsersTable"]["Properties"]
    assert properties["KeySchema"] == [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ]
    assert properties["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert "TableName" not in properties


def test_cache_is_serverless_redis_in_private_subnets(template: Template) -> None:
    cache = template.resources["Cache"]
    assert cache["Type"] == "AWS::ElastiCache::ServerlessCache"
    assert cache["Properties"]["Engine"] == "redis"
    subnets = _ref_targets(cache["Properties"]["SubnetIds"])
    assert len(subnets) >= 2
    assert subnets <= _private_subnets(template)


def test_functions_using_redis_run_in_the_cache_subnets_and_may_reach_it(
    template: Template,
) -> None:
    cache = template.resources["Cache"]["Properties"]
    ingress_sources = {
        _ref_target(rule.get("SourceSecurityGroupId"))
        for group_id in _ref_targets(cache["SecurityGroupIds"])
        for rule in template.resources[group_id]["Properties"].get("SecurityGroupIngress", [])
        if rule.get("FromPort") <= 6379 <= rule.get("ToPort")
    }
    users = [f for f in template.functions() if "REDIS_URL" in f.environment]
    assert users
    for function in users:
        vpc = function.properties.get("VpcConfig")
        assert vpc, f"{function.logical_id} uses Redis but is not in the VPC"
        assert _ref_targets(vpc["SubnetIds"]) <= _private_subnets(template)
        assert _ref_targets(vpc["SubnetIds"]) & _ref_targets(cache["SubnetIds"])
        assert _ref_targets(vpc["SecurityGroupIds"]) & ingress_sources, function.logical_id


def test_the_cache_admits_only_the_functions(template: Template) -> None:
    group = template.resources["CacheSecurityGroup"]["Properties"]
    for rule in group["SecurityGroupIngress"]:
        assert set(rule) & {"CidrIp", "CidrIpv6", "SourcePrefixListId"} == set()
        assert _ref_target(rule["SourceSecurityGroupId"]) == "LambdaSecurityGroup"


def test_no_route_to_the_internet(template: Template) -> None:
    for type_ in ("AWS::EC2::InternetGateway", "AWS::EC2::NatGateway", "AWS::EC2::EIP"):
        assert not template.of_type(type_), type_


def test_aws_services_are_reached_through_vpc_endpoints(template: Template) -> None:
    endpoints = template.of_type("AWS::EC2::VPCEndpoint").values()
    services = {
        _placeholder_resolver(template)
        .resolve(endpoint["Properties"]["ServiceName"])
        .split(".")[-1]: endpoint["Properties"]["VpcEndpointType"]
        for endpoint in endpoints
    }
    assert services == {"dynamodb": "Gateway", "sqs": "Interface"}


# ------------------------------------------------------------------------------- API, IAM


def test_http_api_is_throttled(template: Template) -> None:
    apis = template.of_type("AWS::Serverless::HttpApi")
    assert apis
    resolver = _placeholder_resolver(template)
    for logical_id, api in apis.items():
        settings = resolver.resolve(api["Properties"]["DefaultRouteSettings"])
        assert float(settings["ThrottlingRateLimit"]) > 0, logical_id
        assert int(settings["ThrottlingBurstLimit"]) > 0, logical_id
        assert "DestinationArn" in api["Properties"]["AccessLogSettings"], logical_id


def test_no_policy_allows_every_action(template: Template) -> None:
    statements = list(_policy_statements(template.resources))
    assert statements
    for statement in statements:
        if statement.get("Effect") == "Deny":  # denying everything (no TLS, ...) is the point
            continue
        actions: Any = statement.get("Action", statement.get("NotAction"))
        for action in [actions] if isinstance(actions, str) else actions:
            assert action != "*", statement
            assert not action.endswith(":*"), statement
    for function in template.functions():
        for policy in function.properties.get("Policies", []):
            # AWS managed policies by name: these ones grant service:* (or everything).
            if isinstance(policy, str):
                assert not BROAD_MANAGED_POLICY.search(policy), f"{function.logical_id}: {policy}"


# ------------------------------------------------------------------------------- identity, limits

#: Every route of the API function and the one scope it needs (None: public, no token at all).
#: ANY /{proxy+} needs a token but no scope: it only answers 404/405 for unknown paths.
#: A public path is public for every method (ANY <path>, no authorizer): the app's 405.
ROUTE_SCOPES: dict[str, str | None] = {
    "GET /": None,
    "GET /health": None,
    "GET /docs": None,
    "GET /docs/oauth2-redirect": None,
    "GET /docs/assets/{asset}": None,
    "GET /openapi.json": None,
    "GET /users/batch": "lambdaloop/users.read",
    "GET /users/{user_id}": "lambdaloop/users.read",
    "POST /users": "lambdaloop/users.write",
    "POST /users/batch": "lambdaloop/users.write",
    "PUT /users/{user_id}": "lambdaloop/users.write",
    "PATCH /users/{user_id}": "lambdaloop/users.write",
    "DELETE /users/{user_id}": "lambdaloop/users.write",
    "GET /users/{user_id}/notifications": "lambdaloop/notifications.read",
    "GET /notifications/{notification_id}": "lambdaloop/notifications.read",
    "POST /users/{user_id}/notify": "lambdaloop/notifications.write",
    "GET /jobs/{job_id}": "lambdaloop/jobs.read",
    "POST /jobs/fetch": "lambdaloop/jobs.write",
    "POST /jobs/compute": "lambdaloop/jobs.write",
}
PUBLIC_ROUTES = {route for route, scope in ROUTE_SCOPES.items() if scope is None}
PUBLIC_OTHER_METHODS = {f"ANY {route.split(' ', 1)[1]}" for route in PUBLIC_ROUTES}
CATCH_ALL_ROUTES = {"ANY /{proxy+}": None} | dict.fromkeys(PUBLIC_OTHER_METHODS)
SCOPES = {
    f"lambdaloop/{family}.{access}"
    for family in ("users", "notifications", "jobs")
    for access in ("read", "write")
}
COGNITO_RESOURCES = ("UserPool", "UserPoolDomain", "UserPoolResourceServer", "UserPoolClient")
#: A real stack id's shape: the domain prefix is made of its UUID.
STACK_ID = (
    "arn:aws:cloudformation:eu-west-1:123456789012:stack/lambdaloop-prod/"
    "51af3dc0-da77-11e4-872e-1234567db123"
)
#: What a Cognito prefix domain may be (CreateUserPoolDomain), and the words it may not contain.
COGNITO_DOMAIN_PREFIX = re.compile(r"^[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?$")
COGNITO_RESERVED_WORDS = ("aws", "amazon", "cognito")
#: Lambda keeps this much of an account's concurrency unreserved; 1,000 is the usual quota.
UNRESERVED_MINIMUM, USUAL_ACCOUNT_CONCURRENCY = 100, 1000
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _http_api_events(template: Template) -> dict[str, tuple[str, dict[str, Any]]]:
    """Route key -> (function, event properties) for every HttpApi event of the template."""
    events: dict[str, tuple[str, dict[str, Any]]] = {}
    for function in template.functions():
        for name, event in function.events.items():
            if event.get("Type") != "HttpApi":
                continue
            properties = event["Properties"]
            key = f"{properties['Method'].upper()} {properties['Path']}"
            assert key not in events, f"{function.logical_id}.{name}: {key} twice"
            events[key] = (function.logical_id, properties)
    return events


def _parameter_values(template: Template, **overrides: str) -> dict[str, str]:
    """Parameter values as CloudFormation hands them to conditions: strings."""
    values = {name: str(value) for name, value in template.parameter_defaults().items()}
    unknown = set(overrides) - set(values)
    assert not unknown, unknown
    return {**values, **overrides}


def _condition_holds(template: Template, name: str, parameters: dict[str, str]) -> bool:
    """Evaluates one of the template's Conditions (Equals, Not, And, Or, Condition, Ref)."""
    functions: dict[str, Callable[[list[Any]], bool]] = {
        "Fn::Equals": lambda arguments: str(value(arguments[0])) == str(value(arguments[1])),
        "Fn::Not": lambda arguments: not value(arguments[0]),
        "Fn::And": lambda arguments: all(value(argument) for argument in arguments),
        "Fn::Or": lambda arguments: any(value(argument) for argument in arguments),
    }

    def value(node: Any) -> Any:
        if isinstance(node, str | int | float | bool):
            return node
        ((function, argument),) = node.items()
        if function == "Ref":
            return parameters[argument]
        if function == "Condition":
            return _condition_holds(template, argument, parameters)
        if function not in functions:
            raise AssertionError(f"condition {name}: cannot evaluate {node!r}")
        return functions[function](argument)

    return bool(value(template.body["Conditions"][name]))


def _choose(value: Any, holds: dict[str, bool]) -> Any:
    """``value`` with every Fn::If replaced by the branch its condition picks."""
    if isinstance(value, dict) and set(value) == {"Fn::If"}:
        condition, when_true, when_false = value["Fn::If"]
        return _choose(when_true if holds[condition] else when_false, holds)
    if isinstance(value, dict):
        return {key: _choose(item, holds) for key, item in value.items()}
    if isinstance(value, list):
        return [_choose(item, holds) for item in value]
    return value


def _deployed(template: Template, value: Any, **parameters: str) -> Any:
    """``value`` as CloudFormation would see it with these parameters: conditions evaluated,
    resources as ``<LogicalId>``, a realistic stack id and region."""
    values = _parameter_values(template, **parameters)
    holds = {name: _condition_holds(template, name, values) for name in template.body["Conditions"]}
    resolver = Resolver(
        refs={logical_id: f"<{logical_id}>" for logical_id in template.resources},
        attributes={},
        parameters=values,
        pseudo={"AWS::StackId": STACK_ID, "AWS::Region": "eu-west-1", "AWS::StackName": "prod"},
    )
    return resolver.resolve(_choose(value, holds))


def _unguarded_references(
    value: Any, conditional: dict[str, str], guards: frozenset[str]
) -> Iterator[str]:
    """Conditional resources that ``value`` names outside an Fn::If on their condition."""
    if isinstance(value, list):
        for item in value:
            yield from _unguarded_references(item, conditional, guards)
        return
    if not isinstance(value, dict):
        return
    named: list[str] = []
    if set(value) == {"Fn::If"}:
        condition, when_true, when_false = value["Fn::If"]
        yield from _unguarded_references(when_true, conditional, guards | {condition})
        yield from _unguarded_references(when_false, conditional, guards)
        return
    if set(value) == {"Ref"} or set(value) == {"Fn::GetAtt"}:
        named = [str(_ref_target(value))]
    elif set(value) == {"Fn::Sub"}:
        argument = value["Fn::Sub"]
        text, variables = (argument, {}) if isinstance(argument, str) else argument
        named = [
            name.split(".", 1)[0]
            for name in _SUB_VARIABLE.findall(text)
            if not name.startswith("!") and name not in variables
        ]
        yield from _unguarded_references(list(variables.values()), conditional, guards)
    else:
        yield from _unguarded_references(list(value.values()), conditional, guards)
    yield from (name for name in named if name in conditional and conditional[name] not in guards)


def test_api_routes_are_exactly_the_app_routes_and_the_catch_alls(template: Template) -> None:
    events = _http_api_events(template)
    # Every route reaches the API function, and no other function takes HTTP requests
    assert {function for function, _ in events.values()} == {"ApiFunction"}
    assert set(events) == set(ROUTE_SCOPES) | set(CATCH_ALL_ROUTES)
    for route, (_, properties) in events.items():
        assert properties["ApiId"] == {"Ref": "HttpApi"}, route


def test_the_template_routes_every_route_of_the_app() -> None:
    # A route of the app missing here would fall into ANY /{proxy+}: any token, no scope.
    from fastapi.routing import APIRoute
    from starlette.routing import Route

    from api.app import create_app
    from api.settings import ApiSettings

    settings = ApiSettings.from_env(
        {
            "USERS_TABLE": "users",
            "NOTIFICATIONS_TABLE": "notifications",
            "NOTIFY_QUEUE_URL": "http://sqs.local/notify",
            "JOBS_TABLE": "jobs",
            "JOBS_QUEUE_URL": "http://sqs.local/jobs",
            "COMPUTE_QUEUE_URL": "http://sqs.local/compute",
            "IDEMPOTENCY_TABLE": "idempotency",
        }
    )
    app_routes = {
        f"{method} {route.path}"
        for route in create_app(settings).routes
        if isinstance(route, APIRoute | Route)
        for method in route.methods or ()
        if method not in {"HEAD", "OPTIONS"}
    }
    assert app_routes == set(ROUTE_SCOPES)


def test_public_routes_carry_no_authorizer(template: Template) -> None:
    events = _http_api_events(template)
    for route in PUBLIC_ROUTES | PUBLIC_OTHER_METHODS:
        assert events[route][1]["Auth"] == {"Authorizer": "NONE"}, route


def test_every_other_route_needs_a_token_and_exactly_its_scope(template: Template) -> None:
    events = _http_api_events(template)
    default = template.resources["HttpApi"]["Properties"]["Auth"]["DefaultAuthorizer"]
    for route, scope in {**ROUTE_SCOPES, **CATCH_ALL_ROUTES}.items():
        if route in PUBLIC_ROUTES | PUBLIC_OTHER_METHODS:
            continue
        auth = events[route][1].get("Auth") or {}
        assert auth.get("Authorizer", default) == "JwtAuthorizer", route
        expected = [scope] if scope else []
        assert auth.get("AuthorizationScopes", []) == expected, route


def test_reads_need_a_read_scope_and_writes_a_write_scope_of_their_family() -> None:
    for route, scope in ROUTE_SCOPES.items():
        if scope is None:
            continue
        method, path = route.split(" ", 1)
        family = "notifications" if "/notif" in path else path.split("/")[1]
        access = "write" if method in WRITE_METHODS else "read"
        assert scope == f"lambdaloop/{family}.{access}", route
    assert {scope for scope in ROUTE_SCOPES.values() if scope} == SCOPES


def test_the_api_checks_bearer_tokens_by_default(template: Template) -> None:
    auth = template.resources["HttpApi"]["Properties"]["Auth"]
    assert auth["DefaultAuthorizer"] == "JwtAuthorizer"
    (name,) = auth["Authorizers"]
    authorizer = auth["Authorizers"][name]
    assert name == "JwtAuthorizer"
    assert authorizer["IdentitySource"] == "$request.header.Authorization"
    # SAM passes JwtConfiguration into the OpenAPI document: lower-case keys, nothing else.
    assert set(authorizer["JwtConfiguration"]) == {"issuer", "audience"}


def test_without_an_issuer_the_stack_trusts_its_own_user_pool(template: Template) -> None:
    configuration = template.resources["HttpApi"]["Properties"]["Auth"]["Authorizers"][
        "JwtAuthorizer"
    ]["JwtConfiguration"]
    # Given the default parameters (no JwtIssuer)
    deployed = _deployed(template, configuration)
    # Then the issuer is the pool's and the audience its app client (a Cognito access token
    # has no aud; API Gateway then checks client_id)
    assert deployed == {
        "issuer": "https://cognito-idp.eu-west-1.amazonaws.com/<UserPool>",
        "audience": ["<UserPoolClient>"],
    }


def test_with_an_issuer_the_stack_trusts_it_and_creates_no_user_pool(template: Template) -> None:
    configuration = template.resources["HttpApi"]["Properties"]["Auth"]["Authorizers"][
        "JwtAuthorizer"
    ]["JwtConfiguration"]
    # Given an issuer and two audiences
    parameters = {"JwtIssuer": "https://id.example.com/", "JwtAudience": "api,api-staging"}
    # When deployed
    deployed = _deployed(template, configuration, **parameters)
    values = _parameter_values(template, **parameters)
    # Then the authorizer uses them, and the Cognito resources are not created
    assert deployed == {"issuer": "https://id.example.com/", "audience": ["api", "api-staging"]}
    assert not _condition_holds(template, "CreateUserPool", values)
    assert _condition_holds(template, "CreateUserPool", _parameter_values(template))


def test_further_tenants_app_clients_join_the_audience(template: Template) -> None:
    configuration = template.resources["HttpApi"]["Properties"]["Auth"]["Authorizers"][
        "JwtAuthorizer"
    ]["JwtConfiguration"]
    # Given the stack's pool and two more app clients (a tenant each)
    deployed = _deployed(template, configuration, JwtAudience="client2,client3")
    # Then tokens of all three are accepted
    assert deployed["audience"] == ["<UserPoolClient>", "client2", "client3"]


def test_the_issuer_parameter_takes_only_https_urls(template: Template) -> None:
    pattern = re.compile(template.body["Parameters"]["JwtIssuer"]["AllowedPattern"])
    for accepted in ("", "https://id.example.com", "https://cognito-idp.x.amazonaws.com/x_Y"):
        assert pattern.fullmatch(accepted), accepted
    for refused in ("http://id.example.com", "id.example.com", "https://x/?q", "https://"):
        assert not pattern.fullmatch(refused), refused


def test_an_issuer_without_audience_is_refused_by_a_rule(template: Template) -> None:
    rule = template.body["Rules"]["OwnIssuerNeedsAudience"]
    assert rule["RuleCondition"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "JwtIssuer"}, ""]}]}
    (assertion,) = rule["Assertions"]
    assert assertion["Assert"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "JwtAudience"}, ""]}]}


def test_the_cognito_resources_exist_only_without_an_issuer(template: Template) -> None:
    assert template.body["Conditions"]["CreateUserPool"] == {
        "Fn::Equals": [{"Ref": "JwtIssuer"}, ""]
    }
    for logical_id in COGNITO_RESOURCES:
        assert template.resources[logical_id]["Condition"] == "CreateUserPool", logical_id
    assert template.resources["UserPool"]["Type"] == "AWS::Cognito::UserPool"
    # Nobody signs up: tenants are app clients made by the stack's owner
    pool = template.resources["UserPool"]["Properties"]
    assert pool["AdminCreateUserConfig"] == {"AllowAdminCreateUserOnly": True}


def test_the_resource_server_defines_the_six_scopes(template: Template) -> None:
    server = template.resources["UserPoolResourceServer"]
    assert server["Type"] == "AWS::Cognito::UserPoolResourceServer"
    properties = server["Properties"]
    assert properties["Identifier"] == "lambdaloop"
    assert properties["UserPoolId"] == {"Ref": "UserPool"}
    names = [scope["ScopeName"] for scope in properties["Scopes"]]
    assert len(names) == len(set(names))
    assert {f"{properties['Identifier']}/{name}" for name in names} == SCOPES


def test_the_app_client_gets_tokens_with_client_credentials_and_every_scope(
    template: Template,
) -> None:
    client = template.resources["UserPoolClient"]
    assert client["Type"] == "AWS::Cognito::UserPoolClient"
    # The scopes must exist before a client may ask for them
    depends_on = client["DependsOn"]
    assert "UserPoolResourceServer" in ([depends_on] if isinstance(depends_on, str) else depends_on)
    properties = client["Properties"]
    assert properties["UserPoolId"] == {"Ref": "UserPool"}
    assert properties["GenerateSecret"] is True
    assert properties["AllowedOAuthFlowsUserPoolClient"] is True
    assert properties["AllowedOAuthFlows"] == ["client_credentials"]
    assert sorted(properties["AllowedOAuthScopes"]) == sorted(SCOPES)


def test_the_user_pool_domain_is_a_valid_unique_prefix(template: Template) -> None:
    domain = template.resources["UserPoolDomain"]["Properties"]
    assert domain["UserPoolId"] == {"Ref": "UserPool"}
    # When deployed in a stack
    prefix = _deployed(template, domain["Domain"])
    # Then it is the stack id's UUID (unique), in the shape Cognito accepts
    assert prefix == "lambdaloop-51af3dc0-da77-11e4-872e-1234567db123"
    assert COGNITO_DOMAIN_PREFIX.fullmatch(prefix)
    assert not any(word in prefix for word in COGNITO_RESERVED_WORDS)


def test_outputs_tell_how_to_get_a_token(template: Template) -> None:
    outputs = template.body["Outputs"]
    domain = _deployed(template, template.resources["UserPoolDomain"]["Properties"]["Domain"])
    # Given the stack's own user pool / Then its token endpoint, pool and client are outputs
    assert _deployed(template, outputs["TokenUrl"]["Value"]) == (
        f"https://{domain}.auth.eu-west-1.amazoncognito.com/oauth2/token"
    )
    assert outputs["UserPoolId"]["Value"] == {"Ref": "UserPool"}
    assert outputs["UserPoolClientId"]["Value"] == {"Ref": "UserPoolClient"}
    for name in ("TokenUrl", "UserPoolId", "UserPoolClientId"):
        assert outputs[name]["Condition"] == "CreateUserPool", name
    # And the issuer follows the authorizer in both cases
    issuer = outputs["JwtIssuerUrl"]["Value"]
    assert _deployed(template, issuer) == "https://cognito-idp.eu-west-1.amazonaws.com/<UserPool>"
    own = {"JwtIssuer": "https://id.example.com", "JwtAudience": "api"}
    assert _deployed(template, issuer, **own) == "https://id.example.com"


def test_conditional_resources_are_named_only_under_their_condition(template: Template) -> None:
    # CloudFormation refuses a template that refers to a resource that may not exist.
    conditions = set(template.body["Conditions"])
    conditional = {
        logical_id: resource["Condition"]
        for logical_id, resource in template.resources.items()
        if "Condition" in resource
    }
    assert set(conditional.values()) <= conditions
    problems = []
    sections = [("Resources", template.resources), ("Outputs", template.body["Outputs"])]
    for section, entries in sections:
        for name, entry in entries.items():
            assert entry.get("Condition", "CreateUserPool") in conditions, name
            guards = frozenset({entry["Condition"]} if "Condition" in entry else ())
            body = {key: value for key, value in entry.items() if key != "Condition"}
            problems += [
                f"{section}.{name} -> {target}"
                for target in _unguarded_references(body, conditional, guards)
            ]
    assert problems == []


def test_the_condition_guard_check_bites() -> None:
    # Given an output naming a conditional resource outside an Fn::If on its condition
    value = {"Fn::Sub": "https://${Pool}/x"}
    conditional = {"Pool": "MakePool"}
    # Then it is caught, and the same reference inside the guard is not
    assert list(_unguarded_references(value, conditional, frozenset())) == ["Pool"]
    guarded = {"Fn::If": ["MakePool", value, {"Ref": "Other"}]}
    assert list(_unguarded_references(guarded, conditional, frozenset())) == []
    wrong_branch = {"Fn::If": ["MakePool", "x", value]}
    assert list(_unguarded_references(wrong_branch, conditional, frozenset())) == ["Pool"]


def test_every_function_reserves_concurrency_from_a_parameter(template: Template) -> None:
    parameters = template.body["Parameters"]
    for function in template.functions():
        # Given the function's reservation: a parameter, or no reservation when it is 0
        reserved = function.properties["ReservedConcurrentExecutions"]
        condition, when_set, when_zero = reserved["Fn::If"]
        parameter = when_set["Ref"]
        assert parameter == function.logical_id.removesuffix("Function") + "ReservedConcurrency"
        assert when_zero == {"Ref": "AWS::NoValue"}, function.logical_id
        assert parameters[parameter]["Type"] == "Number"
        assert parameters[parameter]["MinValue"] == 0
        assert int(parameters[parameter]["Default"]) > 0, parameter
        # Then 0 means no reservation (a reservation of 0 would stop the function)
        assert not _condition_holds(
            template, condition, _parameter_values(template, **{parameter: "0"})
        )
        assert _condition_holds(template, condition, _parameter_values(template))


def test_default_reservations_fit_a_usual_account(template: Template) -> None:
    defaults = template.parameter_defaults()
    total = sum(
        int(defaults[f"{f.logical_id.removesuffix('Function')}ReservedConcurrency"])
        for f in template.functions()
    )
    assert total <= USUAL_ACCOUNT_CONCURRENCY - UNRESERVED_MINIMUM


def test_consumers_reserve_at_least_what_their_event_source_may_run(template: Template) -> None:
    # The event source does not see the reservation: it would take batches the function cannot
    # run, and their receives count towards the dead-letter queue.
    defaults = _parameter_values(template)
    consumers = list(_sqs_consumers(template))
    assert {function.logical_id for function, _ in consumers} == {
        "NotifyFunction",
        "JobsFunction",
        "ComputeFunction",
    }
    for function, _queue in consumers:
        (event,) = [e for e in function.events.values() if e.get("Type") == "SQS"]
        scaling = _deployed_scaling(template, event["Properties"])["ScalingConfig"]
        maximum = int(scaling["MaximumConcurrency"])
        reserved = _deployed(template, function.properties["ReservedConcurrentExecutions"])
        assert int(reserved) >= maximum, function.logical_id
        assert (
            int(defaults[function.logical_id.removesuffix("Function") + "ReservedConcurrency"])
            >= maximum
        )


def _deployed_scaling(
    template: Template, properties: dict[str, Any], **parameters: str
) -> dict[str, Any]:
    """An SQS event's scaling settings (ScalingConfig, ProvisionedPollerConfig) as deployed."""
    scaling = ("ScalingConfig", "ProvisionedPollerConfig")
    chosen = {name: properties[name] for name in scaling if name in properties}
    return dict(_deployed(template, chosen, **parameters))


def test_sqs_event_sources_take_provisioned_pollers_only_when_asked(
    template: Template,
) -> None:
    # Given the provisioned-mode parameters: off by default, within Lambda's SQS ranges
    parameters = template.body["Parameters"]
    minimum = parameters["ProvisionedPollersMinimum"]
    maximum = parameters["ProvisionedPollersMaximum"]
    assert (minimum["Type"], int(minimum["Default"]), minimum["MinValue"]) == ("Number", 0, 0)
    assert minimum["MaxValue"] <= SQS_MAXIMUM_MINIMUM_POLLERS
    assert maximum["Type"] == "Number"
    assert maximum["MinValue"] >= SQS_MINIMUM_POLLERS
    assert int(maximum["Default"]) >= SQS_MINIMUM_POLLERS
    events = [
        (function.logical_id, event["Properties"])
        for function, _queue in _sqs_consumers(template)
        for event in function.events.values()
        if event.get("Type") == "SQS"
    ]
    assert len(events) == 3
    for logical_id, properties in events:
        # When deployed with the defaults: standard mode, bounded by MaximumConcurrency
        default = _deployed_scaling(template, properties)
        assert set(default) == {"ScalingConfig"}, logical_id
        assert int(default["ScalingConfig"]["MaximumConcurrency"]) >= 2, logical_id
        # When deployed with pollers: provisioned mode instead (AWS takes one or the other)
        provisioned = _deployed_scaling(
            template, properties, ProvisionedPollersMinimum="3", ProvisionedPollersMaximum="8"
        )
        assert provisioned == {
            "ProvisionedPollerConfig": {"MinimumPollers": "3", "MaximumPollers": "8"}
        }, logical_id


def test_one_provisioned_poller_is_refused_by_a_rule(template: Template) -> None:
    # 0 is the standard mode; Lambda refuses a single poller for SQS at deploy time.
    (assertion,) = template.body["Rules"]["ProvisionedPollersAreTwoAtLeast"]["Assertions"]
    assert assertion["Assert"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "ProvisionedPollersMinimum"}, "1"]}]
    }


def test_sam_local_may_point_every_function_at_a_local_endpoint(template: Template) -> None:
    # sam local passes a function only the variables the template declares: without this
    # declaration its --env-vars could not set the endpoint, and functions would call AWS.
    variables = template.body["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["AWS_ENDPOINT_URL"] == ""
    for function in template.functions():
        assert function.environment["AWS_ENDPOINT_URL"] == "", function.logical_id


_DEPLOYED_ENDPOINTS = """
import json
from lambdaloop.clients import aws_client
from lambdaloop.settings import get_aws_settings

services = ("dynamodb", "sqs", "s3", "secretsmanager")
endpoints = {service: aws_client(service).meta.endpoint_url for service in services}
print(json.dumps({"region": get_aws_settings().region, "endpoints": endpoints}))
"""


def test_the_declared_endpoint_changes_nothing_deployed(template: Template) -> None:
    # Given the variables every function gets as deployed (the empty AWS_ENDPOINT_URL
    # included), Lambda's own, and nothing of this machine's AWS configuration
    deployed = _deployed(template, template.body["Globals"]["Function"]["Environment"])
    assert deployed["Variables"]["AWS_ENDPOINT_URL"] == ""
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AWS_", "BOTO_", "LAMBDALOOP_"))
    }
    environment = {
        **inherited,
        **{name: str(value) for name, value in deployed["Variables"].items()},
        "AWS_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": "deployed",
        "AWS_SECRET_ACCESS_KEY": "deployed",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    # When the layer builds its clients there (a new process: settings and clients are cached)
    result = subprocess.run(
        [sys.executable, "-c", _DEPLOYED_ENDPOINTS],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    # Then they use AWS's regional endpoints, as without the variable
    outcome = json.loads(result.stdout)
    assert outcome["region"] == "eu-west-1"
    assert outcome["endpoints"] == {
        "dynamodb": "https://dynamodb.eu-west-1.amazonaws.com",
        "sqs": "https://sqs.eu-west-1.amazonaws.com",
        "s3": "https://s3.eu-west-1.amazonaws.com",
        "secretsmanager": "https://secretsmanager.eu-west-1.amazonaws.com",
    }


def test_the_api_function_gets_the_jobs_in_flight_limit(template: Template) -> None:
    environment = template.function("ApiFunction").environment
    assert environment["JOBS_IN_FLIGHT_LIMIT"] == {"Fn::Sub": "${JobsInFlightLimit}"}
    parameter = template.body["Parameters"]["JobsInFlightLimit"]
    assert (parameter["Type"], int(parameter["Default"]), int(parameter["MinValue"])) == (
        "Number",
        10,
        1,
    )


def test_expensive_writes_have_their_own_throttles(template: Template) -> None:
    api = template.resources["HttpApi"]["Properties"]
    settings = api["RouteSettings"]
    # Every setting names a route of the API (API Gateway refuses a stage whose settings name a
    # missing route), and every write route has one
    assert set(settings) <= set(ROUTE_SCOPES)
    writes = {route for route in ROUTE_SCOPES if route.split(" ")[0] in WRITE_METHODS}
    assert set(settings) == writes
    # Jobs from their own parameters
    for route in ("POST /jobs/fetch", "POST /jobs/compute"):
        assert settings[route] == {
            "ThrottlingRateLimit": {"Ref": "ApiJobsRateLimit"},
            "ThrottlingBurstLimit": {"Ref": "ApiJobsBurstLimit"},
        }, route
    for route in writes - {"POST /jobs/fetch", "POST /jobs/compute"}:
        assert settings[route] == {
            "ThrottlingRateLimit": {"Ref": "ApiWritesRateLimit"},
            "ThrottlingBurstLimit": {"Ref": "ApiWritesBurstLimit"},
        }, route
    # And, by default, no route may go faster than the stage allows
    defaults = template.parameter_defaults()
    stage_rate = int(defaults["ApiThrottlingRateLimit"])
    stage_burst = int(defaults["ApiThrottlingBurstLimit"])
    resolver = _placeholder_resolver(template)
    for route, setting in resolver.resolve(settings).items():
        assert 0 < int(setting["ThrottlingRateLimit"]) < stage_rate, route
        assert 0 < int(setting["ThrottlingBurstLimit"]) < stage_burst, route
        assert int(setting["ThrottlingBurstLimit"]) >= int(setting["ThrottlingRateLimit"]), route
    jobs = resolver.resolve(settings["POST /jobs/fetch"])
    assert int(jobs["ThrottlingRateLimit"]) < int(
        resolver.resolve(settings["POST /users"])["ThrottlingRateLimit"]
    )


# ------------------------------------------------------------------------------- loader


def test_loader_turns_short_tags_into_long_form(tmp_path: Path) -> None:
    # Given every short tag on a scalar, a sequence and a mapping
    path = _write(
        tmp_path,
        """
        Resources: {}
        Values:
          ref: !Ref Thing
          att: !GetAtt Cache.Endpoint.Address
          att_list: !GetAtt [Queue, Arn]
          sub: !Sub "${AWS::StackName}-x"
          sub_list: !Sub ["${A}", {A: !Ref B}]
          join: !Join ["-", [a, !Ref B]]
          select: !Select [0, !GetAZs ""]
          if: !If [IsProd, 1, 2]
          conditions: !And [!Equals [a, b], !Not [!Condition C], !Or [!Condition D, true]]
          map: !FindInMap [Map, Key, Value]
          b64: !Base64 {Ref: X}
          split: !Split [",", "a,b"]
          import: !ImportValue other-stack-output
          version: 2012-10-17
        """,
    )
    # When loading
    values = load_template(path).body["Values"]
    # Then
    assert values == {
        "ref": {"Ref": "Thing"},
        "att": {"Fn::GetAtt": ["Cache", "Endpoint.Address"]},
        "att_list": {"Fn::GetAtt": ["Queue", "Arn"]},
        "sub": {"Fn::Sub": "${AWS::StackName}-x"},
        "sub_list": {"Fn::Sub": ["${A}", {"A": {"Ref": "B"}}]},
        "join": {"Fn::Join": ["-", ["a", {"Ref": "B"}]]},
        "select": {"Fn::Select": [0, {"Fn::GetAZs": ""}]},
        "if": {"Fn::If": ["IsProd", 1, 2]},
        "conditions": {
            "Fn::And": [
                {"Fn::Equals": ["a", "b"]},
                {"Fn::Not": [{"Condition": "C"}]},
                {"Fn::Or": [{"Condition": "D"}, True]},
            ]
        },
        "map": {"Fn::FindInMap": ["Map", "Key", "Value"]},
        "b64": {"Fn::Base64": {"Ref": "X"}},
        "split": {"Fn::Split": [",", "a,b"]},
        "import": {"Fn::ImportValue": "other-stack-output"},
        "version": "2012-10-17",  # CloudFormation has no dates
    }


def test_loader_leaves_the_global_safe_loader_alone() -> None:
    load_template()
    with pytest.raises(yaml.constructor.ConstructorError):
        yaml.safe_load("!Ref Thing")
    assert yaml.safe_load("2012-10-17") == datetime.date(2012, 10, 17)


def test_loader_rejects_a_get_att_without_attribute(tmp_path: Path) -> None:
    path = _write(tmp_path, "Resources: {X: !GetAtt Cache}\n")
    with pytest.raises(TemplateError, match="Cache"):
        load_template(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [("Resources: [\n", "not valid YAML"), ("Outputs: {}\n", "no Resources")],
)
def test_loader_rejects_what_is_not_a_template(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        load_template(_write(tmp_path, text))


def test_loader_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match=r"missing\.yaml"):
        load_template(tmp_path / "missing.yaml")


def test_functions_merge_globals_like_sam(tmp_path: Path) -> None:
    # Given globals and two functions that override some of them
    path = _write(
        tmp_path,
        """
        Parameters:
          Slow: {Type: Number, Default: 25}
        Globals:
          Function:
            Runtime: python3.13
            Architectures: [x86_64]
            Layers: [!Ref Core]
            Timeout: 10
            Environment:
              Variables: {A: global, B: !Ref Slow}
        Resources:
          Plain:
            Type: AWS::Serverless::Function
            Properties: {CodeUri: src/, Handler: app.handler}
          Custom:
            Type: AWS::Serverless::Function
            Properties:
              CodeUri: src/
              Handler: app.handler
              Architectures: [arm64]
              Layers: [!Ref Extra]
              Timeout: !Ref Slow
              MemorySize: 512
              Environment:
                Variables: {B: !Sub "${Slow}", C: local}
        """,
    )
    # When reading the functions
    template = load_template(path)
    plain, custom = template.function("Plain"), template.function("Custom")
    # Then maps merge, lists concatenate (Architectures is replaced), scalars are overridden
    assert plain.code_uri == tmp_path / "src"
    assert (plain.timeout, plain.memory_size) == (10, 128)
    assert (custom.timeout, custom.memory_size) == (25, 512)
    assert custom.architectures == ["arm64"]
    assert custom.layers == [{"Ref": "Core"}, {"Ref": "Extra"}]
    assert custom.environment == {"A": "global", "B": {"Fn::Sub": "${Slow}"}, "C": "local"}
    assert [f.logical_id for f in template.functions()] == ["Plain", "Custom"]


def test_function_defaults_follow_lambda(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        Resources:
          Bare:
            Type: AWS::Serverless::Function
            Properties: {CodeUri: ., Handler: app.handler, Runtime: python3.13}
        """,
    )
    bare = load_template(path).function("Bare")
    assert (bare.timeout, bare.memory_size, bare.architectures) == (3, 128, ["x86_64"])
    assert (bare.environment, bare.layers, bare.events) == ({}, [], {})


def test_unknown_function_is_named_with_the_known_ones(template: Template) -> None:
    with pytest.raises(TemplateError, match=r"'Nope'.*ApiFunction"):
        template.function("Nope")


def test_a_function_without_local_code_is_refused(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        Resources:
          Remote:
            Type: AWS::Serverless::Function
            Properties: {CodeUri: s3://bucket/key.zip, Handler: app.handler, Runtime: python3.13}
        """,
    )
    with pytest.raises(TemplateError, match="Remote"):
        load_template(path).functions()


# ------------------------------------------------------------------------------- resolver


@pytest.fixture
def resolver() -> Resolver:
    return Resolver(
        refs={"UsersTable": "users", "Queue": "http://q"},
        attributes={
            "Queue.Arn": "arn:aws:sqs:us-east-1:123456789012:q",
            "Cache.Endpoint.Address": "cache.local",
            "Cache.Endpoint.Port": 6379,
        },
        parameters={"LogLevel": "INFO"},
        pseudo={"AWS::Region": "us-east-1", "AWS::StackName": "stack"},
        conditions={
            "IsInfo": {"Fn::Equals": [{"Ref": "LogLevel"}, "INFO"]},
            "IsNotInfo": {"Fn::Not": [{"Condition": "IsInfo"}]},
            "Both": {"Fn::And": [{"Condition": "IsInfo"}, {"Condition": "IsNotInfo"}]},
            "Either": {"Fn::Or": [{"Condition": "IsNotInfo"}, {"Condition": "IsInfo"}]},
            "Odd": {"Fn::Contains": [["a"], "a"]},
        },
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"Ref": "UsersTable"}, "users"),
        ({"Ref": "LogLevel"}, "INFO"),
        ({"Ref": "AWS::Region"}, "us-east-1"),
        ({"Fn::GetAtt": ["Queue", "Arn"]}, "arn:aws:sqs:us-east-1:123456789012:q"),
        ({"Fn::GetAtt": ["Cache", "Endpoint.Address"]}, "cache.local"),
        ({"Fn::GetAtt": "Cache.Endpoint.Port"}, 6379),
        (
            {"Fn::Sub": "rediss://${Cache.Endpoint.Address}:${Cache.Endpoint.Port}/0"},
            "rediss://cache.local:6379/0",
        ),
        ({"Fn::Sub": "${AWS::StackName}-${UsersTable}"}, "stack-users"),
        ({"Fn::Sub": "${!Literal} and ${!Cache.Endpoint}"}, "${Literal} and ${Cache.Endpoint}"),
        # A dollar before a variable is only a dollar: CloudFormation's escape is ${!Name}.
        ({"Fn::Sub": "$${LogLevel}"}, "$INFO"),
        (
            {"Fn::Sub": ["${UsersTable}/${Name}", {"Name": {"Ref": "LogLevel"}}]},
            "users/INFO",
        ),
        ({"Fn::Sub": ["${UsersTable}", {"UsersTable": "shadowed"}]}, "shadowed"),
        ({"Fn::Join": [":", [{"Ref": "UsersTable"}, "x", 1]]}, "users:x:1"),
        ({"Fn::Select": ["1", {"Fn::Split": [",", "a,b,c"]}]}, "b"),
        ({"Fn::Base64": "hi"}, "aGk="),
        ({"Outer": [{"Ref": "UsersTable"}, {"Plain": 1}]}, {"Outer": ["users", {"Plain": 1}]}),
        ({"Condition": "x", "Other": 1}, {"Condition": "x", "Other": 1}),
        ({"Fn::If": ["IsInfo", "yes", "no"]}, "yes"),
        ({"Fn::If": ["IsNotInfo", "yes", {"Ref": "UsersTable"}]}, "users"),
        ({"Fn::If": ["Both", "yes", "no"]}, "no"),
        ({"Fn::If": ["Either", "yes", "no"]}, "yes"),
        # AWS::NoValue removes what holds it, as in CloudFormation.
        ({"A": 1, "B": {"Fn::If": ["IsNotInfo", 2, {"Ref": "AWS::NoValue"}]}}, {"A": 1}),
        ([1, {"Fn::If": ["IsInfo", {"Ref": "AWS::NoValue"}, 2]}, 3], [1, 3]),
        ({"Fn::If": ["IsInfo", {"Ref": "AWS::NoValue"}, 1]}, None),
    ],
)
def test_resolver_resolves_intrinsics(resolver: Resolver, value: Any, expected: Any) -> None:
    assert resolver.resolve(value) == expected


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ({"Ref": "Missing"}, "Missing"),
        ({"Fn::GetAtt": ["Queue", "QueueName"]}, "Queue.QueueName"),
        ({"Fn::GetAtt": "Ghost.Arn"}, "Ghost.Arn"),
        ({"Fn::Sub": "${Nowhere}"}, "Nowhere"),
        ({"Fn::Sub": "${Ghost.Endpoint.Address}"}, "Ghost.Endpoint.Address"),
        ({"Fn::Sub": "${AWS::AccountId}"}, "AWS::AccountId"),
        ({"Fn::If": ["IsProd", "a", "b"]}, "Fn::If: no condition 'IsProd'"),
        ({"Fn::If": ["IsInfo", "a"]}, "Fn::If needs"),
        ({"Fn::If": ["Odd", "a", "b"]}, "cannot evaluate"),
        ({"Fn::Sub": ["${X}", {"X": ["a", "list"]}]}, "X"),
        ({"Fn::Select": [5, ["a"]]}, "5"),
    ],
)
def test_resolver_names_what_it_cannot_resolve(resolver: Resolver, value: Any, named: str) -> None:
    with pytest.raises(TemplateError, match=re.escape(named)):
        resolver.resolve(value)


def test_no_deployed_function_runs_in_local_mode(template: Template) -> None:
    # Local mode lets fetch jobs and webhooks reach loopback: only the emulator may set it.
    for spec in template.functions():
        assert "LAMBDALOOP_LOCAL" not in spec.environment, spec.logical_id


def test_functions_that_call_user_chosen_urls_run_outside_the_vpc(template: Template) -> None:
    # In the VPC (no NAT) they could reach only private addresses: the very ones refused.
    for logical_id in ("NotifyFunction", "JobsFunction"):
        assert "VpcConfig" not in template.function(logical_id).properties, logical_id


def test_the_results_bucket_is_private_encrypted_tls_only_and_expires(
    template: Template,
) -> None:
    # Given the bucket of job bodies and its policy
    bucket = template.resources["JobResultsBucket"]["Properties"]
    policy = template.resources["JobResultsBucketPolicy"]["Properties"]
    # Then no public access of any kind, objects are encrypted at rest and owned by the bucket
    assert set(bucket["PublicAccessBlockConfiguration"].values()) == {True}
    assert len(bucket["PublicAccessBlockConfiguration"]) == 4
    encryption = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert encryption[0]["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in {"AES256", "aws:kms"}
    assert bucket["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    # And plain HTTP is refused
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Deny"
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    # And bodies expire with the job records
    (rule,) = bucket["LifecycleConfiguration"]["Rules"]
    assert (rule["Status"], rule["Prefix"]) == ("Enabled", "jobs/")
    assert rule["ExpirationInDays"] == 30


def test_only_the_jobs_function_writes_bodies_and_only_the_api_reads_them(
    template: Template,
) -> None:
    # Given every function's S3 statements
    def s3_actions(function: str) -> set[str]:
        policies = template.resources[function]["Properties"].get("Policies", [])
        actions: set[str] = set()
        for policy in policies:
            for statement in policy.get("Statement", []) if isinstance(policy, dict) else []:
                listed = statement["Action"]
                for action in [listed] if isinstance(listed, str) else listed:
                    if action.startswith("s3:"):
                        actions.add(action)
        return actions

    # Then each has just what it does
    assert s3_actions("JobsFunction") == {"s3:PutObject"}
    assert s3_actions("ApiFunction") == {"s3:GetObject"}
    assert s3_actions("NotifyFunction") == set()


# ---------------------------------------------------------------- SnapStart


def test_snapstart_is_a_parameter_off_by_default(template: Template) -> None:
    parameter = template.body["Parameters"]["SnapStart"]
    assert (parameter["Type"], parameter["Default"]) == ("String", "false")
    assert sorted(parameter["AllowedValues"]) == ["false", "true"]
    assert template.body["Conditions"]["UseSnapStart"] == {
        "Fn::Equals": [{"Ref": "SnapStart"}, "true"]
    }


def test_the_api_function_restores_from_snapshots_only_when_asked(template: Template) -> None:
    chosen = {"SnapStart": template.resources["ApiFunction"]["Properties"]["SnapStart"]}

    assert _deployed(template, chosen) == {}
    assert _deployed(template, chosen, SnapStart="true") == {
        "SnapStart": {"ApplyOn": "PublishedVersions"}
    }
    # The other functions do not restore from snapshots
    others = [f for f in template.functions() if f.logical_id != "ApiFunction"]
    assert others
    assert not any("SnapStart" in f.properties for f in others)


def test_the_api_function_is_published_and_invoked_through_an_alias(template: Template) -> None:
    properties = template.resources["ApiFunction"]["Properties"]
    # SnapStart applies to published versions only: SAM publishes one per change of the code
    # (and points the HTTP API's integrations and permissions at the alias) ...
    assert properties["AutoPublishAlias"] == "live"
    # ... and per change of the parameter: a version's description cannot be updated, so
    # CloudFormation publishes a new version when the parameter changes it.
    assert _deployed(template, properties["VersionDescription"]) != _deployed(
        template, properties["VersionDescription"], SnapStart="true"
    )
    # Replaced versions (and their billed snapshots) go.
    assert properties["VersionDeletionPolicy"] == "Delete"


def test_snapstart_fits_the_api_function(template: Template) -> None:
    # Lambda refuses SnapStart with provisioned concurrency, EFS or over 512 MB of /tmp,
    # and supports it for Python 3.12 and later.
    function = template.function("ApiFunction")
    properties = function.properties
    assert "ProvisionedConcurrencyConfig" not in properties
    assert "FileSystemConfigs" not in properties
    assert properties.get("EphemeralStorage", {"Size": 512})["Size"] <= 512
    assert function.runtime == "python3.13"


_SAM_TRANSLATE = """
import json, sys

from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse


class NoManagedPolicies:
    def load(self):
        return {}


template = yaml_parse(open(sys.argv[1]).read())
for name, resource in template["Resources"].items():  # as `sam package` leaves them
    properties = resource.get("Properties", {})
    if resource["Type"] == "AWS::Serverless::Function" and "CodeUri" in properties:
        properties["CodeUri"] = f"s3://bucket/{name}.zip"
    if resource["Type"] == "AWS::Serverless::LayerVersion":
        properties["ContentUri"] = f"s3://bucket/{name}.zip"
print(json.dumps(transform(template, {"SnapStart": sys.argv[2]}, NoManagedPolicies())))
"""


@pytest.mark.parametrize("snapstart", ["true", "false"])
def test_sam_points_the_http_api_at_the_alias(snapstart: str) -> None:
    sam_python = Path(__file__).parents[2] / ".tools" / "sam" / "bin" / "python"
    if not sam_python.exists():
        pytest.skip("needs the SAM CLI's translator (make build installs it in .tools/)")
    # Given the template as SAM's transform turns it into CloudFormation
    done = subprocess.run(
        [str(sam_python), "-c", _SAM_TRANSLATE, str(TEMPLATE_PATH), snapstart],
        env={**os.environ, "AWS_DEFAULT_REGION": "eu-west-1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    resources = json.loads(done.stdout)["Resources"]

    # Then one version and the alias on it
    [version] = [k for k, r in resources.items() if r["Type"] == "AWS::Lambda::Version"]
    alias = resources["ApiFunctionAliaslive"]
    assert alias["Properties"]["FunctionVersion"] == {"Fn::GetAtt": [version, "Version"]}
    assert resources[version]["DeletionPolicy"] == "Delete"
    # And every route's integration and permission names the alias, not the function
    body = resources["HttpApi"]["Properties"]["Body"]
    uris = {
        json.dumps(operation["x-amazon-apigateway-integration"]["uri"])
        for methods in body["paths"].values()
        for operation in methods.values()
        if isinstance(operation, dict) and "x-amazon-apigateway-integration" in operation
    }
    assert len(uris) == 1
    assert "${ApiFunctionAliaslive}" in uris.pop()
    permissions = [
        r["Properties"]["FunctionName"]
        for r in resources.values()
        if r["Type"] == "AWS::Lambda::Permission"
        and r["Properties"]["Principal"] == "apigateway.amazonaws.com"
    ]
    assert permissions
    assert all(target == {"Ref": "ApiFunctionAliaslive"} for target in permissions)
