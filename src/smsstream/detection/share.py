"""A part that watches one share per entity: hits among trials, against the entity's own baseline.

Used by ``non_borrower_spike`` (non-borrower sends among loan-obligation
sends) and ``delivery_failure_spike`` (blocked or failed receipts among final
receipts), per sender, template or carrier.

Per closed bucket, the trailing windows (1, 5, 15 and 60 min) are tested:
how unlikely is this many hits in this many trials if the entity's share
were ``RATIO`` times its baseline plus ``MARGIN`` (``binomial_tail_score``)?
The tolerance absorbs the honest day-to-day wobble of a share (a 1 %
stale-data rate that is 1.6 % one afternoon), the tail score makes one
threshold fit every size of sender, and the short windows give fast
detection while the long ones catch slow leaks. A bucket whose windows look
abnormal is held out of the baseline; if the entity stays abnormal for
``ACCEPT_AFTER_MS`` the baseline takes the new level (and the alert resolves)
instead of paging for weeks. A new entity does not page in its first
``COLD_MS`` unless the evidence is overwhelming (``COLD_FIRE_SCORE``).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, NamedTuple

from smsstream.detection.base import BUCKET_MS, Finding, Part
from smsstream.detection.facts import RoutineCount
from smsstream.detection.stats import BucketRing, ShareBaseline, binomial_exact_tail_score, binomial_tail_score
from smsstream.vocabulary import CARRIER, CRITICAL, HOUR_MS, MINUTE_MS, TEMPLATE, WARNING

#: Recent hits kept per entity as evidence.
SAMPLES = 20


#: Hits kept per bucket as evidence: a fixed pseudo-random pick (by hash of message id), whatever the arrival order.
SAMPLES_PER_BUCKET = 2


def _rank(sample: list) -> int:
    return zlib.crc32(sample[1].encode())


def keep_sample(samples: dict, ts: int, message_id: str | None, label: str | None) -> None:
    """Remember a hit as possible evidence, at most ``SAMPLES_PER_BUCKET`` per bucket.

    Which hits are kept depends only on the set of hits in the bucket, not on
    their arrival order, so replay and the worker show the same evidence.
    """
    start = ts - ts % BUCKET_MS
    kept = samples.get(start)
    sample = [ts, message_id, label]
    if kept is None:
        samples[start] = [sample]
    elif len(kept) < SAMPLES_PER_BUCKET:
        kept.append(sample)
        kept.sort(key=_rank)
    elif _rank(sample) < _rank(kept[-1]):
        kept[-1] = sample
        kept.sort(key=_rank)


def window_samples(samples: dict, since: int, until: int | None = None) -> list:
    """The latest kept hits in ``[since, until)`` by event time, at most ``SAMPLES``."""
    out = [s for start, kept in samples.items() if start >= since - BUCKET_MS and (until is None or start < until)
           for s in kept if s[0] >= since and (until is None or s[0] < until)]
    return sorted(out)[-SAMPLES:]


@dataclass(slots=True, frozen=True)
class Share:
    """One share an entity is judged on."""

    reason: str
    #: share assumed for an entity with no history, and how many trials that assumption weighs
    prior: float
    prior_weight: float
    #: words for the summary: "<hits_word> of <n> <trials_word>"
    hits_word: str


class Verdict(NamedTuple):
    """The most surprising window of one share in a closed bucket."""

    score: float
    #: index of the share in ``SharePart.shares``
    column: int
    window_ms: int
    #: the baseline share the window was tested against
    expected: float
    #: trials and hits in the window
    n: float
    k: float
    #: the slice of the entity it was found in (``count(sub=...)``), None for the whole entity
    sub: str | None = None


class Slice(NamedTuple):
    """A slice of an entity counted on its own (a sender's traffic on one carrier)."""

    ring: BucketRing
    baselines: list


@dataclass(slots=True)
class ShareState:
    """Everything one entity keeps: recent buckets, a baseline per share, evidence."""

    #: per bucket: trials, then hits of each share
    ring: BucketRing = field(default_factory=BucketRing)
    baselines: list = field(default_factory=list)
    first_ts: int = 0
    last_ts: int = 0
    #: per share, the hits kept as evidence: {bucket start: [[ts, message_id, label], ...]} (``keep_sample``)
    samples: list = field(default_factory=list)
    sender_id: str | None = None
    template_id: str | None = None
    #: slices counted on their own: name -> Slice
    subs: dict | None = None


def _count(ring: BucketRing, idx: int, hit: int, trials: int = 1) -> None:
    if idx > ring.head:
        ring.advance(idx)
    slot = idx % ring.SIZE
    cols = ring.cols
    cols[0][slot] += trials
    if hit:
        cols[hit][slot] += 1


class SharePart(Part):
    """Subclass per (kind, entity type): fill in the class attributes and ``process`` (which calls ``count``)."""

    kind: ClassVar[str] = ""
    entity_type: ClassVar[str] = ""
    shares: ClassVar[tuple[Share, ...]] = ()
    trials_word: ClassVar[str] = "events"
    #: what one entity keeps: ``ShareState``, or a subclass with more
    state_class: ClassVar[type[ShareState]] = ShareState

    WINDOWS_MS: ClassVar[tuple[int, ...]] = (1 * MINUTE_MS, 5 * MINUTE_MS, 15 * MINUTE_MS, 60 * MINUTE_MS)
    HALF_LIFE_MS: ClassVar[int] = 72 * HOUR_MS
    ACCEPT_AFTER_MS: ClassVar[int] = 6 * HOUR_MS
    RATIO: ClassVar[float] = 1.5
    MARGIN: ClassVar[float] = 0.005
    MIN_EXCESS: ClassVar[float] = 3.0
    #: Windows with at most this many hits are scored with the exact binomial tail, not its Chernoff bound.
    EXACT_MAX_HITS: ClassVar[int] = 0
    FIRE_SCORE: ClassVar[float] = 5.0
    HOLD_SCORE: ClassVar[float] = 3.0
    COLD_MS: ClassVar[int] = 3 * HOUR_MS
    COLD_FIRE_SCORE: ClassVar[float] = 30.0
    #: Most slices (``count(sub=...)``) kept per entity; 0 for none.
    MAX_SUBS: ClassVar[int] = 0
    #: Whether slices are judged on their own (else they only explain the entity's figures).
    JUDGE_SUBS: ClassVar[bool] = True

    def __init__(self, ctx):
        super().__init__(ctx)
        self.counters = {}
        self._widths = tuple(w // BUCKET_MS for w in self.WINDOWS_MS)

    # --- per-event -------------------------------------------------------------

    def new_state(self, ts: int) -> ShareState:
        return self.state_class(ring=BucketRing(1 + len(self.shares)), baselines=[ShareBaseline() for _ in self.shares],
                          first_ts=ts, last_ts=ts, samples=[{} for _ in self.shares])

    def count(self, key: str, ts: int, hit: int, message_id: str | None, label: str | None,
              sender_id: str | None, template_id: str | None, sub: str | None = None,
              trials: int = 1, first_ts: int | None = None) -> None:
        """Count one trial for ``key``; ``hit`` is 0, or 1 + the index of the share it is a hit of.

        ``sub`` names a slice of the entity judged on its own as well (a
        sender's traffic on one carrier), when the class sets ``MAX_SUBS``.
        ``trials`` > 1 counts a ``RoutineCount`` (no hits) whose earliest
        event was at ``first_ts``. What the state keeps does not depend on the
        order trials arrive in within a bucket: first and last times are the
        extremes, and sender and template are those of the latest trial.
        """
        state = self.entities.get(key)
        if first_ts is None:
            first_ts = ts
        if state is None:
            state = self.new_state(first_ts)
        elif first_ts < state.first_ts:
            state.first_ts = first_ts
        start = self.mark(key, ts)
        idx = start // BUCKET_MS
        _count(state.ring, idx, hit, trials)
        if sub is not None and self.MAX_SUBS:
            subs = state.subs
            if subs is None:
                subs = state.subs = {}
            slice_ = subs.get(sub)
            if slice_ is None and len(subs) < self.MAX_SUBS:
                slice_ = subs[sub] = Slice(BucketRing(1 + len(self.shares)), [ShareBaseline() for _ in self.shares])
            if slice_ is not None:
                _count(slice_.ring, idx, hit, trials)
        if hit:
            keep_sample(state.samples[hit - 1], ts, message_id, label)
        if ts >= state.last_ts:
            state.last_ts = ts
            if sender_id is not None:
                state.sender_id = sender_id
            if template_id is not None:
                state.template_id = template_id
        self.entities[key] = state

    def count_routine(self, key: str, routine: RoutineCount, sub: str | None = None) -> None:
        """Count a producer's routine facts of one bucket (no hits, so no evidence)."""
        self.count(key, routine.ts, 0, None, None, routine.sender_id, routine.template_id, sub,
                   routine.count, routine.first_ts)

    # --- per closed bucket -------------------------------------------------------

    def close(self, key: str, start: int, end: int) -> Iterable[Finding]:
        state: ShareState | None = self.entities.get(key)
        if state is None:
            return ()
        oldest = end - self.WINDOWS_MS[-1]
        for samples in state.samples:
            if samples and next(iter(samples)) < oldest:
                for bucket in [b for b in samples if b < oldest]:
                    del samples[bucket]
        best = self._judge(state.ring, state.baselines, start, end)
        if state.subs and self.JUDGE_SUBS:
            idx = start // BUCKET_MS
            for sub, (ring, baselines) in state.subs.items():
                if idx > ring.head or not ring.cols[0][idx % ring.SIZE]:
                    continue  # no new data in this slice: nothing new to judge or learn
                verdict = self._judge(ring, baselines, start, end)
                if verdict is not None and (best is None or verdict.score > best.score):
                    best = verdict._replace(sub=sub)
        self.save(key, state)
        if best is None:
            return ()
        score, column, window_ms, expected, n, k, sub = best
        cold = end - state.first_ts < self.COLD_MS
        threshold = self.COLD_FIRE_SCORE if cold else self.FIRE_SCORE
        firing = score >= threshold
        dedup_key = f"{self.kind}/{self.entity_type}/{self.entity_id(key)}"
        if firing and not self.may_fire(state, column, end, window_ms, expected, n, k):
            firing = False
        if not firing and not self.book.is_firing(dedup_key):
            return ()
        observed = k / n
        severity = WARNING
        if not cold and score >= 2 * threshold and observed >= max(5 * expected, expected + 0.2):
            severity = CRITICAL
        share = self.shares[column]
        evidence = self.evidence(state, column, end - window_ms, int(k), int(n), end)
        if sub is not None:
            evidence[self.sub_name()] = sub
        return (Finding(
            kind=self.kind,
            reason=share.reason,
            severity=severity,
            entity_type=self.entity_type,
            entity_id=self.entity_id(key),
            window_start=end - window_ms,
            window_end=end,
            observed=observed,
            expected=expected,
            score=score,
            summary=self.summary(key, state, share, int(k), int(n), observed, expected, end, window_ms, cold, sub),
            evidence=evidence,
            sender_id=state.sender_id if self.entity_type != CARRIER else None,
            template_id=state.template_id if self.entity_type == TEMPLATE else None,
            # bounded by the window, so data already read beyond it (arrival timing) does not show
            last_seen=min(state.last_ts, end),
            firing=firing,
        ),)

    def _judge(self, ring: BucketRing, baselines: list, start: int, end: int) -> Verdict | None:
        """Test every share over every window; train the baselines with the closed bucket.

        Returns the most surprising share's ``Verdict`` if it reaches ``HOLD_SCORE``.
        """
        idx = start // BUCKET_MS
        if ring.most_hits(idx + 1, self._widths[-1]) < self.MIN_EXCESS:
            # too few hits in the widest window for any window to reach MIN_EXCESS: just learn
            if ring.head - ring.SIZE < idx <= ring.head:
                slot = idx % ring.SIZE
                cols = ring.cols
                trials = cols[0][slot]
                if trials:
                    half_life = self.HALF_LIFE_MS
                    for column, baseline in enumerate(baselines, 1):
                        baseline.learn(end, trials, cols[column][slot], half_life)
            return None
        current = ring.get(idx)
        sums = ring.sums(end // BUCKET_MS, self._widths)
        best: Verdict | None = None
        for column, share in enumerate(self.shares):
            baseline = baselines[column]
            expected = baseline.get(share.prior, share.prior_weight)
            tested = min(expected * self.RATIO + self.MARGIN, 0.999)
            top_score, top_window = 0.0, 0
            for wi, counts in enumerate(sums):
                n, k = counts[0], counts[column + 1]
                if n <= 0 or k - n * expected < self.MIN_EXCESS:
                    continue
                if k <= self.EXACT_MAX_HITS:
                    score = binomial_exact_tail_score(k, n, tested)
                else:
                    score = binomial_tail_score(k, n, tested)
                if score > top_score:
                    top_score, top_window = score, wi
            abnormal = top_score >= self.HOLD_SCORE
            if current[0]:
                if abnormal:
                    if baseline.hold(end, current[0], current[column + 1], self.HALF_LIFE_MS, self.ACCEPT_AFTER_MS):
                        name = f"{self.kind}_new_normal_accepted"
                        self.counters[name] = self.counters.get(name, 0) + 1
                        continue
                else:
                    baseline.learn(end, current[0], current[column + 1], self.HALF_LIFE_MS)
            if abnormal and (best is None or top_score > best.score):
                n, k = sums[top_window][0], sums[top_window][column + 1]
                best = Verdict(top_score, column, self.WINDOWS_MS[top_window], expected, n, k)
        return best

    # --- hooks ---------------------------------------------------------------------

    def entity_id(self, key: str) -> str:
        return key

    def may_fire(self, state: ShareState, column: int, end: int, window_ms: int, expected: float,
                 n: float, k: float) -> bool:
        """A last word before a finding fires (e.g. a carrier's rise that is really one sender's)."""
        return True

    def summary(self, key: str, state: ShareState, share: Share, k: int, n: int, observed: float,
                expected: float, end: int, window_ms: int, cold: bool, sub: str | None = None) -> str:
        who = f"{self.entity_type} {self.entity_id(key)}"
        if self.entity_type == TEMPLATE and state.sender_id:
            who += f" (sender {state.sender_id})"
        if sub is not None:
            who += f" on {self.sub_name()} {sub}"
        seen_for = (min(state.last_ts, end) - state.first_ts) // MINUTE_MS
        new = f"; new {self.entity_type}, first seen {seen_for} min ago" if cold else ""
        return (
            f"{self.kind} {share.reason}: {who}: {k} of {n} {self.trials_word} in the last "
            f"{window_ms // MINUTE_MS} min were {share.hits_word} ({observed:.1%}), "
            f"usual {expected:.1%}{new}. {self.why(share)}"
        )

    def why(self, share: Share) -> str:
        return ""

    def evidence(self, state: ShareState, column: int, since: int, k: int, n: int, until: int | None = None) -> dict:
        hits = window_samples(state.samples[column], since, until)
        labels: dict[str, int] = {}
        for s in hits:
            if s[2] is not None:
                labels[s[2]] = labels.get(s[2], 0) + 1
        return {
            "hits": k,
            "trials": n,
            "message_ids": [s[1] for s in hits],
            self.label_name(): labels,
        }

    def label_name(self) -> str:
        return "labels"

    def sub_name(self) -> str:
        return "slice"

    def idle_since(self, state: Any) -> int:
        return state.last_ts


# ``BUCKET_MS`` is the finest window; keep them aligned.
assert all(w % BUCKET_MS == 0 for w in SharePart.WINDOWS_MS)
