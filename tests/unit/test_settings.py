from __future__ import annotations

import pytest

from api.settings import ApiSettings
from lambdaloop.errors import SettingsError
from lambdaloop.settings import (
    AwsSettings,
    RedisSettings,
    RuntimeSettings,
    get_redis_settings,
    reset_settings,
)


def test_defaults_apply_when_variables_are_absent() -> None:
    settings = AwsSettings.from_env({})

    assert settings.max_attempts == 3
    assert settings.region is None
    assert settings.connect_timeout_s == 1.0


def test_a_missing_required_variable_is_named() -> None:
    with pytest.raises(SettingsError) as caught:
        RedisSettings.from_env({})

    assert caught.value.problems == {"REDIS_URL": "is required but not set"}
    assert "REDIS_URL" in str(caught.value)


def test_every_problem_is_reported_at_once() -> None:
    environ = {
        "USERS_TABLE": "",
        "NOTIFY_QUEUE_URL": "ftp://x",
        "LAMBDALOOP_HEALTH_TIMEOUT_S": "soon",
    }

    with pytest.raises(SettingsError) as caught:
        ApiSettings.from_env(environ)

    assert set(caught.value.problems) == {
        "USERS_TABLE",
        "NOTIFICATIONS_TABLE",
        "NOTIFY_QUEUE_URL",
        "JOBS_TABLE",
        "IDEMPOTENCY_TABLE",
        "LAMBDALOOP_HEALTH_TIMEOUT_S",
    }
    assert "must be a number" in caught.value.problems["LAMBDALOOP_HEALTH_TIMEOUT_S"]
    assert "'soon'" in caught.value.problems["LAMBDALOOP_HEALTH_TIMEOUT_S"]


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("LAMBDALOOP_REDIS_TIMEOUT_S", "-1", "between"),
        ("LAMBDALOOP_REDIS_MAX_CONNECTIONS", "1.5", "whole number"),
        ("REDIS_URL", "http://cache:6379", "scheme redis or rediss"),
        ("REDIS_URL", "redis://", "and a host"),
    ],
)
def test_invalid_values_are_named_with_the_reason(variable: str, value: str, fragment: str) -> None:
    environ = {"REDIS_URL": "redis://cache:6379/0", variable: value}

    with pytest.raises(SettingsError) as caught:
        RedisSettings.from_env(environ)

    assert fragment in caught.value.problems[variable]


@pytest.mark.parametrize(("raw", "expected"), [("true", True), ("1", True), ("off", False)])
def test_booleans(raw: str, expected: bool) -> None:
    assert RuntimeSettings.from_env({"LAMBDALOOP_LOCAL": raw}).local_mode is expected


def test_a_bad_boolean_is_an_error() -> None:
    with pytest.raises(SettingsError, match="LAMBDALOOP_LOCAL: must be true or false"):
        RuntimeSettings.from_env({"LAMBDALOOP_LOCAL": "maybe"})


def test_settings_are_read_once_until_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://first:6379/0")
    reset_settings()
    first = get_redis_settings()
    monkeypatch.setenv("REDIS_URL", "redis://second:6379/0")

    assert get_redis_settings() is first

    reset_settings()
    assert get_redis_settings().url == "redis://second:6379/0"
    reset_settings()


@pytest.mark.parametrize(
    ("environ", "region"),
    [
        ({}, None),
        ({"AWS_DEFAULT_REGION": "eu-west-1"}, "eu-west-1"),
        ({"AWS_REGION": "us-east-2", "AWS_DEFAULT_REGION": "eu-west-1"}, "us-east-2"),
        ({"AWS_REGION": " ", "AWS_DEFAULT_REGION": "eu-west-1"}, "eu-west-1"),
    ],
)
def test_a_field_takes_the_first_of_its_variables_that_is_set(
    environ: dict[str, str], region: str | None
) -> None:
    assert AwsSettings.from_env(environ).region == region


def test_the_metrics_namespace_falls_back_to_the_service_and_tracing_is_off_by_default() -> None:
    settings = RuntimeSettings.from_env({"POWERTOOLS_SERVICE_NAME": "billing"})

    assert (settings.service, settings.metrics_namespace) == ("billing", "billing")
    assert settings.tracing is False
    assert RuntimeSettings.from_env({"POWERTOOLS_TRACE_DISABLED": "false"}).tracing is True


def test_settings_are_built_directly_with_the_declared_defaults() -> None:
    settings = RedisSettings(url="redis://cache:6379/0")

    assert (settings.socket_timeout_s, settings.max_connections) == (0.1, 64)
    with pytest.raises(TypeError):
        RedisSettings()  # the URL has no default
