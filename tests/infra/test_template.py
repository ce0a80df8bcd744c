"""Checks on template.yaml (what gets deployed) and on the reader the emulator builds from it."""

from __future__ import annotations

import datetime
import re
import textwrap
from collections.abc import Iterator
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
        "JOBS_QUEUE_URL",
        "COMPUTE_QUEUE_URL",
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
}
POWERTOOLS_ENVIRONMENT = {
    "POWERTOOLS_SERVICE_NAME",
    "POWERTOOLS_METRICS_NAMESPACE",
    "POWERTOOLS_LOG_LEVEL",
    "LAMBDALOOP_STAGE",
}
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
    return {
        target
        for queue in template.of_type("AWS::SQS::Queue").values()
        if (redrive := queue.get("Properties", {}).get("RedrivePolicy"))
        and (target := _ref_target(redrive.get("deadLetterTargetArn"))) is not None
    }


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


def test_api_routes_reach_the_api_function(template: Template) -> None:
    routes = {
        (event["Properties"]["Method"], event["Properties"]["Path"])
        for event in template.function("ApiFunction").events.values()
        if event["Type"] == "HttpApi"
    }
    assert routes == {("GET", "/"), ("ANY", "/{proxy+}")}


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
        ({"Fn::If": ["IsProd", "a", "b"]}, "Fn::If"),
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
