"""Schemathesis hooks for the fuzz run (loaded by its CLI through ``hooks`` in
schemathesis.toml): two rules of the contract that JSON Schema cannot state, kept before
each request so that a case made as valid is valid. Every other rule stays the
generator's to break."""

from __future__ import annotations

import itertools
import re
from collections.abc import MutableMapping
from typing import Any

import schemathesis

from api.jobs.models import SHA256_MAX_CHAINS, SHA256_MAX_ROUNDS, SHA256_MAX_TOTAL_ROUNDS

_KEY = re.compile(r"^[\x20-\x7e]{1,255}$")
_keys = itertools.count()


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """Before every request of every phase (the coverage phase makes its cases without the
    generation hooks)."""
    if case.headers is not None:
        _a_key_per_request(case.headers)
    case.body = _within_the_total_rounds(case.body)


def _a_key_per_request(headers: MutableMapping[str, Any]) -> None:
    """A valid Idempotency-Key is made unique per request: the generator repeats keys
    across cases with other bodies, which the contract answers with 422 (a key names one
    request), a rule of state the schema cannot state. Replays are tested in
    test_idempotent_posts; invalid keys are left for the generator to send."""
    key = headers.get("Idempotency-Key")
    if isinstance(key, str) and _KEY.match(key):
        headers["Idempotency-Key"] = f"{key[:240]}#{next(_keys)}"


def _within_the_total_rounds(body: Any) -> Any:
    """A sha256_chain job's chains * rounds must be at most 10**8, a rule between two fields
    (the schema says it in words; the server answers 422). Generated bodies that break only
    that rule get fewer rounds."""
    if not (isinstance(body, dict) and body.get("kind") == "sha256_chain"):
        return body
    params = body.get("params")
    if not isinstance(params, dict):
        return body
    chains, rounds = _integer(params.get("chains")), _integer(params.get("rounds"))
    if (
        chains is not None
        and rounds is not None
        and 1 <= chains <= SHA256_MAX_CHAINS
        and 1 <= rounds <= SHA256_MAX_ROUNDS
        and chains * rounds > SHA256_MAX_TOTAL_ROUNDS
    ):
        return {**body, "params": {**params, "rounds": SHA256_MAX_TOTAL_ROUNDS // chains}}
    return body


def _integer(value: Any) -> int | None:
    """``value`` as JSON Schema's integer reads it (668.0 is one), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if float(value).is_integer() else None
