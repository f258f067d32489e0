"""``account_flapping``: an account moving back to a number it left, or changing number again and again.

Keyed by account (``<sender_id>|<account_id>``, from ``sms.bindings``). It
keeps the account's last ``MAX_MOVES`` moves within ``FLAP_HORIZON_MS``, and
tells the number part, as ``NumberBinding`` facts, which account arrived at
and which left each number. Sensitivity moves how many changes page
(``FLAP_LEVELS``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, NamedTuple

from smsstream.detection.alerts import Finding
from smsstream.detection.base import BUCKET_MS, Part
from smsstream.detection.controls import HIGH, LOW, NORMAL, Subject
from smsstream.detection.rebind.evidence import keep_in_time_order, shown_account
from smsstream.detection.rebind.facts import NUMBER_BINDINGS, NumberBinding
from smsstream.records import BINDINGS
from smsstream.vocabulary import ACCOUNT, ACCOUNT_FLAPPING, CRITICAL, DAY_MS, HOUR_MS, REBIND_ANOMALY, WARNING

FLAP_HORIZON_MS = 2 * DAY_MS
MAX_MOVES = 8
#: By sensitivity level: the fewest changes within the horizon that page with a return to a number the
#: account had left, and without one.
FLAP_LEVELS = {LOW: (3, 4), NORMAL: (2, 3), HIGH: (2, 2)}


def _account_key(b) -> str:
    return f"{b.sender_id}|{b.account_id}"


class Move(NamedTuple):
    """An account's change of number, numbers as pseudonyms."""

    ts: int
    #: None for a first binding
    old_pn: str | None
    new_pn: str
    event_id: str
    channel: str | None
    device_id: str | None


@dataclass(slots=True)
class AccountState:
    #: moves, oldest first
    moves: list = field(default_factory=list)
    pending: dict = field(default_factory=dict)  # bucket start -> latest binding ts in it
    last_ts: int = 0


class AccountRebinds(Part):
    """Per account: its recent moves; flags one that keeps changing or returns to a number it left."""

    name = "rebind_account"
    inputs: ClassVar = {BINDINGS: _account_key}
    emits = (NUMBER_BINDINGS,)

    def process(self, topic: str, key: str, b: Any):
        state = self.entities.get(key) or AccountState()
        old_pn, new_pn = b.old_number, b.new_number  # pseudonyms already (``intake``)
        move = Move(b.ts, old_pn, new_pn, b.event_id, b.channel, b.device_id)
        state.moves.append(move)
        keep_in_time_order(state.moves)
        state.moves = [m for m in state.moves if m.ts >= b.ts - FLAP_HORIZON_MS][-MAX_MOVES:]
        state.last_ts = max(state.last_ts, b.ts)
        if b.old_number is not None:
            start = self.mark(key, b.ts)
            state.pending[start] = max(state.pending.get(start, 0), b.ts)
        self.save(key, state)
        facts = [(NUMBER_BINDINGS, NumberBinding(b.ts, b.new_number, True, b.sender_id, b.account_id, old_pn,
                                                 b.event_id, b.channel, b.device_id))]
        if b.old_number is not None:
            facts.append((NUMBER_BINDINGS, NumberBinding(b.ts, b.old_number, False, b.sender_id, b.account_id,
                                                         new_pn, b.event_id, b.channel, b.device_id)))
        return facts

    def close(self, key: str, start: int, end: int) -> Iterable[Finding]:
        state = self.entities.get(key)
        if state is None or state.pending.pop(start, None) is None:
            return ()
        moves = [m for m in state.moves if end - FLAP_HORIZON_MS <= m.ts < end]
        changes = [m for m in moves if m.old_pn is not None]
        level: str = NORMAL
        ids: tuple[str, ...] = ()
        if self.ctx.controls.active:
            shown_key = shown_account(self.ctx, key)
            level, ids = self.ctx.controls.level(Subject(REBIND_ANOMALY, ACCOUNT_FLAPPING, shown_key.partition("|")[0],
                                                         None, ACCOUNT, shown_key), end)
        with_return, without = FLAP_LEVELS[level]
        if len(changes) < with_return:
            return ()
        held: list[str] = []
        returns = 0
        for m in moves:
            old, new = m.old_pn, m.new_pn
            if old is not None and old not in held:
                held.append(old)
            if new in held:
                returns += 1
            if new not in held:
                held.append(new)
        if returns == 0 and len(changes) < without:
            return ()
        shown = shown_account(self.ctx, key)
        sender_id, _, account_id = shown.partition("|")
        span_h = (changes[-1].ts - changes[0].ts) / HOUR_MS
        numbers = []
        for m in changes:
            for n in (m.old_pn, m.new_pn):
                if n not in numbers:
                    numbers.append(n)
        score = min(3.0 * len(changes) + 4.0 * returns, 300.0)
        severity = CRITICAL if len(changes) >= 4 or returns >= 2 else WARNING
        back = f", {returns} time(s) back to a number it had left" if returns else ""
        return [Finding(
            kind=REBIND_ANOMALY,
            reason=ACCOUNT_FLAPPING,
            severity=severity,
            entity_type=ACCOUNT,
            entity_id=shown,
            window_start=changes[0].ts - changes[0].ts % BUCKET_MS,
            window_end=end,
            observed=len(changes),
            expected=1.0,
            score=score,
            summary=(
                f"account {account_id} at {sender_id} changed number {len(changes)} times in {span_h:.1f} h"
                f"{back} (a customer changes number about once)"
            ),
            evidence={
                "numbers": numbers,
                "event_ids": [m.event_id for m in changes],
                "channels": sorted({m.channel for m in changes if m.channel}),
                "devices": sorted({m.device_id for m in changes if m.device_id}),
            },
            sender_id=sender_id,
            last_seen=changes[-1].ts,
            controls=ids,
        )]

    def idle_since(self, state: AccountState) -> int:
        # Moves older than the flapping horizon say nothing; keep the state no longer than that.
        return state.last_ts + FLAP_HORIZON_MS - self.ctx.idle_ms
