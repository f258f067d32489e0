"""What the template parts tell each other: fact streams and the facts on them.

Readers tell their template's watch what they read (``TEMPLATE_READS``,
``facts.TemplateRead`` added up into ``facts.TemplateTally``); a send that is evidence on its own goes to the watch at once as well
(``TEMPLATE_ALARMS``); readers and watches tell the sender's book every link domain a template shows for the
first time (``TEMPLATE_LINKS``), and watches tell it where a registered
template's sends came from (``TEMPLATE_SOURCES``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

#: Fact stream: a template shows a link domain for the first time (template-keyed -> sender-keyed).
TEMPLATE_LINKS = "fact.template-links"
#: Fact stream: sends read against their template (reader-keyed -> template-keyed), added up per bucket.
TEMPLATE_READS = "fact.template-reads"
#: Fact stream: the sources of a template's sends, per reader and bucket (template-keyed -> sender-keyed).
TEMPLATE_SOURCES = "fact.template-sources"
#: Fact stream: one send that is evidence on its own, passed on at once, not added up (reader -> template).
TEMPLATE_ALARMS = "fact.template-alarms"

#: Link domains one template (or one of its readers) tells the sender's book at most.
MAX_LINKS = 16


@dataclass(slots=True)
class TemplateLink:
    """A template carried a link to ``domain`` for the first time (``message_id`` None: in its registration;
    ``domain`` empty: a registration without links, which only dates the sender)."""

    ts: int
    sender_id: str
    template_id: str
    domain: str
    message_id: str | None
    #: sent by a sender that does not own the (registered) template: news for its book, not its own link
    foreign: bool = False


class SourceCount(NamedTuple):
    """A source's sends in one reader's bucket of a template, and the lowest-ranked few as samples."""

    sends: int
    #: ``(rank, message id)``, lowest rank first
    samples: tuple


@dataclass(slots=True)
class TemplateSources:
    """The sources of one reader's sends of a registered template in one bucket, so far (``ts``: the bucket).

    Cumulative like the tally it comes from: a larger ``count`` from the same
    reader and bucket replaces the one before. ``sources`` maps
    (api key, source ip) to its ``SourceCount``.
    """

    ts: int
    sender_id: str
    template_id: str
    reader: str
    count: int
    sources: dict
    #: some of these sends came from other senders (``foreign_sender``): the sources are not all the owner's
    foreign: bool = False


@dataclass(slots=True)
class TemplateAlarm:
    """One send of a registered template that is evidence on its own, read the moment it is sent.

    It carries a link or callback number its registration does not
    (``markers``: its ``d:<domain>`` and ``p:<number>`` keys, as a tally counts them), or its sender does not own the template
    (``foreign``). The template's watch fires on it at once; the send is
    also in its reader's tally, which the watch judges when the bucket closes.
    """

    ts: int
    template_id: str
    message_id: str
    sender_id: str
    markers: tuple
    foreign: bool
