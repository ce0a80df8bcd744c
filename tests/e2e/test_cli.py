"""The emulator's CLI end to end, as a user runs it: ``lambdaloop dev``, ``invoke`` and
``token``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from dev_server import (
    CLI,
    ROOT,
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    DevServer,
    running_dev,
    template_copy,
    token,
)
from lambdaloop_local.auth import KEY_FILE_NAME, LOCAL_AUDIENCE, LOCAL_ISSUER
from lambdaloop_local.services import free_port

EVENTS = ROOT / "infra" / "events"
#: Bounds on waiting for processes (not timings under test).


def _refuses(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def dev() -> Iterator[DevServer]:
    with running_dev() as server:
        yield server


def test_dev_serves_the_api_and_stops_cleanly(dev: DevServer) -> None:
    # Given a running `lambdaloop dev`, which says where its services are
    state_file = ROOT / ".lambdaloop" / "dev.json"
    state = json.loads(state_file.read_text())
    assert state["pid"] == dev.process.pid
    redis_port = urlsplit(state["redis_url"]).port
    aws_port = urlsplit(state["aws_endpoint"]).port
    assert redis_port is not None
    assert aws_port is not None
    assert any(state["redis_url"] in line for line in dev.banner)

    # When a client asks for the health of the stack (a public route), and for a path that is
    # no route of the app (with a token: the gateway refuses anonymous callers)
    status, health = dev.get("/health")
    missing_status, problem = dev.get("/missing", token("alice"))

    # Then every dependency is up, and errors are problem+json
    assert status == 200
    assert health["checks"] == {"dynamodb": "ok", "redis": "ok", "queue": "ok"}
    assert (missing_status, problem["status"]) == (404, 404)

    # And SIGTERM stops everything it started
    dev.process.send_signal(signal.SIGTERM)
    assert dev.process.wait(STOP_TIMEOUT_S) == 0
    assert _refuses(dev.port)
    assert _refuses(redis_port)
    assert _refuses(aws_port)
    assert not state_file.exists()


def test_invoke_attaches_to_a_running_dev(dev: DevServer) -> None:
    event = ROOT / "infra" / "events" / "api-health.json"

    result = subprocess.run(
        [*CLI, "invoke", "ApiFunction", "-e", str(event)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=True,
    )

    response = json.loads(result.stdout)
    assert response["statusCode"] == 200
    assert json.loads(response["body"])["checks"]["redis"] == "ok"
    assert "using the running lambdaloop dev" in result.stderr


def test_invoke_takes_sam_locals_env_vars_file(dev: DevServer, tmp_path: Path) -> None:
    event = ROOT / "infra" / "events" / "api-root.json"
    env_vars = tmp_path / "env.json"
    env_vars.write_text(json.dumps({"ApiFunction": {"POWERTOOLS_SERVICE_NAME": "renamed"}}))

    result = subprocess.run(
        [*CLI, "invoke", "ApiFunction", "-e", str(event), "--env-vars", str(env_vars)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=True,
    )

    assert json.loads(json.loads(result.stdout)["body"])["service"] == "renamed"


def test_invoke_without_dev_runs_its_own_stack(tmp_path: Path) -> None:
    env = {**os.environ}
    event = ROOT / "infra" / "events" / "api-not-found.json"
    # A copy of the template elsewhere: no running dev can be found beside it.
    template = template_copy(tmp_path)

    result = subprocess.run(
        [*CLI, "--template", str(template), "invoke", "ApiFunction", "-e", str(event)],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        env=env,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    response = json.loads(result.stdout)
    assert response["statusCode"] == 404
    assert json.loads(response["body"])["title"] == "Not Found"


def test_invoke_of_an_unknown_function_fails_with_its_name() -> None:
    result = subprocess.run(
        [*CLI, "invoke", "NoSuchFunction"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=False,
    )

    assert result.returncode != 0
    assert "NoSuchFunction" in result.stderr


def test_a_token_minted_before_dev_starts_opens_its_api(tmp_path: Path) -> None:
    # Given tokens minted for a stack that has not run yet (its key is made by the first)
    template = template_copy(tmp_path)
    alice = token("alice", template=template)
    jobs_reader = token(
        "alice", "--scope", "lambdaloop/jobs.read", "--ttl", "600", template=template
    )
    key = tmp_path / ".lambdaloop" / KEY_FILE_NAME
    assert key.stat().st_mode & 0o777 == 0o600

    # When `lambdaloop dev` runs that template, and callers come with and without them
    with running_dev(template) as dev:
        anonymous = dev.request("/users/batch?user_ids=1")
        authorized = dev.request("/users/batch?user_ids=1", alice)
        not_scoped = dev.request("/users/1", jobs_reader)
        public = dev.request("/health")

    # Then the token opens the API; anonymous callers get API Gateway's 401, and a token
    # without the route's scope its 403, from the gateway itself
    assert (anonymous[0], anonymous[2]) == (401, {"message": "Unauthorized"})
    assert anonymous[1]["www-authenticate"] == "Bearer"
    assert authorized[0] == 200
    assert (not_scoped[0], not_scoped[2]) == (403, {"message": "Forbidden"})
    assert public[0] == 200
    assert any(LOCAL_ISSUER in line and LOCAL_AUDIENCE in line for line in dev.banner)


#: What GET /users/{user_id} may answer once the function runs: the user, none, or (on a
#: machine loaded enough that moto misses the function's production timeouts, which the
#: template does not let ``-n`` raise) the 503 of a dependency that did not answer in time.
#: These tests check who the function runs as, not how fast moto is.
RAN = (200, 404, 503)


def _invoke(event: dict[str, Any], folder: Path) -> subprocess.CompletedProcess[str]:
    path = folder / "event.json"
    path.write_text(json.dumps(event))
    return subprocess.run(
        [*CLI, "invoke", "ApiFunction", "-e", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=False,
    )


def test_invoke_checks_the_token_an_event_carries(dev: DevServer, tmp_path: Path) -> None:
    # Given the GET /users/{user_id} event, carrying a token in its authorization header
    def carrying(authorization: str) -> dict[str, Any]:
        event: dict[str, Any] = json.loads((EVENTS / "users-get.json").read_text())
        event["headers"]["authorization"] = authorization
        return event

    # When it is invoked with a bad token, a token without the route's scope, and a good one
    bad = _invoke(carrying("Bearer not-a-token"), tmp_path)
    unscoped = _invoke(
        carrying(f"Bearer {token('carol', '--scope', 'lambdaloop/jobs.read')}"), tmp_path
    )
    good = _invoke(carrying(f"Bearer {token('carol')}"), tmp_path)

    # Then the refusals are the gateway's answers and the function is not invoked
    refusal = json.loads(bad.stdout)
    assert bad.returncode == 1
    assert (refusal["statusCode"], refusal["body"]) == (401, '{"message":"Unauthorized"}')
    assert 'error="invalid_token"' in refusal["headers"]["www-authenticate"]
    assert "not invoked" in bad.stderr
    assert unscoped.returncode == 1
    assert json.loads(unscoped.stdout)["statusCode"] == 403
    # And the good token's claims replace the event's: the function runs as carol
    assert good.returncode == 0, good.stderr
    assert "sub carol" in good.stderr
    assert json.loads(good.stdout)["statusCode"] in RAN


def test_invoke_passes_an_events_claims_like_sam_local_invoke(
    dev: DevServer, tmp_path: Path
) -> None:
    # An event file without a token is what the gateway delivered: its claims are used as
    # they are (the shipped events carry alice's).
    event: dict[str, Any] = json.loads((EVENTS / "users-get.json").read_text())
    assert event["requestContext"]["authorizer"]["jwt"]["claims"]["sub"] == "alice"

    result = _invoke(event, tmp_path)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["statusCode"] in RAN
    assert "JWT authorizer" not in result.stderr


def test_services_only_serves_no_api_and_env_vars_points_sam_local_at_it(tmp_path: Path) -> None:
    # Given `lambdaloop dev --services-only` (beside a template copy: its own state folder)
    template = template_copy(tmp_path)
    server = DevServer(free_port(), template, ["--services-only"])
    try:
        server.wait_until_ready()
        # Then it runs moto and Redis, and no API server nor event source pollers
        banner = "".join(server.banner)
        assert "services only" in banner
        assert "  API " not in banner
        assert "  SQS " not in banner
        assert "  DynamoDB " not in banner
        assert _refuses(server.port)
        state = json.loads((tmp_path / ".lambdaloop" / "dev.json").read_text())
        assert state["api"] is None
        # When writing sam local's --env-vars for it
        out = tmp_path / "env.json"
        result = subprocess.run(
            [*CLI, "--template", str(template), "env-vars", "--host", "box", "-o", str(out)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
            check=False,
        )
        # Then every function's endpoint is the dev's moto, by the name given, and the output
        # says what else sam local needs
        assert result.returncode == 0, result.stderr
        assert result.stdout == ""
        assert "--region us-east-1" in result.stderr
        variables = json.loads(out.read_text())
        endpoint = f"http://box:{urlsplit(state['aws_endpoint']).port}"
        assert {v["AWS_ENDPOINT_URL"] for v in variables.values()} == {endpoint}
        assert set(variables) == {
            "ApiFunction",
            "NotifyFunction",
            "JobsFunction",
            "ComputeFunction",
            "RelayFunction",
        }
        # And the services answer: invoke attaches to them
        event = EVENTS / "api-health.json"
        health = subprocess.run(
            [*CLI, "--template", str(template), "invoke", "ApiFunction", "-e", str(event)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
            check=False,
        )
        assert health.returncode == 0, health.stderr
        assert "using the running lambdaloop dev" in health.stderr
        assert json.loads(health.stdout)["statusCode"] == 200
    finally:
        server.stop()
    assert not (tmp_path / ".lambdaloop" / "dev.json").exists()


def test_env_vars_without_a_running_dev_says_how_to_start_one(tmp_path: Path) -> None:
    template = template_copy(tmp_path)

    result = subprocess.run(
        [*CLI, "--template", str(template), "env-vars"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=False,
    )

    assert result.returncode != 0
    assert "lambdaloop dev --services-only --host" in result.stderr
    assert result.stdout == ""
