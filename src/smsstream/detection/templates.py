"""``template_hijack``: a template's sends no longer look like that template's sends.

Two stages. ``TemplateReader`` reads each send against its template's
registration, keyed by the template and a slot of the message id's hash (one
slot per partition in the worker), so a template sending millions a day
spreads over partitions; what it reads is added up per bucket
(``TemplateTally``) and forwarded. ``TemplateWatch``, keyed by
``template_id``, merges its readers' tallies and judges each bucket, with
three reasons, all on the same alert ``template_hijack/template/<id>``:

- ``content_drift``: bodies that do not fit the registered text, or carry a
  link domain, callback number or signature the template's traffic has not
  carried before (for unregistered templates, learned during its first
  ``LEARN_MS``). Markers are judged per message when the bucket closes; a
  marker that differs from the *registered* text pages at once (even for a
  new template, as long as some of its traffic fits its registration; what
  its first sends carried against the registration before any send fitted
  is held, and pages as soon as one fits, or is learned if none fits while
  the template learns: a stale registration); an
  unregistered template's new marker must repeat across recipients, since
  loan ids and links vary per message. A word-only change pages when most
  of a normally fitting template's recent sends carry it.
- ``foreign_sender``: a sender other than the registered owner (or, for an
  unregistered template, the sender that has sent nearly all of it).
- ``volume_burst``: sends from a source (API key, or IP /24) the template
  has not used before, on top of the template's usual volume for this hour
  of day. A burst from known sources is a campaign, not a hijack, and is not
  reported; a new source that merely replaces an old one (key rotation) adds
  no volume and is not reported either. Nor is a new key from the template's
  own network (a key rotated in place), or a source that took over from the
  template's main key hours before the burst and has sent ever since while
  the main key (or network) stayed silent (a rotation, seen on a template
  that sends too rarely for the hour-by-hour check).

``SenderBook``, keyed by sender, hears every template's new link domains and
every registered template's sources per bucket, and judges what one
template's history cannot: a domain none of the sender's SMS carried
(``content_drift``), and a burst from a key and network new to the sender on
a template too young to know its own sources (``volume_burst``), both on
``template_hijack/sender/<id>``.

State per template is bounded: at most ``MAX_MARKERS`` learned markers,
``MAX_SOURCES`` sources and ``MAX_SUSPECTS`` suspect markers, an hourly
profile (48 floats) and one hour of per-bucket counts. A registered template
keeps its registration for as long as ``sms.templates`` holds it; its
learned traffic state is dropped after ``ctx.idle_ms`` without sends.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable

from smsstream.detection.alerts import MAX_EVIDENCE
from smsstream.detection.base import BUCKET_MS, Finding, Part, partition_of
from smsstream.detection.facts import MAX_SAMPLES, TemplateRead, TemplateTally, rank_of
from smsstream.detection.stats import BucketWindow, DailyProfile, poisson_tail_score
from smsstream.detection.textshape import Markers, TemplateText, diff_words, signature
from smsstream.records import SENDS, TEMPLATES
from smsstream.vocabulary import DAY_MS, HOUR_MS, MINUTE_MS

KIND = "template_hijack"

#: A new template's traffic teaches its usual markers, owner and sources for this long ...
LEARN_MS = 60 * 60_000
#: ... and for at least this many sends.
LEARN_N = 10
#: A template's own sources are those of its first ``SOURCE_LEARN_N`` sends (and first hour), or of its
#: first day if it sends less; a source first used after that counts as new for ``NEW_SOURCE_MS``.
SOURCE_LEARN_N = 200
NEW_SOURCE_MS = DAY_MS
#: A new source that has stood in for the silent main key this long before a burst is its successor.
SUCCESSOR_MS = 2 * HOUR_MS
#: A suspect marker still carried after this long is the template's new normal.
ABSORB_MS = DAY_MS
#: A suspect marker not seen again for this long is forgotten.
SUSPECT_TTL_MS = 6 * HOUR_MS
#: Trailing window for volume and word-drift judgements.
WINDOW_MS = 60 * 60_000
#: A signature its first this many sends carry is the template's, even before it has finished learning.
SIGNATURE_LEARN_N = 3
MAX_MARKERS = 32
MAX_LINKS = 16
MAX_SOURCES = 64
MAX_SUSPECTS = 32
#: An unregistered template's owner is learned once one sender sent this many and this share of it.
OWNER_MIN_SENDS = 20
OWNER_MIN_SHARE = 0.95
#: Fewest new-source sends in the trailing window that can make a burst.
BURST_MIN_SENDS = 20
#: Tail score (-log10 p) the trailing hour must reach against the usual hour to be a burst.
BURST_MIN_SCORE = 4.0
#: ... and this score makes a burst clear whatever the template's busiest hour was.
BURST_CLEAR_SCORE = 30.0
#: Word-only drift: fewest drifted sends in the trailing ``WORDS_WINDOW_MS``, and their least share of it.
WORDS_WINDOW_MS = 15 * 60_000
WORDS_MIN_SENDS = 3
WORDS_MIN_SHARE = 0.2


#: Fact stream: a template shows a link domain for the first time (template-keyed -> sender-keyed).
TEMPLATE_LINKS = "fact.template-links"
#: Fact stream: sends read against their template (reader-keyed -> template-keyed), added up per bucket.
TEMPLATE_READS = "fact.template-reads"
#: Fact stream: the sources of a template's sends, per reader and bucket (template-keyed -> sender-keyed).
TEMPLATE_SOURCES = "fact.template-sources"
#: A sender's usual link domains are those of its registrations and of its first ``SENDER_LEARN_MS`` of traffic.
SENDER_LEARN_MS = 6 * HOUR_MS
MAX_SENDER_DOMAINS = 64
#: Sources (``k:``/``n:`` parts) and templates a sender's source book keeps.
MAX_SENDER_SOURCES = 256
MAX_SENDER_TEMPLATES = 512


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


@dataclass(slots=True)
class TemplateSources:
    """The sources of one reader's sends of a registered template in one bucket, so far (``ts``: the bucket).

    Cumulative like the tally it comes from: a larger ``count`` from the same
    reader and bucket replaces the one before. ``sources`` maps
    (api key, source ip) to (sends, lowest-ranked samples).
    """

    ts: int
    sender_id: str
    template_id: str
    reader: str
    count: int
    sources: dict
    #: some of these sends came from other senders (``foreign_sender``): the sources are not all the owner's
    foreign: bool = False


def _link_sender(fact: TemplateLink | TemplateSources) -> str:
    return fact.sender_id


def _template_id(record) -> str | None:
    return record.template_id


def _template_of(fact) -> str:
    return fact.template_id


def _reader_of(send) -> str | None:
    """The reader of a send when a template has one reader (``replay``)."""
    tid = send.template_id
    return None if tid is None else tid + "#0"


def _readers_of(template) -> tuple[str, ...]:
    return (template.template_id + "#0",)


class SpreadReaders:
    """A template's reader keys on ``partitions`` partitions, one landing on each; a send goes to the
    one its message id's hash picks, a registration to all of them."""

    #: templates whose keys are remembered (each costs ``partitions`` short strings)
    MAX_KNOWN = 65_536

    def __init__(self, partitions: int):
        self.partitions = partitions
        self.known: dict[str, tuple[str, ...]] = {}

    def keys(self, template_id: str) -> tuple[str, ...]:
        keys = self.known.get(template_id)
        if keys is None:
            found: dict[int, str] = {}
            n = 0
            while len(found) < self.partitions:
                key = f"{template_id}#{n}"
                found.setdefault(partition_of(key, self.partitions), key)
                n += 1
            keys = tuple(found[i] for i in range(self.partitions))
            if len(self.known) >= self.MAX_KNOWN:
                self.known.clear()
            self.known[template_id] = keys
        return keys

    def of_send(self, send) -> str | None:
        tid = send.template_id
        if tid is None:
            return None
        return self.keys(tid)[zlib.crc32(send.message_id.encode()) % self.partitions]

    def of_template(self, template) -> tuple[str, ...]:
        return self.keys(template.template_id)


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
    strangers: dict = field(default_factory=dict)
    links: list = field(default_factory=list)  # registered domains already told to the sender's link book
    sources: dict = field(default_factory=dict)  # source part ("k:.." / "n:..") -> [first seen, sends, last seen]
    recent_sources: list = field(default_factory=list)  # [bucket start, {source part: sends}] of the last hour
    profile: DailyProfile = field(default_factory=DailyProfile)
    #: per bucket: [start, sends, new-source sends, word-drifted sends]
    window: BucketWindow = field(default_factory=BucketWindow)
    #: bucket start -> {reader: its tally; "": reads that came one by one}
    tallies: dict = field(default_factory=dict)


#: markers -> ``_marker_keys`` of them; a template's sends carry the same few markers over and over
_KEYS_OF: dict[Markers, tuple[str, ...]] = {}
MAX_KEYS_OF = 4096


def _marker_keys(m: Markers) -> tuple[str, ...]:
    keys = _KEYS_OF.get(m)
    if keys is None:
        found = ["d:" + d for d in m.domains] + ["p:" + p for p in m.phones]
        if m.signature is not None:
            found.append("s:" + m.signature)
        keys = tuple(found)
        if len(_KEYS_OF) < MAX_KEYS_OF:
            _KEYS_OF[m] = keys
    return keys


def _signed_otherwise(state: TemplateState, key: str) -> bool:
    """Has the template already settled on another signature (or on none)? Then even while it is
    still learning, a different one is a change, not part of its normal."""
    return any(k.startswith("s:") and k != key and n >= SIGNATURE_LEARN_N for k, n in state.known.items())


def _source_parts(api_key_id: str | None, source_ip: str | None) -> list[str]:
    """A send's source as the template remembers it: its API key and its IP's /24 (IPv6: all but the last group)."""
    parts = []
    if api_key_id:
        parts.append("k:" + api_key_id)
    if source_ip:
        ip = source_ip
        parts.append("n:" + (ip.rsplit(".", 1)[0] if ip.count(".") == 3 else ip.rsplit(":", 1)[0]))
    return parts


#: (api key, source ip) -> ``_source_parts`` of it; a template's sources repeat in nearly every send
_PARTS_OF: dict[tuple, tuple[str, ...]] = {}
MAX_PARTS_OF = 4096


def _parts_of(raw: tuple) -> tuple[str, ...]:
    parts = _PARTS_OF.get(raw)
    if parts is None:
        parts = tuple(_source_parts(*raw))
        if len(_PARTS_OF) < MAX_PARTS_OF:
            _PARTS_OF[raw] = parts
    return parts


def _main_sources(state: TemplateState, now: int) -> dict[str, tuple[str, int]]:
    """The template's main established API key (``k:``) and network (``n:``) and when each last sent.

    The main one is the established source of that kind with the most sends (the first of equals).
    """
    top: dict[str, tuple[str, list]] = {}
    for p, row in state.sources.items():
        prefix = p[:2]
        if (prefix == "k:" or prefix == "n:") and not (row[0] and now - row[0] < NEW_SOURCE_MS):
            best = top.get(prefix)
            if best is None or row[1] > best[1][1]:
                top[prefix] = (p, row)
    return {prefix: (p, row[2] if len(row) > 2 else now) for prefix, (p, row) in top.items()}


def _may_be_new(state: TemplateState, parts_lists: Iterable[tuple[str, ...]], start: int, established: bool) -> bool:
    """Could a send from these sources count as from a new source in bucket ``start``?

    Only then does it matter when the template's main key and network last sent: in most buckets
    every source is long known, and finding the main ones walks all the template's sources.
    """
    sources = state.sources
    for parts in parts_lists:
        for p in parts:
            row = sources.get(p)
            if row is None:
                if established:
                    return True
            elif row[0] and start - row[0] < NEW_SOURCE_MS:
                return True
    return False


def is_new_source(fresh: dict[str, bool]) -> bool:
    """Is a source whose parts (``k:`` key, ``n:`` network) are fresh as given a new one?

    A new API key from a network already known is a key rotated in place, not
    a new source. The one rule for both a template's and a sender's sources.
    """
    if not any(fresh.values()):
        return False
    nets = [p for p in fresh if p.startswith("n:")]
    return not nets or any(fresh[n] for n in nets)


def knows_its_sources(sends: int, first_ts: int, end: int) -> bool:
    """Has a template sent enough, for long enough, to call a source of its own new?

    With fewer sends than it needs to learn its markers it knows too little of
    its sources: its sender's campaign through the sender's usual keys is not a
    hijack. Its sender's source book judges such a template's sources instead.
    """
    learning = end <= first_ts + LEARN_MS or sends < LEARN_N
    return (sends >= SOURCE_LEARN_N and not learning) or (end - first_ts >= DAY_MS and sends >= LEARN_N)


def _expected_hour(profile: DailyProfile, start: int, end: int) -> float | None:
    """The usual sends in the trailing hour ending at ``end``, None while neither hour of day is known.

    The trailing hour straddles two hours of day; a campaign in either is normal for it.
    """
    slots = [profile.expected(t) for t in (end - WINDOW_MS, start)]
    return max((x for x in slots if x is not None), default=None)


def _ids(samples: list) -> list[str]:
    return [entry[1] for entry in samples]


@dataclass(slots=True)
class ReaderState:
    registered: TemplateText | None = None
    owner: str | None = None
    last_ts: int = 0
    links: list = field(default_factory=list)  # domains already told to the sender's link book


class TemplateReader(Part):
    """Per template and slot: each send read against the registration; what it shows is added up per bucket."""

    name = "template_hijack_reader"
    inputs: ClassVar = {SENDS: _reader_of, TEMPLATES: _readers_of}
    emits = (TEMPLATE_READS, TEMPLATE_LINKS)

    @classmethod
    def spread_over(cls, partitions: int) -> type[Part]:
        """One reader per partition for each template: a template sending millions a day spreads
        over all of them. (``replay`` reads with one: the merged tallies are the same.)"""
        if partitions <= 1:
            return cls
        readers = SpreadReaders(partitions)
        inputs = {SENDS: readers.of_send, TEMPLATES: readers.of_template}
        return type(cls.__name__, (cls,), {"inputs": inputs, "__module__": __name__})

    def __init__(self, ctx):
        super().__init__(ctx)
        self.counters = {"template_sends_judged": 0, "template_bodies_drifted": 0}
        #: the last registration parsed: its readers all get the same record in a row
        self._parsed: TemplateText | None = None

    def idle_since(self, state: ReaderState) -> int:
        return 1 << 62 if state.registered is not None else state.last_ts

    def process(self, topic: str, key: str, value: Any):
        state = self.entities.get(key)
        if state is None or (state.last_ts and value.ts - state.last_ts > self.ctx.idle_ms):
            state = ReaderState(*(() if state is None else (state.registered, state.owner)))
            if state.registered is not None:
                state.links = list(state.registered.markers.domains[:MAX_LINKS])
        if value.ts > state.last_ts:
            state.last_ts = value.ts
        if topic == TEMPLATES:
            parsed = self._parsed
            if parsed is None or parsed.text != value.text:
                parsed = self._parsed = TemplateText(value.text)
            state.registered = parsed
            state.owner = value.sender_id
            # The registration's own domains are told to the link book by TemplateWatch.
            state.links = list(parsed.markers.domains[:MAX_LINKS])
            self.save(key, state)
            return None
        read, found = self._read(state, key, value)
        self.save(key, state)
        facts: list[tuple[str, Any]] = [(TEMPLATE_READS, read)]
        for domain in found:
            # Told once per sender: another sender carrying the template's link is news for its own book.
            told = domain if value.sender_id == state.owner else f"{value.sender_id} {domain}"
            if told in state.links or len(state.links) >= MAX_LINKS:
                continue
            state.links.append(told)
            foreign = state.owner is not None and value.sender_id != state.owner
            facts.append((TEMPLATE_LINKS, TemplateLink(value.ts, value.sender_id, value.template_id, domain,
                                                       value.message_id, foreign)))
        return facts

    def _read(self, state: ReaderState, key: str, send) -> tuple[TemplateRead, tuple]:
        """The send as its template's tally counts it, and the link domains it carries."""
        self.counters["template_sends_judged"] += 1
        registered = state.registered
        stranger = send.sender_id if send.sender_id != state.owner or registered is None else None
        src = send.source
        source = None
        if src is not None and (src.api_key_id or src.source_ip):
            source = (src.api_key_id, src.source_ip)
        body = send.body
        read = TemplateRead(send.ts, send.template_id, key, send.message_id, rank_of(send.message_id),
                            0, stranger, source, (), (), False)
        if registered is None:
            marks = Markers.of(body)
            if marks.signature is None:
                # An unsigned body is a signature too (""): a template that always signed and stops has changed.
                marks = marks._replace(signature="")
            read.markers = _marker_keys(marks)
            read.recipient = rank_of(send.number)
            return read, marks.domains
        fit = registered.fit(body)
        markers: tuple = ()
        domains: tuple = ()
        if fit.var_markers is not None:
            markers = _marker_keys(fit.var_markers)
            domains = fit.var_markers.domains
        if not fit.ok:
            self.counters["template_bodies_drifted"] += 1
            marks = Markers(tuple(fit.new_domains), tuple(fit.new_phones), fit.signature)
            read.unregistered = _marker_keys(marks)
            markers += read.unregistered
            domains += marks.domains
            read.diff = self.ctx.pseudonymizer.redact(diff_words(fit))
        else:
            read.fitting = True
        if not registered.has_signature:
            sig = signature(body)
            if sig is not None:
                markers += _marker_keys(Markers(signature=sig))
        if markers:
            read.markers = markers
            read.recipient = rank_of(send.number)
        return read, domains


class TemplateWatch(Part):
    """Per template: content, owner and sources against its registration and its own history."""

    name = "template_hijack"
    inputs: ClassVar = {TEMPLATES: _template_id, TEMPLATE_READS: _template_of}
    emits = (TEMPLATE_LINKS, TEMPLATE_SOURCES)

    def idle_since(self, state: TemplateState) -> int:
        # A registration is reference data: kept while sms.templates holds it.
        return 1 << 62 if state.registered is not None else state.last_ts

    # --- input -----------------------------------------------------------------

    def process(self, topic: str, key: str, value: Any):
        state = self.entities.get(key)
        if state is None or (state.last_ts and value.ts - state.last_ts > self.ctx.idle_ms):
            # New, or idle so long that its learned traffic says nothing any more.
            state = TemplateState(key, *(() if state is None else (state.registered, state.owner)))
        facts = None
        if topic == TEMPLATES:
            state.registered = TemplateText(value.text)
            state.owner = value.sender_id
            facts = self._links(state, state.registered.markers.domains, value.sender_id, value.ts, None)
            if facts is None:
                # No link in the text: still tells the link book when the sender began.
                facts = [(TEMPLATE_LINKS, TemplateLink(value.ts, value.sender_id, key, "", None))]
        else:
            facts = self._take(state, key, value)
        self.save(key, state)
        return facts

    def _links(self, state: TemplateState, found, sender_id: str, ts: int, message_id: str | None):
        """Tell the sender's link book about domains this template shows for the first time."""
        facts = None
        for domain in found:
            if domain in state.links or len(state.links) >= MAX_LINKS:
                continue
            state.links.append(domain)
            if facts is None:
                facts = []
            facts.append((TEMPLATE_LINKS, TemplateLink(ts, sender_id, state.template_id, domain, message_id)))
        return facts

    def _take(self, state: TemplateState, key: str, read: TemplateRead | TemplateTally) -> list | None:
        """A reader's tally (it replaces that reader's earlier one), or one read that came alone (adds up)."""
        first = read.first_ts if read.__class__ is TemplateTally else read.ts
        if not state.first_ts or first < state.first_ts:
            state.first_ts = first
            state.learned_until = first + LEARN_MS
        if read.ts > state.last_ts:
            state.last_ts = read.ts
        start = self.mark(key, first)
        reads = state.tallies.get(start)
        if reads is None:
            reads = state.tallies[start] = {}
        if isinstance(read, TemplateTally):
            before = reads.get(read.reader)
            if before is None or read.count > before.count:
                reads[read.reader] = read
                return self._tell_sources(state, start, read)
            return None
        alone = reads.get("")
        if alone is None:
            alone = reads[""] = TemplateTally(read.template_id, "")
        alone.add(read)
        return self._tell_sources(state, start, alone)

    @staticmethod
    def _tell_sources(state: TemplateState, start: int, tally: TemplateTally):
        """Tell the sender's source book where this reader's sends of the bucket came from.

        A template too young to know its own sources cannot call one new; its
        sender, which has seen the keys and networks of all its templates, can.
        """
        if not tally.sources or state.registered is None or state.owner is None:
            # an unregistered template's sources are not split by sender, so no one sender can be told them
            return None
        sources = {raw: (row[0], tuple(row[1])) for raw, row in tally.sources.items() if raw != "other"}
        return [(TEMPLATE_SOURCES, TemplateSources(start, state.owner, state.template_id, tally.reader, tally.count,
                                                   sources, bool(tally.senders)))]

    # --- judging ---------------------------------------------------------------

    def close(self, key: str, start: int, end: int) -> Iterable[Finding]:
        state = self.entities.get(key)
        if state is None:
            return ()
        reads = state.tallies.pop(start, None)
        if reads is None:
            return ()
        readers = sorted(reads)
        tally = reads[readers[0]]
        for reader in readers[1:]:
            tally.merge(reads[reader])
        learning = end <= state.learned_until or state.sends < LEARN_N
        sources_known = knows_its_sources(state.sends, state.first_ts, end)
        new = self._classify_sources(state, tally, start, sources_known)
        state.window.add(start, tally.count, new[0], tally.words_drift)
        state.window.prune(end - WINDOW_MS)
        # Only a bucket with sends from a new source can make a burst; the usual hour is read before
        # this bucket updates the profile.
        burst_possible = sources_known and new[0] > 0
        expected_hour = _expected_hour(state.profile, start, end) if burst_possible else None
        state.profile.update(start, tally.count)

        drift = self._judge_markers(state, tally, start, end, learning)
        foreign = self._judge_owner(state, tally, start, end, learning)
        burst = self._judge_burst(state, tally, end, new, expected_hour) if burst_possible else None
        state.sends += tally.count
        state.fitting += tally.fitting
        self.save(key, state)
        found = [f for f in (foreign, drift, burst) if f is not None]
        return _one_alert(found)

    def _judge_markers(self, state: TemplateState, tally: TemplateTally, start: int, end: int, learning: bool):
        registered = state.registered
        fresh: list[tuple[str, Suspect]] = []
        fits = (state.fitting + tally.fitting) > 0
        if state.held:
            if fits:
                # Some sends fit the registration after all: what the first sends carried against it is tampering.
                for k, s in state.held.items():
                    if k not in tally.markers:
                        state.suspects[k] = s
                        fresh.append((k, s))
                    elif k not in state.suspects:
                        state.suspects[k] = s  # this bucket's sends are added below
                state.held = {}
            elif not learning:
                # Nothing ever fitted: the registration is stale and the first sends showed the template's normal.
                for k, s in state.held.items():
                    if len(state.known) < MAX_MARKERS:
                        state.known[k] = s.sends
                state.held = {}
        for k, row in sorted(tally.markers.items()):
            count, samples, recipients = row[0], _ids(row[1]), row[2]
            if k in state.known:
                state.known[k] += count
                continue
            vs_registration = k in tally.unregistered_markers
            if learning and not (vs_registration and fits) and not (
                k.startswith("s:") and _signed_otherwise(state, k)
            ):
                if vs_registration and registered is not None:
                    # Unlike the registration before any send fitted it: hold it until the template shows
                    # whether its registration is current (a send fits) or stale (none does while it learns).
                    h = state.held.get(k)
                    if h is None:
                        if len(state.held) >= MAX_SUSPECTS:
                            continue
                        h = state.held[k] = Suspect(start, tally.ts)
                    h.add(tally.ts, count, recipients, samples)
                    continue
                # A new template's first traffic defines its normal markers.
                if len(state.known) < MAX_MARKERS:
                    state.known[k] = count
                continue
            s = state.suspects.get(k)
            if s is None:
                if len(state.suspects) >= MAX_SUSPECTS:
                    self._forget_suspects(state, end, force=True)
                s = state.suspects[k] = Suspect(start, tally.ts)
            s.add(tally.ts, count, recipients, samples)
            if s.last_ts - s.first_ts >= ABSORB_MS:
                # Carried for a day: the template changed for good; stop reporting it.
                del state.suspects[k]
                if len(state.known) < MAX_MARKERS:
                    state.known[k] = s.sends
                continue
            if vs_registration or (s.sends >= 2 and len(s.recipients) >= 2):
                fresh.append((k, s))
        self._forget_suspects(state, end)

        words = self._words_drift(state, tally, start, end)
        if not fresh and words is None:
            return None
        if not fresh:
            return words
        return self._drift_finding(state, tally, start, end, fresh, registered is not None)

    def _words_drift(self, state: TemplateState, tally: TemplateTally, start: int, end: int):
        if not tally.words_drift or state.registered is None:
            return None
        (total, _, drifted), = state.window.sums(end, (WORDS_WINDOW_MS,))
        normally_fits = state.fitting >= 10 and state.fitting >= 0.8 * state.sends
        if drifted < WORDS_MIN_SENDS or drifted < WORDS_MIN_SHARE * total or not normally_fits:
            return None
        samples = [(mid, diff) for _, mid, diff in tally.words_samples]
        return Finding(
            kind=KIND,
            reason="content_drift",
            severity="warning",
            entity_type="template",
            entity_id=state.template_id,
            window_start=end - WORDS_WINDOW_MS,
            window_end=end,
            observed=drifted,
            expected=0.0,
            score=poisson_tail_score(drifted, max(0.05 * total, 0.1)),
            summary=(
                f"template {state.template_id}: {int(drifted)} of {int(total)} sends in the last "
                f"{WORDS_WINDOW_MS // 60_000} min no longer match the registered text (words changed: {samples[0][1] if samples else '?'})"
            ),
            evidence={
                "message_ids": [m for m, _ in samples],
                "diff": [d for _, d in samples],
                "registered_text": self.ctx.pseudonymizer.redact(state.registered.text),
            },
            sender_id=state.owner,
            template_id=state.template_id,
            last_seen=tally.ts,
        )

    def _drift_finding(self, state, tally, start, end, fresh, registered: bool) -> Finding:
        urls: list[str] = []
        numbers: list[str] = []
        signatures: list[str] = []
        samples: list = []
        diffs: list = []
        sends = 0
        redact = self.ctx.pseudonymizer.redact  # link hosts and signatures are free text: a number may hide in them
        for k, s in fresh:
            kind, value = k[0], k[2:]
            if kind == "d":
                urls.append(redact(value))
            elif kind == "p":
                numbers.append(self.ctx.pseudonym(value))
            else:
                signatures.append(redact(value))
            sends = max(sends, s.sends)
            samples.extend(m for m in s.samples if m not in samples)
            row = tally.markers.get(k)
            if row is not None and row[3] is not None:
                diffs.append(row[3][1])
        usual_sigs = [redact(k[2:]) or "(none)" for k in state.known if k.startswith("s:")]
        if registered and state.registered.markers.signature:
            usual_sigs = [redact(state.registered.markers.signature)]
        severity = "critical" if urls or numbers else "warning"
        what = []
        if urls:
            what.append("link to " + ", ".join(urls[:3]))
        if numbers:
            what.append("callback number " + ", ".join(numbers[:3]))
        if signatures:
            shown = [s or "(none)" for s in signatures[:3]]
            was = ", ".join(usual_sigs[:2]) or "none"
            what.append(f"signature {', '.join(shown)} (usually {was})")
        against = "its registered text" if registered else "anything it sent before"
        evidence: dict = {"message_ids": samples[:MAX_EVIDENCE]}
        if urls:
            evidence["urls"] = urls
        if numbers:
            evidence["numbers"] = numbers
        if signatures:
            evidence["signatures"] = {"seen": signatures, "usual": usual_sigs}
        if diffs:
            evidence["diff"] = diffs
        return Finding(
            kind=KIND,
            reason="content_drift",
            severity=severity,
            entity_type="template",
            entity_id=state.template_id,
            window_start=min(s.first_ts for _, s in fresh) // BUCKET_MS * BUCKET_MS,
            window_end=end,
            observed=sends,
            expected=0.0,
            score=min(10.0 + sends, 300.0) if severity == "critical" else min(5.0 + sends, 300.0),
            summary=(
                f"template {state.template_id}: {sends} send(s) carry {'; '.join(what)}, "
                f"unlike {against} (possible tampering)"
            ),
            evidence=evidence,
            sender_id=state.owner or _top(tally.senders),
            template_id=state.template_id,
            last_seen=tally.ts,
        )

    def _forget_suspects(self, state: TemplateState, now: int, force: bool = False) -> None:
        if not state.suspects:
            return
        old = [k for k, s in state.suspects.items() if s.last_ts < now - SUSPECT_TTL_MS]
        if force and not old and state.suspects:
            old = [min(state.suspects, key=lambda k: state.suspects[k].last_ts)]
        for k in old:
            del state.suspects[k]

    def _judge_owner(self, state: TemplateState, tally: TemplateTally, start: int, end: int, learning: bool):
        owner = state.owner
        registered = owner is not None
        if registered and not tally.senders:
            return None  # only strangers' sends to a registered template are tallied
        if owner is None:
            total = sum(state.senders.values())
            if total:
                top = max(state.senders, key=state.senders.__getitem__)
                if state.senders[top] >= OWNER_MIN_SENDS and state.senders[top] >= OWNER_MIN_SHARE * total:
                    owner = top
        senders_seen = sorted(tally.senders.items())
        foreign = {s: row for s, row in senders_seen if owner is not None and s != owner}
        if not registered:
            for s, row in senders_seen:
                if s in state.senders or len(state.senders) < 8:
                    if s == owner or owner is None or learning:
                        state.senders[s] = state.senders.get(s, 0) + row[0]
        if not registered:
            for s in [s for s, (_, last) in state.strangers.items() if last < end - WINDOW_MS]:
                del state.strangers[s]
            for s, row in foreign.items():
                seen = state.strangers.get(s)
                if seen is None and len(state.strangers) >= 8:
                    continue
                state.strangers[s] = [(seen[0] if seen else 0) + row[0], end]
        if not foreign:
            return None
        sends = sum(row[0] for row in foreign.values())
        if not registered and (learning or sum(state.strangers.get(s, (0,))[0] for s in foreign) < 2):
            return None
        samples = [m for row in foreign.values() for m in _ids(row[1])]
        senders = sorted(foreign, key=lambda s: (-foreign[s][0], s))
        how = "registered to" if registered else "normally sent only by"
        return Finding(
            kind=KIND,
            reason="foreign_sender",
            severity="critical",
            entity_type="template",
            entity_id=state.template_id,
            window_start=start,
            window_end=end,
            observed=sends,
            expected=0.0,
            score=min(20.0 + sends, 300.0),
            summary=(
                f"template {state.template_id} ({how} {owner}) was sent {sends} time(s) by "
                f"{', '.join(senders[:3])}"
            ),
            evidence={"message_ids": samples, "senders": senders, "owner": owner},
            sender_id=senders[0],
            template_id=state.template_id,
            last_seen=tally.ts,
        )

    def _classify_sources(self, state: TemplateState, tally: TemplateTally, start: int, established: bool):
        """Sends in this bucket from sources new to the template: (count, sample ids, sources)."""
        new_sends = 0
        new_samples: list[str] = []
        new_sources: list[str] = []
        used: dict[str, int] = {}
        parts_of = {raw: _parts_of(raw) if raw != "other" else ("other",) for raw in tally.sources}
        main_last: dict[str, int | None] = {"k:": None, "n:": None}
        maybe_new = _may_be_new(state, parts_of.values(), start, established)
        if maybe_new:
            # When the template's main key and main network last sent, counting this bucket.
            now_used = {p for raw, parts in parts_of.items() if raw != "other" for p in parts}
            for prefix, (main, main_at) in _main_sources(state, start).items():
                main_last[prefix] = start if main in now_used else main_at
        for raw, (count, samples) in sorted(tally.sources.items(), key=_source_order):
            parts = parts_of[raw]
            fresh: dict[str, bool] = {}
            for p in parts:
                row = state.sources.get(p)
                if row is None:
                    if len(state.sources) >= MAX_SOURCES:
                        later = [k for k, v in state.sources.items() if v[0]]
                        if not later:
                            continue
                        del state.sources[min(later, key=lambda k: state.sources[k][0])]
                    # Sources of a template's first sends are its own (0); later ones are new for a day.
                    row = state.sources[p] = [start if established else 0, 0, start]
                row[1] += count
                if len(row) < 3:
                    row.append(start)
                row[2] = max(row[2], start)
                used[p] = used.get(p, 0) + count
                if not maybe_new:
                    continue
                fresh[p] = bool(row[0]) and start - row[0] < NEW_SOURCE_MS
                last = main_last.get(p[:2])
                if fresh[p] and last is not None:
                    # Sending since before the main one's last send, or not yet for long: not its successor.
                    fresh[p] = row[0] <= last or start - row[0] < SUCCESSOR_MS
            if is_new_source(fresh):
                new_sends += count
                new_samples.extend(_ids(samples))
                new_sources.append("|".join(parts))
        state.recent_sources.append([start, used])
        while state.recent_sources and state.recent_sources[0][0] < start + BUCKET_MS - WINDOW_MS:
            del state.recent_sources[0]
        return new_sends, new_samples, new_sources

    def _main_source_silent(self, state: TemplateState, expected: float, now: int) -> bool:
        """Did the template's main known source (API key, else IP range) stop as the new one started?

        A key rotation replaces the main key, so the new key stands in for it:
        the main key goes quiet while it usually sends, or the other known
        sources keep their usual proportion to the new one. A stolen key sends
        beside the main one (or at an hour it has nothing to send).
        """
        for prefix in ("k:", "n:"):
            rows = {p: row for p, row in state.sources.items() if p.startswith(prefix)}
            fresh_rows = {p: row for p, row in rows.items() if row[0] and now - row[0] < NEW_SOURCE_MS}
            known = {p: row[1] for p, row in rows.items() if p not in fresh_rows}
            fresh = [row[0] for row in fresh_rows.values()]
            if not known or not fresh:
                continue
            since = min(fresh)
            main = max(known, key=known.__getitem__)
            history = sum(known.values())
            share = known[main] / max(history, 1)
            window = [used for start, used in state.recent_sources if start >= since]
            if sum(used.get(main, 0) for used in window) > 0:
                return False
            if share * expected >= 2.0:
                return True
            others = sum(n for used in window for p, n in used.items() if p in known)
            new = sum(n for used in window for p, n in used.items() if p in fresh_rows)
            return others > 0 and share < 1.0 and new <= 3.0 * share / (1.0 - share) * others
        return False

    def _judge_burst(self, state: TemplateState, tally: TemplateTally, end: int, new, expected_hour):
        new_sends, new_samples, new_sources = new
        if not new_sends:
            return None
        (total, new_total, _), = state.window.sums(end, (WINDOW_MS,))
        hour_known = expected_hour is not None
        if expected_hour is None:
            known = [m for i, m in enumerate(state.profile.means) if state.profile.seen >> i & 1]
            expected_hour = max(known) if known else 0.0
        expected = max(expected_hour, 1.0)
        if hour_known and expected >= 4.0 and total - new_total < 0.5 * expected:
            # The usual sources fell silent while a new one sends: a key rotation, not a second sender.
            return None
        if self._main_source_silent(state, expected, end):
            return None
        excess = total - expected
        score = poisson_tail_score(total, expected)
        # The new source must add to the usual volume (not replace it: key rotation) and carry the bulk of the
        # excess (not ride along a campaign at an hour the template has not learned yet).
        # Half as much from the new source in an hour as the template ever sent in its busiest hour (the
        # three-in-the-morning burst the size of the nine-o'clock campaign), or far beyond this hour's usual.
        busiest = max(state.profile.maxes)
        if new_total < BURST_MIN_SENDS or score < BURST_MIN_SCORE:
            return None
        if new_total < 0.5 * busiest and score < BURST_CLEAR_SCORE:
            return None
        if excess < 0.5 * new_total or new_total < 0.5 * excess:
            return None
        shown = [_show_source(s) for s in new_sources]
        severity = "critical" if new_total >= 100 or score >= 20 else "warning"
        return Finding(
            kind=KIND,
            reason="volume_burst",
            severity=severity,
            entity_type="template",
            entity_id=state.template_id,
            window_start=end - WINDOW_MS,
            window_end=end,
            observed=total,
            expected=round(expected, 3),
            score=score,
            summary=(
                f"template {state.template_id}: {int(total)} sends in the last hour against about "
                f"{expected:.0f} usual at this hour, {int(new_total)} of them from a new source "
                f"({', '.join(shown[:2])})"
            ),
            evidence={"message_ids": new_samples, "new_sources": shown},
            sender_id=state.owner or _top(tally.senders),
            template_id=state.template_id,
            last_seen=tally.ts,
        )


_RANK = {"info": 0, "warning": 1, "critical": 2}


def _one_alert(found: list[Finding]) -> list[Finding]:
    """One alert per entity and bucket: the strongest reason speaks, the others ride along in its evidence."""
    if not found:
        return []
    lead = max(found, key=lambda f: (_RANK[f.severity], f.score))
    for other in found:
        if other is not lead:
            lead.evidence.setdefault("also", []).append(f"{other.reason}: {other.summary}")
    return [lead]


def _top(table: dict) -> str | None:
    return min(table, key=lambda k: (-table[k][0], k)) if table else None


def _source_order(entry: tuple) -> tuple:
    raw = entry[0]
    return ("", "") if raw == "other" else tuple(p or "" for p in raw)


def _show_source(src: str) -> str:
    out = []
    for p in src.split("|"):
        if p.startswith("k:"):
            out.append("api key " + p[2:])
        elif p.startswith("n:"):
            out.append("ip " + p[2:] + ".*")
    return " / ".join(out)


@dataclass(slots=True)
class SenderBookState:
    domains: dict = field(default_factory=dict)  # domain -> first seen
    first_ts: int = 0
    last_ts: int = 0
    #: bucket start -> [(domain, template_id, message_id, ts)] domains new to an established sender
    pending: dict = field(default_factory=dict)
    #: when the sender's first sources were told: sources are judged a day after
    sources_since: int = 0
    #: source part ("k:"/"n:") -> [first seen (0: one of the sender's first), sends, used on a template that
    #: knows its own sources]
    sources: dict = field(default_factory=dict)
    #: template -> [first seen, sends, when it came to know its own sources (0: not yet)]
    templates: dict = field(default_factory=dict)
    #: bucket start -> {(template, reader): TemplateSources}
    told: dict = field(default_factory=dict)
    #: the last hour's sends from new sources on templates too young to judge them:
    #: [bucket start, template, source parts, sends, samples]
    recent: list = field(default_factory=list)
    #: no source of the sender is new from this time on
    fresh_until: int = 0
    #: "template domain" of links told here but not learned as the sender's own (another lender's template,
    #: or the domain book full) -> first seen: reported once, however many readers the template is read on;
    #: the most recent ``MAX_SENDER_DOMAINS`` are kept
    strays: dict = field(default_factory=dict)


def _strays(state: SenderBookState) -> dict:
    """The state's stray links; a state restored from a snapshot written before they were kept has none yet."""
    try:
        return state.strays
    except AttributeError:
        state.strays = {}
        return state.strays


class SenderBook(Part):
    """Per sender: the link domains and the sources (API keys, networks) all its templates used.

    Catches what one template's own history cannot: a template whose very
    first sends are already tampered, or a dormant registered template woken
    up by someone else with a new link (``content_drift``); and a burst on a
    template with next to no history from an API key and network none of the
    sender's SMS ever came from (``volume_burst``: a stolen key driving a
    template the sender barely uses). A new source that also carries the
    sender's established templates is the sender's own (a key rotation or a
    new host) and is left to those templates to judge.
    """

    name = "template_hijack_sender"
    inputs: ClassVar = {TEMPLATE_LINKS: _link_sender, TEMPLATE_SOURCES: _link_sender}

    def process(self, topic: str, key: str, fact: TemplateLink | TemplateSources):
        state = self.entities.get(key) or SenderBookState()
        if not state.first_ts or fact.ts < state.first_ts:
            state.first_ts = fact.ts
        state.last_ts = max(state.last_ts, fact.ts)
        if isinstance(fact, TemplateSources):
            if not state.sources_since or fact.ts < state.sources_since:
                state.sources_since = fact.ts
            start = self.mark(key, fact.ts)
            told = state.told.get(start)
            if told is None:
                told = state.told[start] = {}
            group = (fact.template_id, fact.reader)
            before = told.get(group)
            if before is None or fact.count > before.count:
                told[group] = fact
            self.save(key, state)
            return None
        if not fact.domain or fact.domain in state.domains:
            self.save(key, state)
            return None
        # Another lender's template teaches nothing about this sender's own links (foreign_sender covers it).
        learn = not fact.foreign and len(state.domains) < MAX_SENDER_DOMAINS
        if not learn:
            strays = _strays(state)
            stray = f"{fact.template_id} {fact.domain}"
            if stray in strays:
                self.save(key, state)
                return None
            if len(strays) >= MAX_SENDER_DOMAINS:
                # the oldest goes, so the newest is still told once however many readers tell it
                del strays[min(strays, key=lambda told: (strays[told], told))]
            strays[stray] = fact.ts
        established = fact.message_id is not None and fact.ts - state.first_ts >= SENDER_LEARN_MS
        if established and state.domains:
            start = self.mark(key, fact.ts)
            state.pending.setdefault(start, []).append((fact.domain, fact.template_id, fact.message_id, fact.ts))
        if learn:
            state.domains[fact.domain] = fact.ts
        self.save(key, state)
        return None

    def close(self, key: str, start: int, end: int) -> Iterable[Finding]:
        state = self.entities.get(key)
        if state is None:
            return ()
        found = []
        domains = state.pending.pop(start, None)
        if domains:
            found.append(self._new_domains(key, state, domains, start, end))
        told = state.told.pop(start, None)
        if told:
            burst = self._judge_sources(key, state, told, start, end)
            if burst is not None:
                found.append(burst)
        self.save(key, state)
        return _one_alert(found)

    def _new_domains(self, key: str, state: SenderBookState, found: list, start: int, end: int) -> Finding:
        redact = self.ctx.pseudonymizer.redact
        new_domains = sorted({d for d, *_ in found})
        templates = sorted({t for _, t, _, _ in found})
        usual = [redact(d) for d in sorted(d for d in state.domains if d not in new_domains)[:5]]
        new_domains = [redact(d) for d in new_domains]
        return Finding(
            kind=KIND,
            reason="content_drift",
            severity="warning",
            entity_type="sender",
            entity_id=key,
            window_start=start,
            window_end=end,
            observed=len(new_domains),
            expected=0.0,
            score=10.0 + len(new_domains),
            summary=(
                f"{key}: template {', '.join(templates[:3])} links to {', '.join(new_domains[:3])}, a domain none "
                f"of its SMS carried before (usually {', '.join(usual[:3]) or 'none'})"
            ),
            evidence={"urls": new_domains, "templates": templates, "message_ids": [m for _, _, m, _ in found],
                      "usual_domains": usual},
            sender_id=key,
            template_id=templates[0],
            last_seen=max(t for *_, t in found),
        )

    def _judge_sources(self, key: str, state: SenderBookState, told: dict, start: int, end: int) -> Finding | None:
        """Learn the bucket's sources; a burst from a new one on a template too young to judge it is found."""
        foreign = {template_id for (template_id, _), fact in told.items() if fact.foreign}
        by_template: dict[str, tuple[int, dict]] = {}
        for (template_id, _reader), fact in sorted(told.items()):
            if template_id in foreign:
                continue  # another sender's sources mixed in: left to foreign_sender
            count, rows = by_template.get(template_id, (0, {}))
            for raw, (n, samples) in fact.sources.items():
                row = rows.get(raw)
                if row is None:
                    rows[raw] = [n, samples]
                else:
                    row[0] += n
                    row[1] += samples
            by_template[template_id] = (count + fact.count, rows)
        established = start - state.sources_since >= NEW_SOURCE_MS
        for template_id, (count, rows) in sorted(by_template.items()):
            history = state.templates.get(template_id)
            if history is None:
                if len(state.templates) >= MAX_SENDER_TEMPLATES:
                    continue  # untracked (book full): left to the template's own judgement
                history = state.templates[template_id] = [start, 0, 0]
            if not history[2] and knows_its_sources(history[1], history[0], end):
                history[2] = start
            history[1] += count
            for raw, (n, _) in rows.items():
                for p in _parts_of(raw):
                    row = state.sources.get(p)
                    if row is None:
                        if len(state.sources) >= MAX_SENDER_SOURCES:
                            continue
                        row = state.sources[p] = [start if established else 0, 0, False]
                        if row[0]:
                            state.fresh_until = max(state.fresh_until, row[0] + NEW_SOURCE_MS)
                    row[1] += n
                    if history[2] and history[2] <= row[0]:
                        row[2] = True  # it carries a template that knew its sources before it came: the sender's own
        if start >= state.fresh_until:
            state.recent.clear()
            return None  # every source the sender has is a day old at least
        for template_id, (count, rows) in sorted(by_template.items()):
            if template_id not in state.templates:
                continue  # untracked (book full): left to the template's own judgement
            for raw, (n, samples) in sorted(rows.items(), key=_source_order):
                parts = _parts_of(raw)
                if self._new_to_sender(state, parts, start):
                    # the bucket's lowest-ranked few, as one tally of all its sends would keep
                    state.recent.append([start, template_id, parts, n, tuple(sorted(set(samples))[:MAX_SAMPLES])])
        while state.recent and state.recent[0][0] < end - WINDOW_MS:
            del state.recent[0]
        now = {entry[1] for entry in state.recent if entry[0] == start}
        burst: dict[str, list] = {}
        for entry in state.recent:
            # still new: not since seen carrying a template that knew its sources
            if entry[1] in now and self._new_to_sender(state, entry[2], start):
                burst.setdefault(entry[1], []).append(entry)
        best = None
        for template_id, entries in sorted(burst.items()):
            total = sum(e[3] for e in entries)
            if total >= BURST_MIN_SENDS and (best is None or total > best[0]):
                best = (total, template_id, entries)
        if best is None:
            return None
        total, template_id, entries = best
        shown = sorted({_show_source("|".join(e[2])) for e in entries})
        samples = sorted((s for e in entries for s in e[4]))[:MAX_EVIDENCE]
        sends_before = state.templates[template_id][1] - sum(e[3] for e in entries)
        usual = sorted((p for p, row in state.sources.items() if p.startswith("k:") and not self._fresh(row, start)),
                       key=lambda p: (-state.sources[p][1], p))[:3]
        return Finding(
            kind=KIND,
            reason="volume_burst",
            severity="critical" if total >= 100 else "warning",
            entity_type="sender",
            entity_id=key,
            window_start=end - WINDOW_MS,
            window_end=end,
            observed=float(total),
            expected=0.0,
            score=float(total),
            summary=(
                f"{key}: template {template_id} sent {total} SMS in the last hour from {', '.join(shown[:2])}, "
                f"an API key and network none of the sender's SMS came from before; the template had "
                f"{max(sends_before, 0)} sends before, too few to know its own sources. A stolen key, or a new "
                f"integration nobody announced"
            ),
            evidence={"message_ids": [s[1] for s in samples], "new_sources": shown, "template": template_id,
                      "usual_keys": [_show_source(p) for p in usual]},
            sender_id=key,
            template_id=template_id,
            last_seen=min(state.last_ts, end),
        )

    @staticmethod
    def _fresh(row: list, start: int) -> bool:
        return bool(row[0]) and start - row[0] < NEW_SOURCE_MS and not row[2]

    def _new_to_sender(self, state: SenderBookState, parts: tuple, start: int) -> bool:
        """A source none of the sender's SMS came from before."""
        sources = state.sources
        return is_new_source({p: self._fresh(sources[p], start) for p in parts if p in sources})


#: TemplateWatch first: it reports sms.templates' duplicates (each record reaches every reader too).
TEMPLATE_PARTS: list[type[Part]] = [TemplateWatch, TemplateReader, SenderBook]
