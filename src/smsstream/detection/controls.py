"""Operator controls: sensitivity, allow lists, silences and shadow mode, as the detectors consult them.

Entries come from the compacted topic ``sms.detector-config`` (key: the
entry's id; a null value removes it), from a file (``replay --config``) or
from replay's own input. This module is the one model of them: parsing and
validation (``parse_entry``: a ``RecordError`` naming the field, so a bad
entry is dead-lettered like any bad record), matching a finding or an alert
against scopes, precedence, and the ``ControlBook`` every part consults
through ``PartContext.controls``. docs/controls.md explains each control to
the people who set them.

**Time.** An entry is *in force* at event time ``t`` when ``ts <= t`` and,
if it has one, ``t < until``. Every judgement is made at an event time (a
bucket closing at its end, a send read at its ``ts``, an alert record at its
``window_end``, counts added up per bucket at the bucket's start) and uses
the entries in force then. So replay and the worker, given the same input
and the same entries, make the same judgements, whatever the order in which
they read them, as long as an entry is known before anything at its ``ts``
is judged: the CLI stamps ``ts`` a few seconds ahead of the moment of
writing (``config.cli``), and every worker reads the topic continuously.
A new version of an entry (same id) takes over from its own ``ts``; the
version before stays in force until then.

**Precedence.** A scope names any of ``kind``, ``reason``, ``sender_id``,
``template_id``, ``entity_type``, ``entity_id``; it matches what it names
(an empty scope is the global default). Where one answer is needed (a
sensitivity level, a non-borrower ceiling), the most specific scope wins:
the one naming an entity, else a template, else a sender, else a reason,
else an entity type, else a kind (``Scope.rank``); equals by later ``ts``,
then by id. Silences, shadows and the lists of allowed partners, links,
devices, networks and carriers add up.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, NamedTuple

import orjson

from smsstream.errors import InvalidJson, RecordError, TooLarge
from smsstream.records import json_type
from smsstream.vocabulary import ENTITY_TYPES, KINDS, NUMBER, REASONS

SENSITIVITY = "sensitivity"
ALLOW = "allow"
SILENCE = "silence"
SHADOW = "shadow"
CONTROLS = (SENSITIVITY, ALLOW, SILENCE, SHADOW)

LOW = "low"
NORMAL = "normal"
HIGH = "high"
LEVELS = (LOW, NORMAL, HIGH)

#: What an ``allow`` entry allows (its ``allow`` field), and the fields each takes.
NON_BORROWER_SENDS = "non_borrower_sends"
PARTNER_SENDERS = "partner_senders"
LINKS = "links"
BULK_REBINDS = "bulk_rebinds"
CARRIER_FAILURES = "carrier_failures"
ALLOWS = (NON_BORROWER_SENDS, PARTNER_SENDERS, LINKS, BULK_REBINDS, CARRIER_FAILURES)

SCOPE_FIELDS = ("kind", "reason", "sender_id", "template_id", "entity_type", "entity_id")
#: An allow entry names where it applies by sender and template only: what it allows says the rest.
ALLOW_SCOPE_FIELDS = ("sender_id", "template_id")

MAX_ID_CHARS = 128
MAX_TEXT_CHARS = 1000
MAX_NAME_CHARS = 256
MAX_LIST = 100
MAX_RECORD_BYTES = 64 * 1024
#: An alert names at most this many entries in ``controls`` (a bounded list, as its evidence lists are).
MAX_NAMED = 20
#: Event time must lie in [2000-01-01, 2100-01-01), as for every input record.
MIN_TS = 946_684_800_000
MAX_TS = 4_102_444_800_000

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]*\Z")
_PSEUDONYM = re.compile(r"pn:[0-9a-f]{16}\Z")
#: An account id that is a phone number (some lenders key accounts by the customer's mobile): alerts show
#: its pseudonym (``rebind.evidence.shown_account``) ...
_WHOLE_NUMBER = re.compile(r"\+?[0-9]{7,15}\Z")
#: ... and an E.164 number anywhere in a text: entries never hold numbers in clear, only ``pn:`` pseudonyms.
_NUMBER_IN_TEXT = re.compile(r"\+[0-9][0-9 ()./-]{5,20}[0-9]")
_INF = 1 << 62


class Scope(NamedTuple):
    """What an entry applies to: every field it names must be equal (None names nothing)."""

    kind: str | None = None
    reason: str | None = None
    sender_id: str | None = None
    template_id: str | None = None
    entity_type: str | None = None
    entity_id: str | None = None

    def matches(self, subject: "Subject") -> bool:
        for mine, theirs in zip(self, subject):
            if mine is not None and mine != theirs:
                return False
        return True

    def rank(self) -> tuple[bool, ...]:
        """Larger is more specific: entity, template, sender, reason, entity type, kind (module docstring)."""
        return (self.entity_id is not None, self.template_id is not None, self.sender_id is not None,
                self.reason is not None, self.entity_type is not None, self.kind is not None)

    def as_dict(self) -> dict[str, str]:
        return {name: value for name, value in zip(SCOPE_FIELDS, self) if value is not None}

    def __str__(self) -> str:
        named = self.as_dict()
        return ", ".join(f"{k}={v}" for k, v in named.items()) if named else "everything (global default)"


class Subject(NamedTuple):
    """What a judgement or an alert is about, in the fields a scope names (None: not about one)."""

    kind: str
    reason: str | None = None
    sender_id: str | None = None
    template_id: str | None = None
    entity_type: str | None = None
    entity_id: str | None = None


def subject_of(record: dict) -> Subject:
    """The subject of an alert record (or a finding's fields)."""
    return Subject(record["kind"], record["reason"], record.get("sender_id"), record.get("template_id"),
                   record["entity_type"], record["entity_id"])


@dataclass(frozen=True, slots=True)
class Entry:
    """One version of one control entry, validated (``parse_entry``)."""

    id: str
    control: str
    scope: Scope
    ts: int
    set_by: str
    why: str
    until: int | None = None
    #: sensitivity
    level: str | None = None
    #: allow: what it allows, and the fields of that
    allow: str | None = None
    ceiling: float | None = None
    senders: frozenset[str] = frozenset()
    domains: tuple[str, ...] = ()
    callback_numbers: frozenset[str] = frozenset()
    devices: frozenset[str] = frozenset()
    networks: tuple[str, ...] = ()
    carriers: frozenset[str] = frozenset()
    #: ``networks`` parsed, for matching
    nets: tuple[Any, ...] = field(default=(), compare=False, repr=False)

    def in_force(self, t: int) -> bool:
        return self.ts <= t and (self.until is None or t < self.until)

    def value(self) -> dict[str, Any]:
        """The entry as it is written on the topic (its id is the record key)."""
        out: dict[str, Any] = {"control": self.control, "scope": self.scope.as_dict(), "set_by": self.set_by,
                               "why": self.why, "ts": self.ts}
        if self.until is not None:
            out["until"] = self.until
        if self.level is not None:
            out["level"] = self.level
        if self.allow is not None:
            out["allow"] = self.allow
            if self.ceiling is not None:
                out["ceiling"] = self.ceiling
            for name in ("senders", "domains", "callback_numbers", "devices", "networks", "carriers"):
                items = getattr(self, name)
                if items:
                    out[name] = sorted(items) if isinstance(items, frozenset) else list(items)
        return out

    def allows_domain(self, host: str) -> bool:
        """A listed domain allows itself and its subdomains."""
        return any(host == d or host.endswith("." + d) for d in self.domains)

    def allows_ip(self, ip: str | None) -> bool:
        if ip is None or not self.nets:
            return False
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in net for net in self.nets)


# --- parsing and validation -----------------------------------------------------------

def _bad(name: str, problem: str) -> RecordError:
    return RecordError(f"field '{name}' {problem}")


def _text(d: dict, name: str, limit: int, where: str = "", required: bool = True) -> str | None:
    value = d.get(name)
    shown = f"{where}{name}"
    if value is None:
        if required:
            raise _bad(shown, "is missing or null; it is required (string)")
        return None
    if not isinstance(value, str):
        raise _bad(shown, f"must be a string, got {json_type(value)}")
    if not value.strip():
        raise _bad(shown, "must not be empty")
    if len(value) > limit:
        raise TooLarge(f"field '{shown}' is {len(value)} characters long; at most {limit} accepted")
    if _NUMBER_IN_TEXT.search(value):
        raise _bad(shown, "holds what looks like a phone number; entries never hold numbers in clear: write its "
                          "pn: pseudonym (`smsstream config pseudonym NUMBER`)")
    return value



def _time(d: dict, name: str, required: bool) -> int | None:
    value = d.get(name)
    if value is None:
        if required:
            raise _bad(name, "is missing or null; it is required (integer, epoch ms)")
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(name, f"must be an integer (epoch ms), got {json_type(value)}")
    if not MIN_TS <= value < MAX_TS:
        hint = " (looks like seconds; write milliseconds)" if MIN_TS // 1000 <= value < MAX_TS // 1000 else ""
        raise _bad(name, f"is outside 2000-01-01..2100-01-01 in epoch ms{hint}")
    return value


def _names(d: dict, name: str, check: Callable[[str, int, Any], str] | None = None) -> tuple[str, ...]:
    """A list of 1 to ``MAX_LIST`` distinct non-empty strings; absent is empty."""
    value = d.get(name)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _bad(name, f"must be an array of strings, got {json_type(value)}")
    if not value:
        raise _bad(name, "must not be an empty array; leave it out instead")
    if len(value) > MAX_LIST:
        raise TooLarge(f"field '{name}' lists {len(value)} items; at most {MAX_LIST} accepted")
    out: list[str] = []
    for i, item in enumerate(value):
        text = _text({name: item}, name, MAX_NAME_CHARS, required=True) if check is None else check(name, i, item)
        if text is not None and text not in out:
            out.append(text)
    return tuple(out)


def _scope(d: dict, control: str) -> Scope:
    raw = d.get("scope")
    if raw is None:
        raise _bad("scope", "is missing or null; it is required (an object; {} is the global default)")
    if not isinstance(raw, dict):
        raise _bad("scope", f"must be an object, got {json_type(raw)}")
    allowed = ALLOW_SCOPE_FIELDS if control == ALLOW else SCOPE_FIELDS
    for name in raw:
        if name not in allowed:
            what = "an allow entry's scope names" if control == ALLOW else "a scope names"
            shown = name if isinstance(name, str) and len(name) <= 40 and not any(c.isdigit() for c in name) else "?"
            raise _bad(f"scope.{shown}", f"is not a scope field; {what} only {', '.join(allowed)}")
    values = {name: _text(raw, name, MAX_NAME_CHARS, "scope.", required=False) if name != "entity_id"
              else _entity_id(raw) for name in SCOPE_FIELDS}
    kind, reason, entity_type = values["kind"], values["reason"], values["entity_type"]
    if kind is not None and kind not in KINDS:
        raise _bad("scope.kind", f"has an unknown value; expected one of {', '.join(KINDS)}")
    if reason is not None:
        reasons = REASONS[kind] if kind is not None else tuple(r for rs in REASONS.values() for r in rs)
        if reason not in reasons:
            raise _bad("scope.reason", f"has an unknown value{' for kind ' + kind if kind else ''}; expected one of "
                                       f"{', '.join(reasons)}")
    if entity_type is not None and entity_type not in ENTITY_TYPES:
        raise _bad("scope.entity_type", f"has an unknown value; expected one of {', '.join(ENTITY_TYPES)}")
    entity_id = values["entity_id"]
    if entity_id is not None:
        if entity_type is None:
            raise _bad("scope.entity_id", "needs scope.entity_type beside it (an entity is its type and its id)")
        if entity_type == NUMBER and not _PSEUDONYM.match(entity_id):
            raise _bad("scope.entity_id", "must be a pn: pseudonym for a number (as alerts name it)")
    return Scope(kind, reason, values["sender_id"], values["template_id"], entity_type, entity_id)


def _entity_id(raw: dict) -> str | None:
    value = raw.get("entity_id")
    if isinstance(value, str) and _PSEUDONYM.match(value):
        return value
    if isinstance(value, str) and "|" in value:
        # an account: "<sender_id>|<account_id>", the account id a pseudonym if it is a number
        _text(raw, "entity_id", MAX_NAME_CHARS, "scope.")
        if _WHOLE_NUMBER.match(value.partition("|")[2]):
            raise _bad("scope.entity_id", "names an account by a phone number; write the account id as alerts "
                                          "show it, the number as its pn: pseudonym")
        return value
    return _text(raw, "entity_id", MAX_NAME_CHARS, "scope.", required=False)


def _pseudonyms(name: str, i: int, item: Any) -> str:
    if not isinstance(item, str) or not _PSEUDONYM.match(item):
        raise _bad(f"{name}[{i}]", "must be a pn: pseudonym (`smsstream config set` pseudonymises +E.164 numbers "
                                   "with SMSSTREAM_PSEUDONYM_KEY)")
    return item


def _domain(name: str, i: int, item: Any) -> str:
    text = _text({name: item}, name, MAX_NAME_CHARS)
    assert text is not None
    host = text.strip().lower().split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    host = host[4:] if host.startswith("www.") else host
    if "." not in host or not re.fullmatch(r"[a-z0-9.-]+", host):
        raise _bad(f"{name}[{i}]", "is not a domain name (write it as example.com)")
    return host


def _network(name: str, i: int, item: Any) -> str:
    if not isinstance(item, str):
        raise _bad(f"{name}[{i}]", f"must be a string, got {json_type(item)}")
    try:
        return str(ipaddress.ip_network(item.strip(), strict=False))
    except ValueError:
        raise _bad(f"{name}[{i}]", "is not an IP network (write 10.1.2.0/24 or 10.1.2.7)") from None


def _allow_fields(d: dict, scope: Scope) -> dict[str, Any]:
    allow = _text(d, "allow", MAX_NAME_CHARS)
    if allow not in ALLOWS:
        raise _bad("allow", f"has an unknown value; expected one of {', '.join(ALLOWS)}")
    out: dict[str, Any] = {"allow": allow}
    if allow == NON_BORROWER_SENDS:
        if scope.sender_id is None and scope.template_id is None:
            raise _bad("scope", "of a non_borrower_sends allowance names a sender_id or template_id")
        ceiling = d.get("ceiling")
        if isinstance(ceiling, bool) or not isinstance(ceiling, (int, float)):
            raise _bad("ceiling", "is required: the share of loan-obligation sends to non-borrowers (0 to 1) above "
                                  "which the sender or template still fires")
        if not 0 < ceiling < 1:
            raise _bad("ceiling", "must lie between 0 and 1 (a share: 0.3 is 30 %)")
        out["ceiling"] = float(ceiling)
    elif allow == PARTNER_SENDERS:
        if scope.template_id is None:
            raise _bad("scope", "of a partner_senders allowance names the template_id the partners may send")
        out["senders"] = frozenset(_names(d, "senders"))
        if not out["senders"]:
            raise _bad("senders", "is required: the sender ids allowed to send the template")
    elif allow == LINKS:
        if scope.sender_id is None and scope.template_id is None:
            raise _bad("scope", "of a links allowance names a sender_id or template_id")
        out["domains"] = _names(d, "domains", _domain)
        out["callback_numbers"] = frozenset(_names(d, "callback_numbers", _pseudonyms))
        if not out["domains"] and not out["callback_numbers"]:
            raise _bad("domains", "or 'callback_numbers' is required: what the sender's SMS may carry")
    elif allow == BULK_REBINDS:
        out["devices"] = frozenset(_names(d, "devices"))
        out["networks"] = _names(d, "networks", _network)
        if not out["devices"] and not out["networks"]:
            raise _bad("devices", "or 'networks' is required: the devices or IP networks that rebind in bulk")
        out["nets"] = tuple(ipaddress.ip_network(n) for n in out["networks"])
    else:
        out["carriers"] = frozenset(_names(d, "carriers"))
        if not out["carriers"]:
            raise _bad("carriers", "is required: the carriers whose failures are expected")
    return out


def parse_entry(key: bytes | str | None, raw: Any) -> Entry | None:
    """One record of ``sms.detector-config`` as an ``Entry``; None for a tombstone (removal).

    ``raw`` is the record's bytes or text, or an already parsed JSON value.
    Raises ``RecordError`` naming the field at fault; the message never
    repeats a value that may hold a phone number.
    """
    if isinstance(key, bytes):
        try:
            key = key.decode("utf-8")
        except UnicodeDecodeError:
            raise RecordError("the record key (the entry's id) is not valid UTF-8") from None
    if not key:
        raise RecordError("the record has no key; the key is the entry's id")
    if len(key) > MAX_ID_CHARS or not _ID.match(key) or _NUMBER_IN_TEXT.search(key):
        raise RecordError(f"the record key is not an entry id: 1 to {MAX_ID_CHARS} of A-Z a-z 0-9 . _ : @ / + = -, "
                          "starting with a letter or digit, not a phone number")
    if raw is None:
        return None
    if isinstance(raw, (bytes, str)):
        if len(raw) > MAX_RECORD_BYTES:
            raise TooLarge(f"record is {len(raw)} bytes; at most {MAX_RECORD_BYTES} accepted")
        try:
            raw = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidJson(f"value is not valid JSON: {str(exc).split(':')[0]}") from None
    if not isinstance(raw, dict):
        raise RecordError(f"value must be a JSON object, got {json_type(raw)}")
    d: dict = raw
    if "id" in d and d["id"] != key:
        raise _bad("id", "differs from the record key; the key is the entry's id (leave 'id' out)")
    control = _text(d, "control", MAX_NAME_CHARS)
    if control not in CONTROLS:
        raise _bad("control", f"has an unknown value; expected one of {', '.join(CONTROLS)}")
    scope = _scope(d, control)
    ts = _time(d, "ts", required=True)
    assert ts is not None
    until = _time(d, "until", required=control == SILENCE)
    if until is not None and until <= ts:
        raise _bad("until", "must be later than 'ts' (the entry would never be in force)")
    set_by = _text(d, "set_by", MAX_NAME_CHARS)
    why = _text(d, "why", MAX_TEXT_CHARS)
    assert set_by is not None and why is not None
    extra: dict[str, Any] = {}
    if control == SENSITIVITY:
        level = d.get("level")
        if level not in LEVELS:
            raise _bad("level", f"is missing or unknown; expected one of {', '.join(LEVELS)}")
        extra["level"] = level
    elif control == ALLOW:
        extra = _allow_fields(d, scope)
    elif control == SILENCE:
        if scope.entity_id is None and scope.sender_id is None and scope.template_id is None:
            raise _bad("scope", "of a silence names what it mutes: entity_type and entity_id (a dedup key), or a "
                                "sender_id or template_id")
    elif not scope.as_dict():
        raise _bad("scope", "of a shadow entry names a kind, reason, sender_id or template_id (a global shadow "
                            "would stop every page)")
    return Entry(key, control, scope, ts, set_by, why, until, **extra)


# --- the book ---------------------------------------------------------------------------

class InForce(NamedTuple):
    """An entry version and the event-time span it is in force for."""

    start: int
    end: int
    entry: Entry


class ControlBook:
    """Every control entry a worker (or a replay) knows, and what is in force at a given event time.

    Each id keeps its last ``MAX_VERSIONS`` versions: a version is in force
    from its ``ts`` until its ``until`` or the next version's ``ts``, so a
    change is exact in event time even for events read after it. Lookups walk
    the spans of one control, a few dozen at most; with no entries at all,
    ``active`` is False and the parts skip every lookup.
    """

    MAX_VERSIONS = 4

    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        self._versions: dict[str, list[Entry]] = {}
        self._spans: dict[str, list[InForce]] = {c: [] for c in CONTROLS}
        self.active = False
        #: the controls, and the things allowed, that some entry names: a part skips lookups for the others
        self.present: frozenset[str] = frozenset()
        #: bumped by every change, for whoever shows what a worker holds
        self.revision = 0
        for entry in entries:
            self.put(entry)

    def __len__(self) -> int:
        return len(self._versions)

    def put(self, entry: Entry) -> None:
        """A new version of an entry: in force from its ``ts``; versions from that time on are replaced."""
        kept = [v for v in self._versions.get(entry.id, ()) if v.ts < entry.ts]
        self._versions[entry.id] = (kept + [entry])[-self.MAX_VERSIONS:]
        self._rebuild()

    def remove(self, entry_id: str) -> bool:
        """A tombstone: the entry is gone, every version of it (the topic no longer has it either)."""
        if self._versions.pop(entry_id, None) is None:
            return False
        self._rebuild()
        return True

    def apply(self, entry_id: str, entry: Entry | None) -> None:
        if entry is None:
            self.remove(entry_id)
        else:
            self.put(entry)

    def entries(self) -> list[Entry]:
        """The latest version of every entry, by id."""
        return [versions[-1] for _, versions in sorted(self._versions.items())]

    def _rebuild(self) -> None:
        spans: dict[str, list[InForce]] = {c: [] for c in CONTROLS}
        for versions in self._versions.values():
            for i, v in enumerate(versions):
                end = versions[i + 1].ts if i + 1 < len(versions) else _INF
                if v.until is not None:
                    end = min(end, v.until)
                if end > v.ts:
                    spans[v.control].append(InForce(v.ts, end, v))
        self._spans = spans
        self.active = bool(self._versions)
        self.present = frozenset(x for vs in self._versions.values() for v in vs for x in (v.control, v.allow) if x)
        self.revision += 1

    def _matching(self, control: str, subject: Subject | None, t: int) -> list[Entry]:
        """Entries of ``control`` in force at ``t`` whose scope matches ``subject`` (None: whatever their scope)."""
        return [s.entry for s in self._spans[control]
                if s.start <= t < s.end and (subject is None or s.entry.scope.matches(subject))]

    def level(self, subject: Subject, t: int) -> tuple[str, tuple[str, ...]]:
        """The sensitivity level in force for ``subject`` at ``t``, and the id of the entry that set it."""
        found = self._matching(SENSITIVITY, subject, t) if self.active else []
        if not found:
            return NORMAL, ()
        best = max(found, key=_precedence)
        return best.level or NORMAL, (best.id,)

    def allowances(self, allow: str, subject: Subject | None, t: int) -> list[Entry]:
        """The ``allow`` entries of one kind (``allow``) in force for ``subject`` (None: for anything) at
        ``t``, most specific first."""
        if not self.active:
            return []
        found = [e for e in self._matching(ALLOW, subject, t) if e.allow == allow]
        return sorted(found, key=_precedence, reverse=True)

    def silences(self, subject: Subject, t: int) -> list[Entry]:
        return self._matching(SILENCE, subject, t) if self.active else []

    def shadows(self, subject: Subject, t: int) -> list[Entry]:
        return self._matching(SHADOW, subject, t) if self.active else []

    def mark(self, record: dict) -> dict:
        """Mark one alert record with the silences and shadows in force at its ``window_end``.

        Marks only: a silenced record carries ``silenced_until`` (the latest
        ``until`` of its silences) and a shadowed one ``shadow: true``, and
        both are still written; the notifier holds them back. ``controls``
        lists the ids of every entry that shaped the record.
        """
        if not self.active:
            return record
        subject = subject_of(record)
        t = record["window_end"]
        silences = self.silences(subject, t)
        shadows = self.shadows(subject, t)
        if not silences and not shadows:
            return record
        ids = list(record.get("controls", ()))
        if silences:
            record["silenced_until"] = max(e.until or _INF for e in silences)
            ids += sorted(e.id for e in silences)
        if shadows:
            record["shadow"] = True
            ids += sorted(e.id for e in shadows)
        record["controls"] = list(dict.fromkeys(ids))[:MAX_NAMED]
        return record


def _precedence(entry: Entry) -> tuple:
    return (entry.scope.rank(), entry.ts, entry.id)


def ids_of(entries: Iterable[Entry]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(e.id for e in entries))
