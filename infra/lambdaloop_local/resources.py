"""The template's data resources, created in moto, and their local names and attributes.

Tables, queues (with their redrive policies), buckets and secrets come from template.yaml, never
from a second list, so the local stack cannot drift from what is deployed. Creation is
idempotent: a second run against the same moto finds what is there.
"""

from __future__ import annotations

import json
import logging
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lambdaloop_local.context import ACCOUNT_ID
from lambdaloop_local.template import Resolver, Template

__all__ = ["LocalResources", "Pseudo", "create_resources"]

logger = logging.getLogger(__name__)

_TABLE_KEYS = (
    "AttributeDefinitions",
    "KeySchema",
    "GlobalSecondaryIndexes",
    "LocalSecondaryIndexes",
)
# Queue attributes moto understands; the rest (SSE, policies) have no local meaning.
_QUEUE_ATTRIBUTES = {
    "VisibilityTimeout",
    "MessageRetentionPeriod",
    "DelaySeconds",
    "MaximumMessageSize",
    "ReceiveMessageWaitTimeSeconds",
    "FifoQueue",
    "ContentBasedDeduplication",
}


@dataclass(frozen=True, slots=True)
class Pseudo:
    stack_name: str = "lambdaloop-local"
    region: str = "us-east-1"

    def values(self) -> dict[str, str]:
        return {
            "AWS::StackName": self.stack_name,
            "AWS::Region": self.region,
            "AWS::AccountId": ACCOUNT_ID,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
        }


@dataclass(slots=True)
class LocalResources:
    """What ``Ref`` and ``Fn::GetAtt`` give for each resource, locally."""

    refs: dict[str, Any] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)
    #: Each secret's value by logical id, so that one made again (a restarted moto) keeps it.
    secret_values: dict[str, str] = field(default_factory=dict, repr=False)

    def resolver(self, template: Template, pseudo: Pseudo) -> Resolver:
        return Resolver(
            self.refs,
            self.attributes,
            template.parameter_defaults(),
            pseudo.values(),
            conditions=template.body.get("Conditions") or {},
        )


def _physical_name(logical_id: str, pseudo: Pseudo, suffix: str = "") -> str:
    # CloudFormation's own scheme (stack-LogicalId-RANDOM), without the random part.
    return f"{pseudo.stack_name}-{logical_id}{suffix}"


def create_resources(
    template: Template,
    client: Callable[[str], Any],
    pseudo: Pseudo,
    cache_host: str,
    cache_port: int,
    *,
    previous: LocalResources | None = None,
) -> LocalResources:
    """Create the template's tables, queues and buckets with ``client(service)`` (boto3
    clients pointed at moto), and return the values their intrinsics resolve to locally.

    ``previous`` is what an earlier run against the same stack made: a secret that is gone
    (moto restarted) is made again with its earlier ARN and value."""
    local = LocalResources()
    for logical_id in template.resources:
        # Every resource can be Ref'd; data resources get their real values below.
        local.refs[logical_id] = _physical_name(logical_id, pseudo)
    for logical_id in template.of_type("AWS::ElastiCache::ServerlessCache"):
        local.attributes[f"{logical_id}.Endpoint.Address"] = cache_host
        local.attributes[f"{logical_id}.Endpoint.Port"] = str(cache_port)
    resolver = local.resolver(template, pseudo)
    _create_tables(template, client("dynamodb"), resolver, local, pseudo)
    _create_queues(template, client("sqs"), resolver, local, pseudo)
    _create_buckets(template, client("s3"), resolver, local, pseudo)
    _create_secrets(template, client("secretsmanager"), resolver, local, pseudo, previous=previous)
    return local


def _create_tables(
    template: Template, client: Any, resolver: Resolver, local: LocalResources, pseudo: Pseudo
) -> None:
    existing = set(client.list_tables().get("TableNames", []))
    for logical_id, resource in template.of_type("AWS::DynamoDB::Table").items():
        props = resolver.resolve(resource.get("Properties") or {})
        name = props.get("TableName") or _physical_name(logical_id, pseudo)
        stream = _stream_specification(props)
        if name not in existing:
            request = {key: props[key] for key in _TABLE_KEYS if key in props}
            if stream:
                request["StreamSpecification"] = stream
            client.create_table(
                TableName=name, BillingMode=props.get("BillingMode", "PAY_PER_REQUEST"), **request
            )
            client.get_waiter("table_exists").wait(TableName=name)
            ttl = props.get("TimeToLiveSpecification")
            if ttl and str(ttl.get("Enabled", "false")).lower() == "true":
                # moto then deletes the expired items, as DynamoDB's TTL does (moto_patches).
                client.update_time_to_live(
                    TableName=name,
                    TimeToLiveSpecification={
                        "Enabled": True,
                        "AttributeName": ttl["AttributeName"],
                    },
                )
        arn = f"arn:aws:dynamodb:{pseudo.region}:{ACCOUNT_ID}:table/{name}"
        local.refs[logical_id] = name
        local.attributes[f"{logical_id}.Arn"] = arn
        if stream:
            local.attributes[f"{logical_id}.StreamArn"] = _stream_arn(client, name, stream)
        logger.debug("table %s -> %s", logical_id, name)


def _stream_specification(props: dict[str, Any]) -> dict[str, Any] | None:
    """The API's StreamSpecification for a template's: CloudFormation enables the stream by
    giving a StreamViewType alone, where CreateTable also wants StreamEnabled."""
    view_type = (props.get("StreamSpecification") or {}).get("StreamViewType")
    return {"StreamEnabled": True, "StreamViewType": view_type} if view_type else None


def _stream_arn(client: Any, name: str, stream: dict[str, Any]) -> str:
    """The table's stream ARN; a table made before the template asked for a stream gets one.

    The ARN ends with the stream's creation time, so it can only be read back from moto.
    """
    table = client.describe_table(TableName=name)["Table"]
    if "LatestStreamArn" not in table:
        table = client.update_table(TableName=name, StreamSpecification=stream)["TableDescription"]
    arn: str = table["LatestStreamArn"]
    return arn


def _create_queues(
    template: Template, client: Any, resolver: Resolver, local: LocalResources, pseudo: Pseudo
) -> None:
    queues = template.of_type("AWS::SQS::Queue")
    # Dead-letter queues first: a redrive policy needs its target's ARN.
    ordered = sorted(
        queues, key=lambda lid: "RedrivePolicy" in (queues[lid].get("Properties") or {})
    )
    for logical_id in ordered:
        # The resolver reads `local` live, so each queue sees the ARNs made before it.
        props = resolver.resolve(queues[logical_id].get("Properties") or {})
        fifo = str(props.get("FifoQueue", "false")).lower() == "true"
        name = props.get("QueueName") or _physical_name(logical_id, pseudo, ".fifo" if fifo else "")
        attributes = {
            key: str(value).lower() if isinstance(value, bool) else str(value)
            for key, value in props.items()
            if key in _QUEUE_ATTRIBUTES
        }
        if "RedrivePolicy" in props:
            attributes["RedrivePolicy"] = json.dumps(props["RedrivePolicy"])
        url = client.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        arn = f"arn:aws:sqs:{pseudo.region}:{ACCOUNT_ID}:{name}"
        local.refs[logical_id] = url
        local.attributes.update(
            {
                f"{logical_id}.Arn": arn,
                f"{logical_id}.QueueName": name,
                f"{logical_id}.QueueUrl": url,
            }
        )


def _create_buckets(
    template: Template, client: Any, resolver: Resolver, local: LocalResources, pseudo: Pseudo
) -> None:
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    for logical_id, resource in template.of_type("AWS::S3::Bucket").items():
        props = resolver.resolve(resource.get("Properties") or {})
        name = props.get("BucketName") or _physical_name(logical_id, pseudo).lower()
        if name not in existing:
            client.create_bucket(Bucket=name)
        local.refs[logical_id] = name
        local.attributes.update(
            {
                f"{logical_id}.Arn": f"arn:aws:s3:::{name}",
                f"{logical_id}.DomainName": f"{name}.s3.amazonaws.com",
            }
        )


def _create_secrets(
    template: Template,
    client: Any,
    resolver: Resolver,
    local: LocalResources,
    pseudo: Pseudo,
    *,
    previous: LocalResources | None,
) -> None:
    """Secrets with their ``SecretString``, or a value made as ``GenerateSecretString`` asks
    (length, punctuation); an existing secret keeps its value (the receivers know it), and so
    does one made again after moto lost it, with its ARN (moto's ``_custom_id_`` tag sets the
    ARN's random suffix)."""
    for logical_id, resource in template.of_type("AWS::SecretsManager::Secret").items():
        props = resolver.resolve(resource.get("Properties") or {})
        name = props.get("Name") or _physical_name(logical_id, pseudo)
        known = previous.secret_values.get(logical_id) if previous else None
        try:
            arn = client.describe_secret(SecretId=name)["ARN"]
            value = known or client.get_secret_value(SecretId=name)["SecretString"]
        except client.exceptions.ResourceNotFoundException:
            value = (
                known
                or props.get("SecretString")
                or _generate(props.get("GenerateSecretString") or {})
            )
            request: dict[str, Any] = {"Name": name, "SecretString": value}
            earlier = previous.refs.get(logical_id) if previous else None
            if isinstance(earlier, str) and earlier.startswith("arn:aws:secretsmanager:"):
                suffix = earlier.rsplit("-", 1)[1]
                request["Tags"] = [{"Key": "_custom_id_", "Value": suffix}]
            arn = client.create_secret(**request)["ARN"]
        local.refs[logical_id] = arn
        local.attributes[f"{logical_id}.Id"] = arn
        local.secret_values[logical_id] = value


def _generate(spec: dict[str, Any]) -> str:
    alphabet = string.ascii_letters + string.digits
    if str(spec.get("ExcludePunctuation", "false")).lower() != "true":
        alphabet += "!#$%&()*+,-.:;<=>?@[]^_{|}~"
    length = int(spec.get("PasswordLength", 32))
    return "".join(secrets.choice(alphabet) for _ in range(length))
