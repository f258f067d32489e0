"""topics/ says what CONTRACT.md says: the same topics, fields, types, enums, keys and compaction.

CONTRACT.md lives outside the repository, in ``../shared/`` beside the clone
(CI puts it there; ``SMSSTREAM_CONTRACT`` may point elsewhere). Its tables are
parsed, so renaming or retyping a field on either side fails here. Without the
file these tests skip on a developer's machine and fail in CI (``CI`` set).
The alert words of ``smsstream.vocabulary`` are checked against both.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from smsstream import vocabulary
from smsstream.simulate.attacks import KINDS as SIMULATED_KINDS
from smsstream.topics import default_dir, load_specs, render_markdown

REPO = Path(__file__).resolve().parents[1]
CONTRACT = Path(os.environ.get("SMSSTREAM_CONTRACT", REPO.parent / "shared" / "CONTRACT.md"))

TYPES = {"string": "string", "int": "integer", "number": "number", "object": "object", "null": "null"}


@dataclass
class ContractTopic:
    name: str
    text: str = ""
    fields: dict[str, tuple[set[str], str]] = field(default_factory=dict)  # field -> (json types, notes)


def parse_contract(text: str) -> dict[str, ContractTopic]:
    topics: dict[str, ContractTopic] = {}
    current: ContractTopic | None = None
    for line in text.splitlines():
        heading = re.match(r"^###\s+`([a-z.\-]+)`", line)
        if heading:
            current = topics.setdefault(heading.group(1), ContractTopic(heading.group(1)))
        elif line.startswith("## "):
            current = None
        if current is None:
            continue
        current.text += line + "\n"
        row = re.match(r"^\|\s*(`[^|]+`)\s*\|\s*([^|]+?)\s*\|\s*(.*?)\s*\|\s*$", line)
        if row:
            types = {TYPES[word] for word in row.group(2).split(" or ")}
            for name in re.findall(r"`([a-z_]+)`", row.group(1)):
                current.fields[name] = (types, row.group(3))
        value_line = re.match(r"^Key: .*Value: `\{(.*)\}`", line)
        if value_line:
            for name in re.findall(r'"([a-z_]+)"', value_line.group(1)):
                current.fields[name] = (set(), "")
    return topics


def enumerated(notes: str) -> set[str]:
    """The values of a list like "`a`, `b` or `c`" (", plus" too); a lone backticked word is not a list."""
    run = re.search(r"`\w+`(?:(?:,| or|, plus| plus) `\w+`)+", notes)
    return set(re.findall(r"`(\w+)`", run.group(0))) if run else set()


def contract_text() -> str:
    """CONTRACT.md's text; without the file a test skips, or fails in CI."""
    if not CONTRACT.is_file():
        message = f"CONTRACT.md not found at {CONTRACT}; clone shared/ beside the repository or set SMSSTREAM_CONTRACT"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return CONTRACT.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def contract() -> dict[str, ContractTopic]:
    return parse_contract(contract_text())


@pytest.fixture(scope="module")
def specs():
    return {spec.name: spec for spec in load_specs()}


def test_the_contract_parser_finds_every_topic_and_its_fields(contract):
    assert {"sms.sends", "sms.alerts", "sms.dead-letter"} <= set(contract)
    assert contract["sms.sends"].fields["template_id"][0] == {"string", "null"}
    assert contract["sms.alerts"].fields["window_end"][0] == {"integer"}
    assert set(contract["sms.dead-letter"].fields) == {"topic", "partition", "offset", "error", "raw"}
    assert len(enumerated(contract["sms.sends"].fields["category"][1])) == 8
    assert enumerated(contract["sms.alerts"].fields["status"][1]) == {"firing", "resolved"}
    assert enumerated(contract["sms.alerts"].fields["alert_id"][1]) == set()


def control_section(text: str) -> tuple[str, str]:
    """The control topic's name and prose: CONTRACT.md describes it in words, not in a table."""
    section = text.split("\n## Control topic", 1)[1].split("\n## ", 1)[0]
    name = re.search(r"\*\*`([a-z.\-]+)`\*\*", section)
    assert name, "CONTRACT.md's control topic section names no topic in bold"
    return name.group(1), " ".join(section.split())


def test_topics_folder_describes_exactly_the_contracts_topics(contract, specs):
    control, _ = control_section(contract_text())
    assert set(specs) == set(contract) | {control}


def test_the_control_topic_is_specified_as_the_contract_describes_it(specs):
    name, prose = control_section(contract_text())
    spec = specs[name]
    assert spec.role == "control" and spec.tombstones and "compact" in spec.cleanup_policy.split(",")
    assert "id" in spec.key_format and "entry's id" in prose
    schema = spec.schema()
    properties = schema["properties"]
    controls = re.search(r"`control` \(([^)]*)\)", prose).group(1)
    assert set(properties["control"]["enum"]) == set(re.findall(r"`(\w+)`", controls))
    scope = re.search(r"`scope` \(an object naming any of ([^;]*);", prose).group(1)
    assert set(properties["scope"]["properties"]) == set(re.findall(r"`(\w+)`", scope))
    assert {"control", "scope", "set_by", "why", "ts"} <= set(schema["required"])
    assert "until" in properties and "until" not in schema["required"]
    assert properties["ts"]["type"] == properties["until"]["type"] == "integer"


def test_the_optional_alert_fields_of_the_controls_are_in_the_alert_schema_and_optional(specs):
    text = contract_text()
    prose = " ".join(text.split("Optional alert fields", 1)[1].split("\n\n", 1)[0].split())
    schema = specs["sms.alerts"].schema()
    types = {"boolean": "boolean", "int": "integer", "array": "array"}
    for field_name, word in re.findall(r"`(\w+)` \((\w+)", prose):
        assert schema["properties"][field_name]["type"] == types[word], field_name
        assert field_name not in schema["required"]


def test_every_contract_field_is_in_the_schema_with_the_contracts_type(contract, specs):
    problems = []
    for name, topic in contract.items():
        properties = specs[name].schema()["properties"]
        for field_name, (types, _notes) in topic.fields.items():
            if field_name not in properties:
                problems.append(f"{name}: field '{field_name}' is missing from {specs[name].schema_path.name}")
                continue
            declared = properties[field_name].get("type")
            declared = {declared} if isinstance(declared, str) else set(declared or ())
            if types and declared != types:
                problems.append(f"{name}: field '{field_name}' is {sorted(declared)} in the schema, {sorted(types)} in CONTRACT.md")
    assert not problems, "\n".join(problems)


def test_fields_the_schema_adds_are_optional(contract, specs):
    for name, topic in contract.items():
        schema = specs[name].schema()
        extra_required = set(schema.get("required", [])) - set(topic.fields)
        assert not extra_required, f"{name}: {sorted(extra_required)} are required but not in CONTRACT.md"


def test_enumerations_and_object_fields_match_the_words_the_contract_lists(contract, specs):
    problems = []
    for name, topic in contract.items():
        properties = specs[name].schema()["properties"]
        for field_name, (types, notes) in topic.fields.items():
            if "e.g." in notes:
                continue
            prop = properties.get(field_name)
            if prop is None:
                continue  # reported by the field test
            if "object" in types:
                missing = set(re.findall(r"`([A-Za-z_]+)`", notes)) - set(prop.get("properties", {}))
                if missing:
                    problems.append(f"{name}.{field_name}: object lacks {sorted(missing)}")
            elif (words := enumerated(notes)) and set(prop.get("enum", [])) - {None} != words:
                problems.append(f"{name}.{field_name}: enum {prop.get('enum')} but CONTRACT.md lists {sorted(words)}")
    assert not problems, "\n".join(problems)


def test_template_categories_are_the_send_categories(specs):
    sends = specs["sms.sends"].schema()["properties"]["category"]["enum"]
    assert specs["sms.templates"].schema()["properties"]["category"]["enum"] == sends


def test_keys_tombstones_and_compaction_follow_the_contract(contract, specs):
    keyed = set()
    for name, topic in contract.items():
        spec = specs[name]
        key_line = next(line for line in topic.text.splitlines() if line.startswith("Key:"))
        named = re.search(r"`([^`]+)`", key_line.split("Value:")[0])
        if named:  # sends and dead letters describe their key in words
            keyed.add(name)
            assert spec.key_format == named.group(1), f"{name}: key {spec.key_format!r}, CONTRACT.md says {named.group(1)!r}"
        if "tombstone" in topic.text:
            assert spec.tombstones, f"{name}: CONTRACT.md gives null values (tombstones) a meaning"
        if "compact" in topic.text:
            assert "compact" in spec.cleanup_policy.split(","), f"{name}: CONTRACT.md expects compaction"
    assert keyed >= {"sms.delivery-receipts", "sms.borrowers", "sms.templates", "sms.bindings", "sms.alerts"}


def test_input_and_output_roles_follow_the_contract_sections(specs):
    text = contract_text()
    outputs = text.split("\n## Output topics", 1)[1].split("\n## ", 1)[0]
    for spec in specs.values():
        assert (f"### `{spec.name}`" in outputs) == (spec.role == "output"), spec.name


def test_topics_readme_is_generated_from_the_specs():
    readme = default_dir() / "README.md"
    assert readme.read_text(encoding="utf-8") == render_markdown(load_specs()), (
        "topics/README.md is out of date; regenerate it with `smsstream topics doc > topics/README.md`"
    )


def test_the_readme_topic_table_matches_the_specs():
    rows = {}
    for line in (REPO / "README.md").read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if len(cells) == 5 and re.fullmatch(r"`sms\.[a-z.\-]+`", cells[0]):
            rows[cells[0].strip("`")] = cells
    for spec in load_specs():
        assert spec.name in rows, f"README.md's topic table lacks {spec.name}"
        _, _, _, partitions, cleanup = rows[spec.name]
        assert partitions == str(spec.partitions), f"README.md: {spec.name} partitions"
        assert cleanup.split(", ")[0] == spec.cleanup_policy, f"README.md: {spec.name} cleanup {cleanup!r}, spec {spec.cleanup_policy!r}"


def test_the_alert_vocabulary_is_the_contracts_and_the_schemas(contract, specs):
    fields = contract["sms.alerts"].fields
    schema = specs["sms.alerts"].schema()["properties"]
    for name, words in (("kind", vocabulary.KINDS), ("severity", vocabulary.SEVERITIES),
                        ("status", vocabulary.STATUSES), ("entity_type", vocabulary.ENTITY_TYPES)):
        assert enumerated(fields[name][1]) == set(words), f"CONTRACT.md's {name} words"
        assert schema[name]["enum"] == list(words), f"alert.schema.json's {name} enum"
    reasons = {reason for kind_reasons in vocabulary.REASONS.values() for reason in kind_reasons}
    assert set(vocabulary.REASONS) == set(vocabulary.KINDS)
    assert set(re.findall(r"`(\w+)`", fields["reason"][1])) <= reasons, "a reason CONTRACT.md names is not in the vocabulary"
    assert set(re.findall(r"[a-z]+_[a-z_]+", schema["reason"]["description"])) == reasons
    assert set(SIMULATED_KINDS) == set(vocabulary.KINDS), "the simulator's attack kinds"
