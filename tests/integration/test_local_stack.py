"""The local stack builds its resources and environments from template.yaml."""

from __future__ import annotations

import json

from lambdaloop_local.stack import LocalStack


def test_tables_come_from_the_template(local_stack: LocalStack) -> None:
    dynamodb = local_stack.aws_client("dynamodb")
    name = local_stack.resources.refs["UsersTable"]

    table = dynamodb.describe_table(TableName=name)["Table"]

    keys = {k["AttributeName"]: k["KeyType"] for k in table["KeySchema"]}
    assert keys == {"pk": "HASH", "sk": "RANGE"}


def test_queues_come_with_their_redrive_policy(local_stack: LocalStack) -> None:
    sqs = local_stack.aws_client("sqs")
    url = local_stack.resources.refs["NotifyQueue"]

    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]

    redrive = json.loads(attributes["RedrivePolicy"])
    assert (
        redrive["deadLetterTargetArn"]
        == local_stack.resources.attributes["NotifyDeadLetterQueue.Arn"]
    )
    assert int(redrive["maxReceiveCount"]) == 5
    assert attributes["VisibilityTimeout"] == "180"


def test_the_api_function_environment_points_at_the_local_stack(local_stack: LocalStack) -> None:
    env = local_stack.function_environment("ApiFunction")

    assert env["USERS_TABLE"] == local_stack.resources.refs["UsersTable"]
    assert env["NOTIFY_QUEUE_URL"] == local_stack.resources.refs["NotifyQueue"]
    # ElastiCache is TLS-only (rediss://); the local Redis is plain TCP.
    assert env["REDIS_URL"] == local_stack.redis_url
    assert env["AWS_ENDPOINT_URL"] == local_stack.aws_endpoint
    assert env["POWERTOOLS_SERVICE_NAME"] == "lambdaloop"
    assert env["_HANDLER"] == "api.handler.handler"


def test_creating_resources_again_is_harmless(local_stack: LocalStack) -> None:
    before = dict(local_stack.resources.refs)

    again = local_stack.create_resources()

    assert again.refs == before
