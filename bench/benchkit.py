"""What the benchmark scripts share: paths, percentiles, a far-off Lambda context, claims."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from lambdaloop_local.context import LocalContext

ROOT = Path(__file__).resolve().parent.parent
API_CODE_URI = ROOT / "functions" / "api"


def import_paths(*extra: Path) -> None:
    """The layer, the local emulator and ``extra`` (a function's code) importable, as
    Lambda and ``make dev`` lay them out."""
    for path in (ROOT / "infra", ROOT / "shared", *extra):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))


def quiet_logs() -> None:
    """No INFO lines from moto's server (werkzeug) or the emulator, so the table stays
    readable."""
    for name in ("werkzeug", "moto", "botocore", "lambdaloop_local", "lambdaloop"):
        logging.getLogger(name).setLevel(logging.WARNING)


def p90(values: Sequence[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


def lambda_context(function_name: str, timeout_s: float = 3600.0) -> LocalContext:
    """A context whose deadline is far beyond the run."""
    from lambdaloop_local.context import LocalContext

    return LocalContext(
        function_name=function_name,
        memory_limit_in_mb=1024,
        aws_request_id=str(uuid.uuid4()),
        deadline_ms=int(time.time() * 1000 + timeout_s * 1000),
    )


def with_claims(event: dict[str, Any], tenant: str) -> dict[str, Any]:
    """``event`` (an HTTP API payload 2.0 event) as API Gateway's JWT authorizer passes it on
    once it verified a token of ``tenant`` (what tests/support.py's ``with_claims`` does)."""
    event["requestContext"]["authorizer"] = {
        "jwt": {
            "claims": {"sub": tenant, "iss": "https://issuer.bench/", "scope": "all"},
            "scopes": None,
        }
    }
    return event


T = TypeVar("T")


class BenchError(RuntimeError):
    """What was measured did not answer or end as expected: the figures would mean nothing."""


def with_handler_output_captured(name: str, measure: Callable[[], T]) -> T | None:
    """``measure()``, with what the handler writes to stdout (its JSON logs and EMF metrics)
    kept out of the table; when it fails, that output's last lines go to stderr with the
    error (a :class:`BenchError` returns None, anything else is raised again)."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            return measure()
    except BenchError as exc:
        print(
            f"{name}: {exc}\nthe handler's last output:\n{captured.getvalue()[-4000:]}",
            file=sys.stderr,
        )
        return None
    except BaseException:
        print(f"the handler's last output:\n{captured.getvalue()[-4000:]}", file=sys.stderr)
        raise


def api_event(
    method: str,
    path: str,
    tenant: str | None,
    *,
    query: str = "",
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) event, built by the local emulator's own code,
    with the claims of ``tenant`` as the gateway's JWT authorizer passes them on (None: no
    claims, as a route without an authorizer)."""
    from lambdaloop_local.apigw import HttpRoute, build_event

    sent = {"host": "bench.local", "user-agent": "lambdaloop-bench/1"}
    if body:
        sent["content-type"] = "application/json"
    event = build_event(
        HttpRoute.parse("ANY", "/{proxy+}", "ApiFunction"),
        {"proxy": path.lstrip("/")} if path != "/" else {},
        method=method,
        path=path,
        raw_query=query,
        headers={**sent, **(headers or {})},
        body=body,
        source_ip="127.0.0.1",
    )
    return event if tenant is None else with_claims(event, tenant)


def checked(response: dict[str, Any], expected: int, what: str) -> Any:
    """The decoded JSON body; BenchError when the status is not ``expected``."""
    if response.get("statusCode") != expected:
        raise BenchError(
            f"{what} answered {response.get('statusCode')}, not {expected}: "
            f"{str(response.get('body'))[:500]}"
        )
    body = response.get("body")
    return json.loads(body) if body else None
