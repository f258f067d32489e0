"""What a template remembers between buckets, and how long it learns before it judges.

A new template's traffic teaches its usual markers, owner and sources for
its first ``LEARN_MS`` and ``LEARN_N`` sends. State per template is bounded:
at most ``MAX_MARKERS`` learned markers, ``MAX_SOURCES`` sources and
``MAX_SUSPECTS`` suspect markers, an hourly profile (48 floats) and one hour
(``WINDOW_MS``) of per-bucket counts. A registered template keeps its
registration for as long as ``sms.templates`` holds it; its learned traffic
state is dropped after ``ctx.idle_ms`` without sends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from smsstream.detection.alerts import MAX_EVIDENCE
from smsstream.detection.stats import BucketWindow, DailyProfile
from smsstream.detection.textshape import TemplateText
from smsstream.vocabulary import HOUR_MS

#: A new template's traffic teaches its usual markers, owner and sources for this long ...
LEARN_MS = HOUR_MS
#: ... and for at least this many sends.
LEARN_N = 10
#: Trailing window for volume and word-drift judgements.
WINDOW_MS = HOUR_MS
MAX_MARKERS = 32
MAX_SOURCES = 64
MAX_SUSPECTS = 32


@dataclass(slots=True)
class Suspect:
    """A marker the template did not carry before, while it keeps turning up."""

    first_ts: int
    last_ts: int
    sends: int = 0
    recipients: list = field(default_factory=list)
    samples: list = field(default_factory=list)

    def add(self, last_ts: int, sends: int, recipients: list, samples: list) -> None:
        """Count one bucket's sends carrying the marker (two recipients are enough to tell it repeats)."""
        self.last_ts = max(self.last_ts, last_ts)
        self.sends += sends
        for r in recipients:
            if len(self.recipients) < 2 and r not in self.recipients:
                self.recipients.append(r)
        self.samples = (self.samples + samples)[-MAX_EVIDENCE:]


@dataclass(slots=True)
class SourceUse:
    """A source part (``k:`` key or ``n:`` network) the template's sends came from."""

    #: bucket it was first used in; 0: one of the template's first sources, its own
    first_seen: int
    sends: int = 0
    #: bucket it last sent in
    last_seen: int = 0


class StrangerSends(NamedTuple):
    """A stranger's sends of an unregistered template, while it keeps sending."""

    sends: int
    #: end of the bucket it last sent in
    last_seen: int


class BucketSources(NamedTuple):
    """The template's sends per source part in one bucket."""

    start: int
    used: dict


@dataclass(slots=True)
class TemplateState:
    template_id: str
    registered: TemplateText | None = None
    owner: str | None = None
    first_ts: int = 0
    last_ts: int = 0
    sends: int = 0
    #: sends that fitted the registered text (a template that never fits has a stale registration)
    fitting: int = 0
    learned_until: int = 0
    known: dict = field(default_factory=dict)  # marker key -> sends carrying it
    suspects: dict = field(default_factory=dict)  # marker key -> Suspect
    #: markers unlike the registration that a registered template's first sends carried before any of its
    #: sends fitted the registration: marker key -> Suspect; they page once a send fits (the registration is
    #: current, so they are tampering), and are learned if none fits while the template learns (stale registration)
    held: dict = field(default_factory=dict)
    senders: dict = field(default_factory=dict)  # sender -> sends (bounded, learned owner)
    strangers: dict = field(default_factory=dict)  # sender -> StrangerSends (unregistered templates)
    links: list = field(default_factory=list)  # registered domains already told to the sender's link book
    sources: dict = field(default_factory=dict)  # source part ("k:.." / "n:..") -> SourceUse
    recent_sources: list = field(default_factory=list)  # BucketSources of the last hour
    profile: DailyProfile = field(default_factory=DailyProfile)
    #: per bucket: [start, sends, new-source sends, word-drifted sends]
    window: BucketWindow = field(default_factory=BucketWindow)
    #: bucket start -> {reader: its tally; "": reads that came one by one}
    tallies: dict = field(default_factory=dict)

    def learning(self, end: int) -> bool:
        """Is the template still learning its normal in the bucket ending at ``end``?"""
        return end <= self.learned_until or self.sends < LEARN_N
