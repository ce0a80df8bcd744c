"""The real SAM CLI against the local stack, as the README's "With sam local" has a user run it:
``lambdaloop dev --services-only`` on an address containers reach, ``lambdaloop env-vars`` for
sam's --env-vars, then ``sam local invoke`` (the API: health, a POST and a GET of a user; an
SQS consumer) and ``sam local start-api`` on the built template.

It needs Docker, a Lambda Python 3.13 image that is already there (the official
public.ecr.aws/lambda/python:3.13, or the one named by LAMBDALOOP_SAM_IMAGE: nothing is
pulled), the SAM CLI (``make build`` installs it in .tools/) and a build for this machine's
architecture (``make build-x86_64`` on x86, ``make build`` on arm64; or LAMBDALOOP_SAM_TEMPLATE
names a built template). Without one of them every test is skipped, saying which; without
Docker that takes no time (CI has none).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import queue
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from dev_server import template_copy
from lambdaloop_local.services import free_port

ROOT = Path(__file__).parents[2]
EVENTS = ROOT / "infra" / "events"
CLI = [sys.executable, "-m", "lambdaloop_local.cli"]
DEV_SERVICES = ["dev", "--services-only", "--aws-port", "0"]
#: The region the local stack makes its resources in (moto keeps them per region).
REGION = "us-east-1"
#: The name functions reach the stack by: Docker Desktop's, or on Linux sam's --add-host.
CONTAINER_HOST = "host.docker.internal"
ENV_VARS = ["env-vars", "--host", CONTAINER_HOST]
OFFICIAL_IMAGE = "public.ecr.aws/lambda/python:3.13"
#: Bounds on waiting for processes (not timings under test): a first `sam local` builds its
#: runtime image, and every invocation is a cold start in a new container.
START_TIMEOUT_S = 90
SAM_TIMEOUT_S = 300
STOP_TIMEOUT_S = 30
DOCKER_TIMEOUT_S = 20
_SIOCGIFADDR = 0x8915  # Linux ioctl: an interface's IPv4 address


@dataclass(frozen=True)
class SamSetup:
    sam: str
    image: str
    built_template: Path
    #: Where the dev stack listens: docker0's address on Linux, loopback with Docker Desktop.
    listen: str
    #: sam's options that give containers CONTAINER_HOST (none with Docker Desktop).
    add_host: tuple[str, ...]


def _machine_architecture() -> str:
    machine = platform.machine().lower()
    return "arm64" if machine in {"arm64", "aarch64"} else "x86_64"


def _sam_cli() -> str | None:
    local = ROOT / ".tools" / "sam" / "bin" / "sam"
    return str(local) if local.exists() else shutil.which("sam")


def _built_template() -> Path:
    """The built template for this machine: Lambda runs it natively (an arm64 build under
    emulation on x86 is too slow to import the API within its timeout)."""
    if named := os.environ.get("LAMBDALOOP_SAM_TEMPLATE"):
        return Path(named).resolve()
    architecture = _machine_architecture()
    folder = "build-x86_64" if architecture == "x86_64" else "build"
    return ROOT / ".aws-sam" / folder / "template.yaml"


def _built_template_problem(path: Path) -> str | None:
    """Why the built template cannot serve here, if it cannot."""
    if not path.exists():
        target = "make build-x86_64" if _machine_architecture() == "x86_64" else "make build"
        return f"no built template at {path}: run `{target}` (or set LAMBDALOOP_SAM_TEMPLATE)"
    body = yaml.load(path.read_text(), Loader=_IgnoringTags)
    function = (body.get("Globals") or {}).get("Function") or {}
    variables = (function.get("Environment") or {}).get("Variables") or {}
    if "AWS_ENDPOINT_URL" not in variables:
        return f"{path} predates the AWS_ENDPOINT_URL declaration: build it again"
    architectures = function.get("Architectures") or ["x86_64"]
    if architectures != [_machine_architecture()]:
        return f"{path} is built for {architectures}, this machine is {_machine_architecture()}"
    return None


class _IgnoringTags(yaml.SafeLoader):
    """Reads a built template without knowing CloudFormation's short tags."""


_IgnoringTags.add_multi_constructor("!", lambda loader, suffix, node: None)


def _docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=DOCKER_TIMEOUT_S, check=False
    )


def _image() -> tuple[str | None, str]:
    """The Lambda Python 3.13 image to run (never pulled), or None and why there is none."""
    if named := os.environ.get("LAMBDALOOP_SAM_IMAGE"):
        candidates = [named]
    else:
        candidates = [f"{OFFICIAL_IMAGE}-{_machine_architecture()}", OFFICIAL_IMAGE]
    for image in candidates:
        if _docker("image", "inspect", image).returncode == 0:
            return image, ""
    return None, (
        f"no Lambda Python 3.13 image here ({', '.join(candidates)}): pull {OFFICIAL_IMAGE}, "
        "or build one offline (see the README) and name it in LAMBDALOOP_SAM_IMAGE"
    )


def _interface_address(name: str) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            packed = fcntl.ioctl(
                probe.fileno(), _SIOCGIFADDR, struct.pack("256s", name[:15].encode())
            )
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


def _bridge_address() -> str | None:
    """The host's address on Docker's default bridge (docker0), which its containers reach."""
    inspect = _docker("network", "inspect", "bridge")
    if inspect.returncode != 0:
        return None
    [network] = json.loads(inspect.stdout)
    for config in (network.get("IPAM") or {}).get("Config") or []:
        if gateway := config.get("Gateway"):
            return str(gateway)
    name = (network.get("Options") or {}).get("com.docker.network.bridge.name", "docker0")
    return _interface_address(name)


def _bindable(address: str) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def setup() -> SamSetup:
    sam = _sam_cli()
    if sam is None:
        pytest.skip("no SAM CLI (make build installs it in .tools/sam)")
    if shutil.which("docker") is None:
        pytest.skip("no docker command: sam local needs Docker")
    built = _built_template()
    if problem := _built_template_problem(built):
        pytest.skip(problem)
    if _docker("info").returncode != 0:
        pytest.skip("docker info fails: no Docker daemon answers")
    image, why = _image()
    if image is None:
        pytest.skip(why)
    bridge = _bridge_address()
    if bridge is not None and _bindable(bridge):
        # Linux: containers reach the host on docker0; host-gateway names that address.
        return SamSetup(sam, image, built, bridge, ("--add-host", f"{CONTAINER_HOST}:host-gateway"))
    # Docker Desktop: its VM forwards host.docker.internal to the host's loopback.
    return SamSetup(sam, image, built, "127.0.0.1", ())


class LinePump:
    """The lines a process writes to one of its pipes, readable with a bounded wait."""

    def __init__(self, stream: Any) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self.thread.start()

    def _pump(self, stream: Any) -> None:
        for line in stream:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text: str, timeout: float) -> None:
        while True:
            line = self.lines.get(timeout=timeout)
            if line is None:
                raise AssertionError(f"the process ended before {text!r}: {''.join(self.seen)}")
            self.seen.append(line)
            if text in line:
                return


def _stop(process: subprocess.Popen[str], pump: LinePump, signum: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(signum)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_S)
    pump.thread.join(STOP_TIMEOUT_S)  # it ends at EOF, now that the process is gone
    assert process.stdout is not None
    process.stdout.close()


@dataclass(frozen=True)
class Stack:
    setup: SamSetup
    env_vars: Path
    folder: Path

    def sam(self, *args: str) -> list[str]:
        """A sam local command line with what every one of them needs here."""
        return [
            self.setup.sam,
            "local",
            *args,
            "--template",
            str(self.setup.built_template),
            "--env-vars",
            str(self.env_vars),
            "--region",
            REGION,
            *self.setup.add_host,
            "--invoke-image",
            self.setup.image,
            "--skip-pull-image",
        ]

    def invoke(self, function: str, event: dict[str, Any]) -> Any:
        """``sam local invoke``: the function's response."""
        path = self.folder / f"event-{function}-{free_port()}.json"
        path.write_text(json.dumps(event))
        result = subprocess.run(
            self.sam("invoke", function, "--event", str(path)),
            cwd=self.folder,
            env=sam_environment(),
            capture_output=True,
            text=True,
            timeout=SAM_TIMEOUT_S,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-4000:]
        # sam prints the response alone on stdout (its logs and the function's go to stderr).
        return json.loads(result.stdout.strip().splitlines()[-1])


def sam_environment() -> dict[str, str]:
    """sam's environment: fake credentials, which it hands to the functions (whatever this
    machine has must never reach a container), and no telemetry."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {
        **inherited,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "SAM_CLI_TELEMETRY": "0",
    }


@pytest.fixture(scope="module")
def stack(setup: SamSetup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`lambdaloop dev --services-only --host <address>` and its --env-vars file."""
    folder = tmp_path_factory.mktemp("sam-local")
    # A template of its own: its dev's state (.lambdaloop/) is apart from any other
    # `lambdaloop dev` running on this checkout.
    template = template_copy(folder)
    dev = subprocess.Popen(
        [*CLI, "--template", str(template), *DEV_SERVICES, "--host", setup.listen],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    pump = LinePump(dev.stdout)
    try:
        pump.wait_for("Press Ctrl-C", START_TIMEOUT_S)
        env_vars = folder / "env.json"
        subprocess.run(
            [*CLI, "--template", str(template), *ENV_VARS, "--output", str(env_vars)],
            cwd=ROOT,
            capture_output=True,
            timeout=START_TIMEOUT_S,
            check=True,
        )
        yield Stack(setup, env_vars, folder)
    finally:
        _stop(dev, pump)  # SIGTERM: it stops the redis-server it started


def _event(name: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return event


def test_sam_local_invoke_answers_the_health_check(stack: Stack) -> None:
    response = stack.invoke("ApiFunction", _event("api-health.json"))

    assert response["statusCode"] == 200
    health = json.loads(response["body"])
    assert health["status"] == "ok"
    assert health["checks"] == {"dynamodb": "ok", "redis": "ok", "queue": "ok"}


def test_sam_local_invoke_creates_a_user_then_reads_it(stack: Stack) -> None:
    # Given a user created through sam local (the event carries a verified caller's claims)
    created = stack.invoke("ApiFunction", _event("users-create.json"))
    assert created["statusCode"] == 201, created
    user = json.loads(created["body"])
    # When reading it back, another invocation in another container
    get = _event("users-get.json")
    get["rawPath"] = get["requestContext"]["http"]["path"] = f"/users/{user['id']}"
    get["pathParameters"] = {"user_id": str(user["id"])}
    read = stack.invoke("ApiFunction", get)
    # Then it is there: both reached the same local DynamoDB
    assert read["statusCode"] == 200, read
    assert json.loads(read["body"]) == user


def test_sam_local_invoke_runs_a_consumer_on_an_sqs_batch(stack: Stack) -> None:
    event = _event("sqs-notify-deliver.json")
    [deliver, garbage] = event["Records"]
    assert garbage["body"] == "this is not an envelope"

    response = stack.invoke("NotifyFunction", event)

    # The delivery of an unknown notification is dropped (it read the local table to know);
    # the record that is no envelope alone is reported failed.
    assert response == {"batchItemFailures": [{"itemIdentifier": garbage["messageId"]}]}
    assert deliver["messageId"] != garbage["messageId"]


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=SAM_TIMEOUT_S) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@contextlib.contextmanager
def start_api(stack: Stack, port: int) -> Iterator[str]:
    process = subprocess.Popen(
        stack.sam("start-api", "--host", "127.0.0.1", "--port", str(port)),
        cwd=stack.folder,
        env=sam_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    pump = LinePump(process.stdout)
    try:
        # Flask's banner: the API listens from then on.
        pump.wait_for(f"Running on http://127.0.0.1:{port}", SAM_TIMEOUT_S)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(process, pump, signal.SIGINT)  # what Ctrl-C does: sam removes its containers


def test_sam_local_start_api_serves_requests(stack: Stack) -> None:
    with start_api(stack, free_port()) as api:
        health = _get(f"{api}/health")
        root = _get(f"{api}/")

    assert health[0] == 200, health
    assert health[1]["status"] == "ok"
    assert root[0] == 200, root
    assert root[1]["service"] == "lambdaloop"


def test_the_skip_reasons_name_what_is_missing(tmp_path: Path) -> None:
    # Runs everywhere (no Docker needed): a missing or stale build is named, with the fix.
    missing = tmp_path / "none" / "template.yaml"
    assert "make build" in str(_built_template_problem(missing))
    stale = tmp_path / "template.yaml"
    stale.write_text(
        "Globals:\n  Function:\n    Architectures: [x86_64]\n"
        "    Environment: {Variables: {LOG: !Ref LogLevel}}\nResources: {}\n"
    )
    assert "AWS_ENDPOINT_URL" in str(_built_template_problem(stale))
