"""``smsstream replay EVENTS.jsonl -o ALERTS.jsonl``: the detectors offline, no broker.

Each input line is ``{"topic": ..., "value": ..., "key": ...}`` (CONTRACT.md):
``value`` is a record object, or a string holding the raw record text as it
would arrive from Kafka (possibly not valid JSON), or null (a tombstone;
``key`` then names the borrower pair ``<sender_id>|<number>``). Records are
decoded with ``records.decode`` and fed to ``detection.engine.Engine`` in
file order; unusable ones (malformed, duplicate, too late) are written to
``--dead-letter`` in the ``sms.dead-letter`` form, with ``partition`` null
and ``offset`` the 1-based line number. Alert records are written one JSON
object a line, exactly as on ``sms.alerts``; ``detected_at`` is the wall
clock at writing, everything else depends only on the input and the key.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Iterable

import orjson

from smsstream.config import Settings
from smsstream.detection.alerts import stamp
from smsstream.detection.driver import fewer_gc_passes
from smsstream.detection.engine import Engine
from smsstream.errors import ConfigError, InvalidJson, RecordError
from smsstream.records import dead_letter, decode

PROGRESS_EVERY_S = 2.0

@dataclass
class ReplayReport:
    lines: int = 0
    events: int = 0
    alerts: int = 0
    dead_letters: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.lines / self.seconds if self.seconds > 0 else 0.0


def _split_line(line: bytes) -> tuple[str, Any, Any]:
    """Split one input line into (topic, value, key), or raise RecordError naming the problem."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise InvalidJson("replay line is not valid JSON; expected {\"topic\": ..., \"value\": ...}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("topic"), str):
        raise RecordError("replay line has no string 'topic'; expected {\"topic\": ..., \"value\": ...}")
    if "value" not in obj:
        raise RecordError("replay line has no 'value'; use null for a tombstone")
    return obj["topic"], obj["value"], obj.get("key")


def replay_lines(
    lines: Iterable[bytes],
    engine: Engine,
    write_alert: Callable[[dict], None],
    write_dead_letter: Callable[[dict], None] | None = None,
    progress: Callable[[ReplayReport], None] | None = None,
) -> ReplayReport:
    """Feed replay lines to ``engine``; the CLI and the tests share this loop."""
    with fewer_gc_passes():
        return _feed(lines, engine, write_alert, write_dead_letter, progress)


def _feed(
    lines: Iterable[bytes],
    engine: Engine,
    write_alert: Callable[[dict], None],
    write_dead_letter: Callable[[dict], None] | None,
    progress: Callable[[ReplayReport], None] | None,
) -> ReplayReport:
    report = ReplayReport()
    dead = report.dead_letters
    started = time.perf_counter()
    next_progress = started + PROGRESS_EVERY_S
    ingest = engine.ingest
    loads = orjson.loads
    lineno = 0
    for lineno, line in enumerate(lines, 1):
        topic: str = "unknown"
        value: Any = line
        try:
            try:
                obj = loads(line)
                if obj["topic"].__class__ is not str:
                    raise TypeError
                topic, value = obj["topic"], obj["value"]
            except Exception:  # anything short of a plain line: skip it if blank, else let _split_line name it
                if not line.strip():
                    continue
                topic, value, key = _split_line(line)
            else:
                key = obj.get("key")
            record = decode(topic, value, key)
            alerts = ingest(topic, record)
        except RecordError as exc:
            dead[exc.reason] = dead.get(exc.reason, 0) + 1
            if write_dead_letter is not None:
                write_dead_letter(dead_letter(topic, None, lineno, str(exc), value))
            continue
        report.events += 1
        if alerts:
            for alert in alerts:
                write_alert(alert)
            report.alerts += len(alerts)
        if progress is not None and not lineno & 0xFFFF:
            now = time.perf_counter()
            if now >= next_progress:
                report.lines, report.seconds = lineno, now - started
                progress(report)
                next_progress = now + PROGRESS_EVERY_S
    for alert in engine.flush():
        write_alert(alert)
        report.alerts += 1
    report.lines = lineno
    report.seconds = time.perf_counter() - started
    return report


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("events", help="JSONL input, one {\"topic\", \"value\"[, \"key\"]} per line ('-' for stdin)")
    parser.add_argument("-o", "--output", required=True, help="where to write alert records (JSONL; '-' for stdout)")
    parser.add_argument("--dead-letter", metavar="DL.jsonl",
                        help="where to write unusable input records in the sms.dead-letter form")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _open_out(path: str) -> IO[bytes]:
    return sys.stdout.buffer if path == "-" else open(path, "wb")


def run(args: argparse.Namespace) -> int:
    engine = Engine.from_settings(Settings.from_env())
    try:
        source = sys.stdin.buffer if args.events == "-" else open(args.events, "rb")
    except OSError as exc:
        raise ConfigError(f"cannot read events file {args.events!r}: {exc.strerror}") from None
    out = _open_out(args.output)
    dl_out = open(args.dead_letter, "wb") if args.dead_letter else None

    def write_alert(record: dict) -> None:
        out.write(orjson.dumps(stamp(record)) + b"\n")

    def write_dead_letter(record: dict) -> None:
        if dl_out is not None:
            dl_out.write(orjson.dumps(record) + b"\n")

    def progress(r: ReplayReport) -> None:
        print(f"replay: {r.lines:,} lines, {r.rate:,.0f} lines/s, {r.alerts} alert records",
              file=sys.stderr, flush=True)

    try:
        report = replay_lines(source, engine, write_alert, write_dead_letter, None if args.quiet else progress)
    finally:
        if source is not sys.stdin.buffer:
            source.close()
        if out is not sys.stdout.buffer:
            out.close()
        else:
            out.flush()
        if dl_out is not None:
            dl_out.close()
    counters = engine.counters()
    dead = ", ".join(f"{k} {v}" for k, v in sorted(report.dead_letters.items())) or "none"
    alerts = counters["alerts"]
    print(
        f"replay: {report.lines:,} lines in {report.seconds:.1f} s ({report.rate:,.0f} lines/s); "
        f"{report.events:,} events used; alert records: {alerts.get('firing', 0)} firing, "
        f"{alerts.get('resolved', 0)} resolved; dead letters: {dead}"
        + ("" if args.dead_letter or not report.dead_letters else " (use --dead-letter FILE to keep them)")
        + f"; receipts never matched: {counters.get('unmatched_receipts', 0) + counters.get('unmatched_receipts_at_end', 0)}",
        file=sys.stderr,
    )
    return 0
