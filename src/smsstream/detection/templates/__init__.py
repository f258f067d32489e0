"""``template_hijack``: a template's sends no longer look like that template's sends.

Three parts, each keyed by one entity:

- ``TemplateReader`` (``reader``), keyed by the template and a slot of the
  message id's hash (one slot per partition in the worker, so a template
  sending millions a day spreads over partitions), reads each send against
  its template's registration; what it reads is added up per bucket
  (``facts.TemplateTally``) and forwarded.
- ``TemplateWatch`` (``watch``), keyed by ``template_id``, merges its
  readers' tallies and judges each bucket, all on the alert
  ``template_hijack/template/<id>``: ``content_drift`` (``content``: links,
  callback numbers, signatures or words unlike its registration or its own
  traffic), ``foreign_sender`` (``owner``: a sender other than its owner)
  and ``volume_burst`` (``volume``: a burst from a source new to it).
- ``SenderBook`` (``sender_book``), keyed by sender, judges what one
  template's history cannot: a link domain none of the sender's SMS carried
  (``content_drift``) and a burst from a key and network new to the sender
  on a template too young to know its own sources (``volume_burst``), on
  ``template_hijack/sender/<id>``.

What each part keeps, and for how long, is said in ``state`` and
``sender_book``; how sources are told apart in ``sources``; the facts the
parts tell each other in ``facts``.
"""

from __future__ import annotations

from smsstream.detection.base import Part
from smsstream.detection.templates.facts import TEMPLATE_LINKS, TEMPLATE_READS, TEMPLATE_SOURCES, TemplateLink, TemplateSources
from smsstream.detection.templates.reader import TemplateReader
from smsstream.detection.templates.sender_book import SenderBook, SenderBookState
from smsstream.detection.templates.state import TemplateState
from smsstream.detection.templates.watch import TemplateWatch

__all__ = [
    "TEMPLATE_LINKS", "TEMPLATE_PARTS", "TEMPLATE_READS", "TEMPLATE_SOURCES", "SenderBook", "SenderBookState",
    "TemplateLink", "TemplateReader", "TemplateSources", "TemplateState", "TemplateWatch",
]

#: TemplateWatch first: it reports sms.templates' duplicates (each record reaches every reader too).
TEMPLATE_PARTS: list[type[Part]] = [TemplateWatch, TemplateReader, SenderBook]
