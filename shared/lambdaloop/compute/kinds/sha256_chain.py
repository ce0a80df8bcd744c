"""``sha256_chain``: iterated SHA-256, sequential along a chain, parallel across chains.

Params ``{"seed": str, "chains": int, "rounds": int}``. Chain ``i`` starts from
``sha256(f"{seed}:{i}".encode()).digest()`` and is hashed ``rounds`` more times; its result
is the hex of the last digest. Work ``{"seed", "rounds", "start", "stop"}`` is a range of
chain indexes, so a split never cuts a chain; a partial maps ``str(i)`` to chain ``i``'s
hex digest (merging disjoint maps is associative) and the job's result is the list of hex
digests in chain order.

Bounds: ``seed`` 1..256 characters; ``rounds <= 10**7`` (~3.5 s for one chain at the
~2.9 M rounds/s measured on the development machine); ``chains <= 1000`` so the result
(~75 bytes of JSON a chain) stays far below DynamoDB's 400 KB item; and
``chains * rounds <= 10**8`` (~35 s of CPU), so the largest job fits a Lambda timeout even
unsplit. By default a chunk gets ~10**6 rounds (~0.35 s), whole chains only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from lambdaloop.compute.kinds.base import (
    Kind,
    ParamsError,
    Work,
    check_keys,
    int_param,
    split_range,
    str_param,
)

__all__ = [
    "CHUNK_ROUNDS",
    "KIND",
    "MAX_CHAINS",
    "MAX_ROUNDS",
    "MAX_SEED",
    "MAX_TOTAL_ROUNDS",
    "chain",
    "finish",
    "run",
    "validate",
]

MAX_SEED = 256
MAX_CHAINS = 1000
MAX_ROUNDS = 10**7
MAX_TOTAL_ROUNDS = 10**8
CHUNK_ROUNDS = 10**6
"""Rounds per chunk (in whole chains) when the request gives no chunk count."""


def validate(params: Mapping[str, Any]) -> Work:
    params = check_keys(params, ("seed", "chains", "rounds"))
    seed = str_param(params, "seed", min_len=1, max_len=MAX_SEED)
    chains = int_param(params, "chains", low=1, high=MAX_CHAINS)
    rounds = int_param(params, "rounds", low=1, high=MAX_ROUNDS)
    if chains * rounds > MAX_TOTAL_ROUNDS:
        raise ParamsError(
            "params.rounds",
            f"chains * rounds must be at most {MAX_TOTAL_ROUNDS}, not {chains * rounds}",
        )
    return {"seed": seed, "rounds": rounds, "start": 0, "stop": chains}


def chain(seed: str, index: int, rounds: int) -> str:
    """The hex digest at the end of chain ``index``."""
    sha256 = hashlib.sha256
    digest = sha256(f"{seed}:{index}".encode()).digest()
    for _ in range(rounds):
        digest = sha256(digest).digest()
    return digest.hex()


def run(work: Work) -> dict[str, str]:
    seed, rounds = work["seed"], work["rounds"]
    return {str(i): chain(seed, i, rounds) for i in range(work["start"], work["stop"])}


def _merge(a: dict[str, str], b: dict[str, str]) -> dict[str, str]:
    return {**a, **b}


def finish(partial: dict[str, str]) -> list[str]:
    """The hex digests in chain order."""
    return [partial[key] for key in sorted(partial, key=int)]


def _default_chunks(work: Work) -> int:
    rounds: int = (work["stop"] - work["start"]) * work["rounds"]
    return max(1, -(-rounds // CHUNK_ROUNDS))


KIND = Kind(
    name="sha256_chain",
    validate=validate,
    split=split_range,
    run=run,
    reduce=_merge,
    default_chunks=_default_chunks,
    finish=finish,
)
