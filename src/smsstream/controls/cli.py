"""``smsstream config``: show, set, validate and remove operator control entries (``sms.detector-config``).

    smsstream config show [--json]
    smsstream config set ID sensitivity --level high --kind non_borrower_spike --why "..."
    smsstream config set ID silence --dedup-key non_borrower_spike/sender/acme --until +4h --why "..."
    smsstream config set ID allow partner_senders --template T7 --partner acme-sub --why "..."
    smsstream config set ID shadow --reason volume_burst --why "..." --dry-run events.jsonl
    smsstream config set --file entries.jsonl
    smsstream config validate [FILE]
    smsstream config remove ID
    smsstream config pseudonym +919876543210

Every entry is checked by the model the workers use (``detection.controls``)
before it is written. ``set`` stamps ``ts`` ``LEAD_S`` seconds ahead by
default: every worker reads a change within a second or two, so the entry is
in force on all of them before the first event it applies to is judged, and
replay of the same events with the same entries agrees (docs/controls.md,
"When a change takes effect"). Phone numbers given in clear (``--entity-id``
of a number, ``--callback-number``) are written as their ``pn:`` pseudonyms.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import re
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from smsstream.config import Settings
from smsstream.controls.dryrun import describe, dry_run
from smsstream.controls.store import (
    apply_record, book_from_topic, entry_line, entry_lines, read_file, read_topic, write_records,
)
from smsstream.detection.controls import (
    ALLOW, ALLOWS, CONTROLS, LEVELS, MIN_TS, SCOPE_FIELDS, ControlBook, Entry, parse_entry,
)
from smsstream.errors import ConfigError, RecordError
from smsstream.pseudonym import Pseudonymizer
from smsstream.records import E164
from smsstream.vocabulary import ENTITY_TYPES, KINDS, NUMBER, REASONS

#: ``set`` puts an entry in force this long after it is written, unless ``--from`` says otherwise.
LEAD_S = 5

_RELATIVE = re.compile(r"\+(\d+(?:\.\d+)?)([smhd])\Z")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str, now_ms: int) -> int:
    """``now``, ``+30m``/``+4h``/``+2d``, epoch ms, or an ISO 8601 time (UTC unless it says otherwise)."""
    text = text.strip()
    if text == "now":
        return now_ms
    m = _RELATIVE.match(text)
    if m:
        return now_ms + int(float(m.group(1)) * _UNIT_S[m.group(2)] * 1000)
    if text.isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"time {text!r}: write now, +30m, +4h, +2d, epoch ms or 2026-03-05T18:00Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp() * 1000)


def shown_time(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


# --- command line --------------------------------------------------------------------

def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="the entries on sms.detector-config (or in a file)")
    show.add_argument("--json", action="store_true", help="one entry a line, the form --config and --file read")
    show.add_argument("--config", metavar="ENTRIES.jsonl", help="show a file of entries instead of the topic")

    put = actions.add_parser("set", help="write an entry (or --file of them), after checking it")
    put.add_argument("id", nargs="?", help="the entry's id (the record key): a new value for an id replaces it")
    put.add_argument("control", nargs="?", choices=CONTROLS)
    put.add_argument("what", nargs="?", choices=ALLOWS, help="for allow: what is expected")
    put.add_argument("--file", type=Path, help="write every entry of this file instead (one JSON object a line)")
    scope = put.add_argument_group("scope (what the entry applies to; none: everything)")
    scope.add_argument("--kind", choices=KINDS)
    scope.add_argument("--reason", choices=[r for rs in REASONS.values() for r in rs])
    scope.add_argument("--sender", dest="sender_id")
    scope.add_argument("--template", dest="template_id")
    scope.add_argument("--entity-type", choices=ENTITY_TYPES)
    scope.add_argument("--entity-id", help="as alerts name it; a number may be given in clear (+E.164)")
    scope.add_argument("--dedup-key", help="an alert's dedup_key: kind/entity_type/entity_id")
    fields = put.add_argument_group("the control's fields")
    fields.add_argument("--level", choices=LEVELS, help="sensitivity")
    fields.add_argument("--ceiling", type=float, help="allow non_borrower_sends: the share still expected (0.3)")
    fields.add_argument("--partner", dest="senders", action="append", help="allow partner_senders (repeatable)")
    fields.add_argument("--domain", dest="domains", action="append", help="allow links (repeatable)")
    fields.add_argument("--callback-number", dest="callback_numbers", action="append",
                        help="allow links: +E.164 as the SMS carries it, or its pn: (repeatable)")
    fields.add_argument("--device", dest="devices", action="append", help="allow bulk_rebinds (repeatable)")
    fields.add_argument("--network", dest="networks", action="append", help="allow bulk_rebinds: CIDR (repeatable)")
    fields.add_argument("--carrier", dest="carriers", action="append", help="allow carrier_failures (repeatable)")
    when = put.add_argument_group("who, why, when")
    when.add_argument("--why", help="why (required)")
    when.add_argument("--by", help="who sets it (default: $SMSSTREAM_OPERATOR, else the login name)")
    when.add_argument("--from", dest="start", help=f"in force from (default: {LEAD_S} s from now): now, +30m, "
                                                   "2026-03-05T18:00Z, epoch ms")
    when.add_argument("--until", help="in force until (required for a silence): +4h, 2026-03-05T18:00Z, epoch ms")
    _dry_run_options(put)

    validate = actions.add_parser("validate", help="check a file of entries (or, without one, the topic)")
    validate.add_argument("file", nargs="?", type=Path)

    remove = actions.add_parser("remove", help="remove an entry (a tombstone for its id)")
    remove.add_argument("id")
    _dry_run_options(remove)

    pseudonym = actions.add_parser("pseudonym", help="a number's pn: pseudonym (SMSSTREAM_PSEUDONYM_KEY)")
    pseudonym.add_argument("number")


def _dry_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", metavar="EVENTS.jsonl", type=Path,
                        help="write nothing: replay this file with and without the change and print which alerts "
                             "would appear, disappear, change severity or be marked")
    parser.add_argument("--config", metavar="ENTRIES.jsonl",
                        help="with --dry-run: the entries in force now, from this file instead of the topic")
    parser.add_argument("--quiet", action="store_true", help="with --dry-run: no progress lines")


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    action = args.action
    if action == "show":
        return _show(args, settings)
    if action == "set":
        return _set(args, settings)
    if action == "validate":
        return _validate(args, settings)
    if action == "remove":
        return _remove(args, settings)
    print(Pseudonymizer(settings.require_pseudonym_key()).pseudonym(_e164(args.number, "number")))
    return 0


# --- actions ------------------------------------------------------------------------

def _show(args: argparse.Namespace, settings: Settings) -> int:
    if args.config:
        book, invalid = read_file(args.config), 0
    else:
        book, invalid = ControlBook(), 0
        records, _ = asyncio.run(read_topic(settings))
        for record in records:
            invalid += apply_record(book, record) == "invalid"
    entries = book.entries()
    if args.json:
        for entry in entries:
            sys.stdout.buffer.write(entry_line(entry) + b"\n")
        return 0
    now = int(time.time() * 1000)
    print(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}"
          + (f"; {invalid} invalid record(s) left out (`smsstream config validate` names them)" if invalid else ""))
    for entry in entries:
        state = ("scheduled" if entry.ts > now else "ended" if entry.until is not None and entry.until <= now
                 else "in force")
        print(f"\n{entry.id}  [{state}]  {entry.control}{' ' + entry.allow if entry.allow else ''}"
              f"{' ' + entry.level if entry.level else ''}")
        print(f"  applies to  {entry.scope}")
        details = {k: v for k, v in entry.value().items() if k not in ("control", "scope", "set_by", "why", "ts",
                                                                     "until", "level", "allow")}
        for name, value in details.items():
            print(f"  {name:<11} {', '.join(map(str, value)) if isinstance(value, list) else value}")
        print(f"  from        {shown_time(entry.ts)}    until {shown_time(entry.until)}")
        print(f"  set by      {entry.set_by}: {entry.why}")
    return 0


def _set(args: argparse.Namespace, settings: Settings) -> int:
    if args.file is not None:
        if args.id or args.control:
            raise ConfigError("give either --file or an entry (ID CONTROL ...), not both")
        entries = _file_entries(args.file)
    else:
        entries = [build_entry(args, settings, int(time.time() * 1000))]
    if args.dry_run is not None:
        now = _book_now(args, settings)
        if args.file is None and not args.start:
            # a replay file is usually history: the entry is tried on all of it unless --from says otherwise
            entries = [replace(entries[0], ts=MIN_TS)]
            print("dry run: the entry applies to the whole file (--from applies it from a time)", file=sys.stderr)
        changed = ControlBook(now.entries())
        for entry in entries:
            changed.put(entry)
        print(describe(dry_run(args.dry_run, settings, now, changed, args.quiet)))
        return 0
    asyncio.run(write_records(settings, [(e.id, e.value()) for e in entries]))
    for entry in entries:
        print(f"written {entry.id}: {entry.control}{' ' + entry.allow if entry.allow else ''} for {entry.scope}, "
              f"in force from {shown_time(entry.ts)} until {shown_time(entry.until)}")
    return 0


def _remove(args: argparse.Namespace, settings: Settings) -> int:
    if args.dry_run is not None:
        now = _book_now(args, settings)
        changed = ControlBook([e for e in now.entries() if e.id != args.id])
        if len(changed) == len(now):
            print(f"note: no entry {args.id} is in force now", file=sys.stderr)
        print(describe(dry_run(args.dry_run, settings, now, changed, args.quiet)))
        return 0
    parse_entry(args.id, None)  # checks the id
    asyncio.run(write_records(settings, [(args.id, None)]))
    print(f"removed {args.id}: every worker stops applying it within seconds")
    return 0


def _validate(args: argparse.Namespace, settings: Settings) -> int:
    bad = 0
    count = 0
    if args.file is not None:
        try:
            lines = args.file.read_bytes().splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read {args.file}: {exc.strerror or exc}") from None
        try:
            for lineno, key, value in entry_lines(lines):
                count += 1
                try:
                    parse_entry(key, value)
                except RecordError as exc:
                    bad += 1
                    print(f"{args.file}:{lineno}: {key}: {exc}")
        except RecordError as exc:
            bad += 1
            print(f"{args.file}: {exc}")
    else:
        records, _ = asyncio.run(read_topic(settings))
        for record in records:
            count += 1
            try:
                parse_entry(record.key, record.value)
            except RecordError as exc:
                bad += 1
                key = record.key.decode(errors="replace") if record.key else "(no key)"
                print(f"partition {record.partition} offset {record.offset}: {key}: {exc}")
    where = str(args.file) if args.file is not None else "sms.detector-config"
    print(f"{where}: {count - bad} valid, {bad} invalid")
    return 1 if bad else 0


# --- building an entry ---------------------------------------------------------------

def build_entry(args: argparse.Namespace, settings: Settings, now_ms: int) -> Entry:
    """The entry the ``set`` options describe, checked by the workers' own model."""
    if not args.id or not args.control:
        raise ConfigError("set needs ID and CONTROL (sensitivity, allow, silence, shadow), or --file")
    if not args.why:
        raise ConfigError("--why is required: say why, for whoever reads the entry next")
    if args.control == ALLOW and not args.what:
        raise ConfigError(f"allow needs what it allows: one of {', '.join(ALLOWS)}")
    value: dict[str, Any] = {
        "control": args.control,
        "scope": _scope(args, settings),
        "set_by": args.by or os.environ.get("SMSSTREAM_OPERATOR") or getpass.getuser(),
        "why": args.why,
        "ts": parse_time(args.start, now_ms) if args.start else now_ms + LEAD_S * 1000,
    }
    if args.until:
        value["until"] = parse_time(args.until, now_ms)
    if args.level:
        value["level"] = args.level
    if args.control == ALLOW:
        value["allow"] = args.what
        if args.ceiling is not None:
            value["ceiling"] = args.ceiling
        for name in ("senders", "domains", "devices", "networks", "carriers"):
            if getattr(args, name):
                value[name] = getattr(args, name)
        if args.callback_numbers:
            value["callback_numbers"] = [n if n.startswith("pn:") else _pseudonym(settings, n, "--callback-number")
                                         for n in args.callback_numbers]
    try:
        entry = parse_entry(args.id, value)
    except RecordError as exc:
        raise ConfigError(f"{exc} (nothing written)") from None
    assert entry is not None
    return entry


def _scope(args: argparse.Namespace, settings: Settings) -> dict[str, str]:
    scope = {name: getattr(args, name, None) for name in SCOPE_FIELDS if name not in ("entity_type", "entity_id")}
    scope["entity_type"] = args.entity_type
    scope["entity_id"] = args.entity_id
    if args.dedup_key:
        parts = args.dedup_key.split("/", 2)
        if len(parts) != 3 or not all(parts):
            raise ConfigError(f"--dedup-key {args.dedup_key!r}: write it as alerts do, kind/entity_type/entity_id")
        scope["kind"], scope["entity_type"], scope["entity_id"] = parts
    if scope["entity_type"] == NUMBER and scope["entity_id"] and not scope["entity_id"].startswith("pn:"):
        scope["entity_id"] = _pseudonym(settings, scope["entity_id"], "--entity-id")
    return {k: v for k, v in scope.items() if v}


def _e164(number: str, what: str) -> str:
    compact = re.sub(r"[\s()./-]", "", number)
    if not E164.match(compact):
        raise ConfigError(f"{what}: not an E.164 number ('+' then 7 to 15 digits)")
    return compact


def _pseudonym(settings: Settings, number: str, what: str) -> str:
    return Pseudonymizer(settings.require_pseudonym_key()).pseudonym(_e164(number, what))


def _file_entries(path: Path) -> list[Entry]:
    """Every entry of a file, all checked before any is written (a removal line is refused here)."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    entries = []
    try:
        for lineno, key, value in entry_lines(lines):
            try:
                entry = parse_entry(key, value)
            except RecordError as exc:
                raise ConfigError(f"{path}:{lineno}: {exc} (nothing written)") from None
            if entry is None:
                raise ConfigError(f"{path}:{lineno}: a removal; use `smsstream config remove {key}`")
            entries.append(entry)
    except RecordError as exc:
        raise ConfigError(f"{path}: {exc} (nothing written)") from None
    return entries


def _book_now(args: argparse.Namespace, settings: Settings) -> ControlBook:
    """The entries a dry run compares against: ``--config FILE``, else the topic."""
    if args.config:
        return read_file(args.config)
    return book_from_topic(settings)
