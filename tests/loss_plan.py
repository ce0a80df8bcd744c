"""The message mix of the loss tests (tests/unit/test_loss_memory.py on the in-memory queue,
tests/integration/test_loss_moto.py on moto): one plan, so both test the same property."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

from lambdaloop.queue import Envelope

__all__ = ["POISON", "Kind", "Planned", "plan"]

Kind = Literal["good", "slow", "not-json", "no-handler", "fails"]
POISON: frozenset[Kind] = frozenset({"not-json", "no-handler", "fails"})


@dataclass(frozen=True)
class Planned:
    """One message to send: its body, what it is, and its envelope id (none if not JSON)."""

    body: str
    kind: Kind
    envelope_id: str | None

    @property
    def poison(self) -> bool:
        return self.kind in POISON


def plan(total: int, seed: int, prefix: str) -> list[Planned]:
    """``total`` messages in random order: 5 % poison (a third each: not JSON, an envelope
    type without a handler, a payload the handler always fails), 1 % slow on their first
    receive, 3 % duplicates of good or slow envelopes (at least one slow; half sent right
    after the original, as a producer's retried send, half at any later point)."""
    rng = random.Random(seed)
    poison, slow, duplicates = total * 5 // 100, total // 100, total * 3 // 100
    messages: list[Planned] = []
    for n in range(total - duplicates):
        envelope_id = f"{prefix}-{n}"
        if n < poison:
            messages.append(
                [
                    Planned(f'{{"not json": {n}', "not-json", None),
                    Planned(
                        Envelope("nobody", envelope_id, {}).to_json(), "no-handler", envelope_id
                    ),
                    Planned(
                        Envelope("work", envelope_id, {"fail": True}).to_json(),
                        "fails",
                        envelope_id,
                    ),
                ][n % 3]
            )
        elif n < poison + slow:
            body = Envelope("work", envelope_id, {"slow": True}).to_json()
            messages.append(Planned(body, "slow", envelope_id))
        else:
            body = Envelope("work", envelope_id, {}).to_json()
            messages.append(Planned(body, "good", envelope_id))
    rng.shuffle(messages)
    originals = rng.sample([m for m in messages if m.kind == "slow"], 1) + rng.sample(
        [m for m in messages if m.kind == "good"], duplicates - 1
    )
    position = {id(m): n for n, m in enumerate(messages)}
    copies_before: defaultdict[int, list[Planned]] = defaultdict(list)  # len(messages): last
    for n, original in enumerate(originals):
        after = position[id(original)] + 1
        copies_before[after if n % 2 == 0 else rng.randint(after, len(messages))].append(original)
    return [
        m
        for n, message in enumerate([*messages, None])
        for m in [*copies_before[n], message]
        if m is not None
    ]
