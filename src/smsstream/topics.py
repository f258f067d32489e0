"""Topic specs under ``topics/`` and ``smsstream topics apply``.

Each ``topics/<name>.json`` describes one topic of CONTRACT.md (partitions,
replication, cleanup, retention, key, value schema). ``apply`` creates what is
missing and only *reports* how existing topics differ: changing partitions
moves keys between partitions and changing cleanup can delete data, so those
stay a person's decision.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smsstream.errors import BrokerUnreachable, TopicSpecError
from smsstream.vocabulary import DAY_MS

CLEANUP_POLICIES = ("delete", "compact", "compact,delete")
#: ``control``: read whole by every worker outside its consumer group (``sms.detector-config``)
ROLES = ("input", "output", "control")
SPEC_FIELDS = {
    "name", "description", "role", "required", "partitions", "replication_factor",
    "cleanup_policy", "retention_ms", "key", "value",
}
DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"

TOPIC_ALREADY_EXISTS = 36  # Kafka protocol error code

#: Exit code of ``topics apply`` when an existing topic differs from its spec (nothing was changed).
EXIT_DIFFERS = 3


@dataclass(frozen=True)
class TopicSpec:
    name: str
    description: str
    role: str
    required: bool
    partitions: int
    replication_factor: int
    cleanup_policy: str
    retention_ms: int
    key_format: str
    key_description: str
    schema_path: Path
    tombstones: bool
    path: Path

    def configs(self) -> dict[str, str]:
        return {"cleanup.policy": self.cleanup_policy, "retention.ms": str(self.retention_ms)}

    def schema(self) -> dict:
        return json.loads(self.schema_path.read_text(encoding="utf-8"))


def default_dir() -> Path:
    """``topics/`` of the source tree this module runs from, else the copy an install carries, else ``./topics``."""
    env = os.environ.get("SMSSTREAM_TOPICS_DIR")
    if env:
        return Path(env)
    beside_source = Path(__file__).resolve().parents[2] / "topics"
    if beside_source.is_dir():
        return beside_source
    installed = Path(sys.prefix) / "share" / "smsstream" / "topics"  # the wheel's data files (pyproject.toml)
    return installed if installed.is_dir() else Path("topics")


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def load_spec(path: Path) -> TopicSpec:
    where = _shown(path)

    def fail(message: str) -> TopicSpecError:
        return TopicSpecError(f"{where}: {message}")

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"cannot read it ({exc.__class__.__name__})") from None
    except json.JSONDecodeError as exc:
        raise fail(f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise fail("must be a JSON object")
    unknown = sorted(set(data) - SPEC_FIELDS)
    if unknown:
        raise fail(f"unknown field '{unknown[0]}'; allowed: {', '.join(sorted(SPEC_FIELDS))}")
    for field in sorted(SPEC_FIELDS):
        if field not in data:
            raise fail(f"field '{field}' is missing")

    def string(value: Any, field: str) -> str:
        if not isinstance(value, str) or not value:
            raise fail(f"field '{field}' must be a non-empty string, got {json.dumps(value)}")
        return value

    def integer(field: str, minimum: int) -> int:
        value = data[field]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise fail(f"field '{field}' must be an integer >= {minimum}, got {json.dumps(value)}")
        return value

    def boolean(value: Any, field: str) -> bool:
        if not isinstance(value, bool):
            raise fail(f"field '{field}' must be true or false, got {json.dumps(value)}")
        return value

    name = string(data["name"], "name")
    if path.name != f"{name}.json":
        raise fail(f"field 'name' is '{name}' but the file is {path.name}; name the file {name}.json")
    role = string(data["role"], "role")
    if role not in ROLES:
        raise fail(f"field 'role' must be one of {', '.join(ROLES)}, got {json.dumps(role)}")
    cleanup = string(data["cleanup_policy"], "cleanup_policy")
    if cleanup not in CLEANUP_POLICIES:
        raise fail(f"field 'cleanup_policy' must be one of {', '.join(CLEANUP_POLICIES)}, got {json.dumps(cleanup)}")
    key = data["key"]
    if not isinstance(key, dict):
        raise fail("field 'key' must be an object with 'format' and 'description'")
    value = data["value"]
    if not isinstance(value, dict):
        raise fail("field 'value' must be an object with 'schema' and 'tombstones'")
    schema_path = path.parent / string(value.get("schema"), "value.schema")
    spec = TopicSpec(
        name=name,
        description=string(data["description"], "description"),
        role=role,
        required=boolean(data["required"], "required"),
        partitions=integer("partitions", 1),
        replication_factor=integer("replication_factor", 1),
        cleanup_policy=cleanup,
        retention_ms=integer("retention_ms", -1),
        key_format=string(key.get("format"), "key.format"),
        key_description=string(key.get("description"), "key.description"),
        schema_path=schema_path,
        tombstones=boolean(value.get("tombstones"), "value.tombstones"),
        path=path,
    )
    _check_schema(spec, fail)
    return spec


def _check_schema(spec: TopicSpec, fail) -> None:
    if not spec.schema_path.is_file():
        raise fail(f"field 'value.schema' names {_shown(spec.schema_path)}, which does not exist")
    try:
        schema = spec.schema()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise fail(f"field 'value.schema': {_shown(spec.schema_path)} is not valid JSON ({exc})") from None
    if not isinstance(schema, dict) or schema.get("$schema") != DRAFT_2020_12:
        raise fail(f"field 'value.schema': {_shown(spec.schema_path)} must declare \"$schema\": \"{DRAFT_2020_12}\"")
    try:
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError
    except ImportError:  # jsonschema is a test/tooling dependency, not a runtime one
        return
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise fail(f"field 'value.schema': {_shown(spec.schema_path)} is not a valid JSON Schema ({exc.message})") from None


def load_specs(directory: Path | None = None) -> list[TopicSpec]:
    """Every ``*.json`` spec directly under ``directory``, sorted by name."""
    directory = directory or default_dir()
    if not directory.is_dir():
        raise TopicSpecError(f"no topic specs at {_shown(directory)}; pass --specs DIR (the repository's topics/)")
    specs = [load_spec(path) for path in sorted(directory.glob("*.json"))]
    if not specs:
        raise TopicSpecError(f"{_shown(directory)} holds no *.json topic specs; pass --specs DIR")
    return specs


# --- apply -------------------------------------------------------------------

@dataclass
class Outcome:
    topic: str
    action: str  # created | unchanged | differs | failed
    notes: list[str]

    def line(self) -> str:
        return f"{self.topic:<24} {self.action:<9} " + "; ".join(self.notes)


def _retention(ms: int | str) -> str:
    ms = int(ms)
    if ms < 0:
        return "kept forever"
    days, rest = divmod(ms, DAY_MS)
    return f"kept {days} d" if not rest else f"kept {ms} ms"


async def apply(specs: list[TopicSpec], client_kwargs: dict[str, Any], timeout_s: float = 30.0) -> list[Outcome]:
    """Create missing topics; describe how existing ones differ from their spec. Changes nothing else."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
    from aiokafka.errors import KafkaConnectionError, KafkaError

    from smsstream.kafka import cannot_connect

    servers = ",".join(client_kwargs["bootstrap_servers"])
    admin = AIOKafkaAdminClient(**client_kwargs, request_timeout_ms=int(timeout_s * 1000))
    client_log = logging.getLogger("aiokafka")
    level = client_log.level
    client_log.setLevel(logging.CRITICAL)  # our one-line error below says it better than aiokafka's traceback
    try:
        await admin.start()
    except (KafkaConnectionError, OSError) as exc:
        await admin.close()
        raise BrokerUnreachable(cannot_connect(exc, client_kwargs)) from None
    finally:
        client_log.setLevel(level)
    try:
        cluster = await admin.describe_cluster()
        brokers = max(1, len(cluster.get("brokers") or []))
        existing = {t["topic"]: t for t in await admin.describe_topics()}
        outcomes: list[Outcome] = []
        for spec in specs:
            if spec.name in existing:
                outcomes.append(await _compare(admin, spec, existing[spec.name], ConfigResource, ConfigResourceType))
                continue
            replicas = min(spec.replication_factor, brokers)
            notes = [f"{spec.partitions} partitions", spec.cleanup_policy, _retention(spec.retention_ms)]
            if replicas < spec.replication_factor:
                notes.append(f"replication {replicas} (spec {spec.replication_factor}; the cluster has {brokers} broker(s))")
            response = await admin.create_topics([NewTopic(spec.name, spec.partitions, replicas, topic_configs=spec.configs())])
            errors = [e for e in response.to_object()["topic_errors"] if e["error_code"] != 0]
            if errors and errors[0]["error_code"] == TOPIC_ALREADY_EXISTS:
                outcomes.append(Outcome(spec.name, "unchanged", ["created by someone else meanwhile; run apply again to compare"]))
            elif errors:
                message = errors[0].get("error_message") or f"error code {errors[0]['error_code']}"
                outcomes.append(Outcome(spec.name, "failed", [f"broker refused to create it: {message}"]))
            else:
                outcomes.append(Outcome(spec.name, "created", notes))
        await _until_visible(admin, [o.topic for o in outcomes if o.action == "created"], timeout_s)
        return outcomes
    except KafkaError as exc:
        raise BrokerUnreachable(
            f"the broker at {servers} failed a request ({exc.__class__.__name__}: {exc}); check it is healthy "
            "and that SMSSTREAM_KAFKA_* security settings match it"
        ) from None
    finally:
        await admin.close()


async def _until_visible(admin, names: list[str], timeout_s: float) -> None:
    """Wait until new topics show in metadata with a leader for every partition.

    Apache Kafka acknowledges a creation before every broker's metadata has it;
    returning earlier would let the next step (a worker, a second apply) miss them.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    pending = set(names)
    while pending and loop.time() < deadline:
        for topic in await admin.describe_topics():
            partitions = topic.get("partitions") or []
            if topic["topic"] in pending and partitions and all(p.get("leader", -1) >= 0 for p in partitions):
                pending.discard(topic["topic"])
        if pending:
            await asyncio.sleep(0.2)


async def _compare(admin, spec: TopicSpec, metadata: dict, ConfigResource, ConfigResourceType) -> Outcome:
    diffs: list[str] = []
    notes: list[str] = []
    partitions = len(metadata.get("partitions") or [])
    if partitions != spec.partitions:
        diffs.append(
            f"has {partitions} partitions, spec says {spec.partitions} "
            "(left as is: changing partitions moves keys; alter it yourself if intended)"
        )
    else:
        notes.append(f"{partitions} partitions")
    responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, spec.name)])
    entries = {
        entry["config_names"]: entry["config_value"]
        for response in responses
        for resource in response.to_object()["resources"]
        for entry in resource.get("config_entries") or []
    }
    for config, wanted in spec.configs().items():
        actual = entries.get(config)
        if actual is None:
            notes.append(f"{config} not reported by broker")
        elif config == "cleanup.policy" and set(actual.split(",")) != set(wanted.split(",")):
            diffs.append(f"cleanup.policy is {actual}, spec says {wanted} (left as is)")
        elif config == "retention.ms" and int(actual) != int(wanted):
            diffs.append(f"retention.ms is {actual} ({_retention(actual)}), spec says {wanted} ({_retention(wanted)}) (left as is)")
        else:
            notes.append(actual if config == "cleanup.policy" else _retention(actual))
    if diffs:
        return Outcome(spec.name, "differs", diffs + notes)
    return Outcome(spec.name, "unchanged", ["as specified: " + ", ".join(notes)])


def apply_topics(broker: str | None = None, directory: Path | None = None, settings=None) -> list[Outcome]:
    """Synchronous ``apply`` from settings, for the demo and tests."""
    from smsstream.config import Settings
    from smsstream.kafka import client_kwargs

    settings = settings or Settings.from_env()
    return asyncio.run(apply(load_specs(directory), client_kwargs(settings, broker)))


# --- documentation -----------------------------------------------------------

def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|")


def _type_text(prop: dict) -> str:
    types = prop.get("type", "any")
    types = [types] if isinstance(types, str) else list(types)
    words = {"integer": "int", "null": "null"}
    return " or ".join(words.get(t, t) for t in types)


def _rules(prop: dict) -> str:
    rules = []
    if "enum" in prop:
        rules.append("one of " + ", ".join(f"`{v}`" for v in prop["enum"] if v is not None))
    if "pattern" in prop:
        rules.append(f"matches `{prop['pattern']}`")
    if "minLength" in prop and prop["minLength"] > 0:
        rules.append("not empty")
    if "maxLength" in prop:
        rules.append(f"≤ {prop['maxLength']} characters")
    if "minimum" in prop and "exclusiveMaximum" in prop:
        rules.append(f"in [{prop['minimum']}, {prop['exclusiveMaximum']})")
    if isinstance(prop.get("properties"), dict):
        rules.append("fields " + ", ".join(f"`{k}`" for k in prop["properties"]))
    return "; ".join(rules)


def render_markdown(specs: list[TopicSpec]) -> str:
    """``topics/README.md``: the contract as this repository implements it, generated from the specs."""
    out = [
        "<!-- Generated by `smsstream topics doc > topics/README.md` from the specs in this folder; do not edit. -->",
        "# Topics",
        "",
        "One spec per topic (`<name>.json`) and one JSON Schema (draft 2020-12) per message type",
        "(`schemas/`). `smsstream topics apply` creates missing topics from these specs and reports",
        "how existing ones differ, changing nothing. Values are UTF-8 JSON objects; unknown extra",
        "fields are accepted and ignored. Besides what the schemas say, a record over 64 KiB is",
        "dead-lettered before it is parsed. Timestamps are event time in epoch milliseconds;",
        "numbers are E.164 on input and `pn:` pseudonyms on output.",
        "",
        "| topic | role | partitions | cleanup | retention | key | value |",
        "|---|---|---|---|---|---|---|",
    ]
    specs = sorted(specs, key=lambda spec: (ROLES.index(spec.role), spec.name))
    for spec in specs:
        role = spec.role if spec.required else f"{spec.role} (optional)"
        value = f"[`{spec.schema_path.name}`](schemas/{spec.schema_path.name})"
        if spec.tombstones:
            value += ", tombstones"
        out.append(
            f"| `{spec.name}` | {role} | {spec.partitions} | {spec.cleanup_policy} | {_retention(spec.retention_ms)} "
            f"| `{_cell(spec.key_format)}` | {value} |"
        )
    out.append("")
    out.append(f"Replication factor {specs[0].replication_factor} where the cluster has enough brokers, else as many as it has.")
    for spec in specs:
        schema = spec.schema()
        required = set(schema.get("required", []))
        out += ["", f"## `{spec.name}`", "", spec.description, "", f"Key: `{spec.key_format}`: {spec.key_description}.", ""]
        out.append(schema.get("description", ""))
        out += ["", "| field | type | required | rules | notes |", "|---|---|---|---|---|"]
        for field, prop in schema.get("properties", {}).items():
            out.append(
                f"| `{field}` | {_type_text(prop)} | {'yes' if field in required else 'no'} | {_cell(_rules(prop))} "
                f"| {_cell(prop.get('description', ''))} |"
            )
    return "\n".join(out) + "\n"


# --- command line ------------------------------------------------------------

def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    apply_ = actions.add_parser("apply", help="create missing topics; report how existing ones differ (changes nothing else)")
    apply_.add_argument("--broker", help="Kafka bootstrap URL(s), Faust form (default: SMSSTREAM_BROKER or kafka://127.0.0.1:9092)")
    apply_.add_argument("--specs", type=Path, help="folder of topic specs (default: the repository's topics/)")
    doc = actions.add_parser("doc", help="print topics/README.md, the contract generated from the specs")
    doc.add_argument("--specs", type=Path, help="folder of topic specs (default: the repository's topics/)")


def run(args: argparse.Namespace) -> int:
    if args.action == "doc":
        sys.stdout.write(render_markdown(load_specs(args.specs)))
        return 0
    from smsstream.config import Settings
    from smsstream.kafka import client_kwargs

    settings = Settings.from_env()
    specs = load_specs(args.specs)
    kwargs = client_kwargs(settings, args.broker)
    print(f"applying {len(specs)} topic specs to {','.join(kwargs['bootstrap_servers'])}", flush=True)
    outcomes = asyncio.run(apply(specs, kwargs))
    for outcome in outcomes:
        print(outcome.line())
    counts = {action: sum(o.action == action for o in outcomes) for action in ("created", "unchanged", "differs", "failed")}
    print(", ".join(f"{n} {action}" for action, n in counts.items()))
    if counts["failed"]:
        return 1
    return EXIT_DIFFERS if counts["differs"] else 0
