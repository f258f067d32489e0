"""`smsstream topics apply`: creates what is missing, reports what differs, destroys nothing."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from smsstream.broker import free_port
from smsstream.cli import main
from smsstream.topics import EXIT_DIFFERS, _compare, apply_topics, default_dir, load_specs

CONTRACT_TOPICS = {
    "sms.sends", "sms.delivery-receipts", "sms.borrowers", "sms.templates", "sms.bindings", "sms.alerts", "sms.dead-letter",
    "sms.detector-config",
}


def copy_specs(directory: Path, prefix: str, **overrides) -> Path:
    """The repository's specs under fresh topic names: other tests on the session's broker may
    already have made the real ones (Tansu auto-creates unknown topics with 4 partitions)."""
    for spec in load_specs():
        data = json.loads(spec.path.read_text())
        data["name"] = f"{prefix}{spec.name}"
        data["value"]["schema"] = str(spec.schema_path)
        data.update(overrides)
        (directory / f"{data['name']}.json").write_text(json.dumps(data))
    return directory


async def partitions_of(bootstrap: str) -> dict[str, int]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics()}
    finally:
        await admin.close()


async def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


def test_the_specs_cover_every_contract_topic():
    assert {spec.name for spec in load_specs()} == CONTRACT_TOPICS


@pytest.mark.broker
def test_apply_creates_every_contract_topic_with_its_partitions(broker_url, bootstrap, tmp_path):
    prefix = f"t{uuid.uuid4().hex[:8]}-"
    outcomes = apply_topics(broker_url, copy_specs(tmp_path, prefix))
    assert {o.topic for o in outcomes} == {prefix + name for name in CONTRACT_TOPICS}
    assert all(o.action == "created" for o in outcomes), [o.line() for o in outcomes]
    existing = asyncio.run(partitions_of(bootstrap))
    for spec in load_specs():
        assert existing[prefix + spec.name] == spec.partitions, spec.name


@pytest.mark.broker
def test_a_second_apply_changes_nothing_and_exits_zero(broker_url, tmp_path, capsys):
    specs = copy_specs(tmp_path, f"t{uuid.uuid4().hex[:8]}-")
    assert main(["topics", "apply", "--broker", broker_url, "--specs", str(specs)]) == 0
    first = capsys.readouterr().out
    assert "8 created, 0 unchanged, 0 differs" in first
    assert main(["topics", "apply", "--broker", broker_url, "--specs", str(specs)]) == 0
    second = capsys.readouterr().out
    assert "0 created, 8 unchanged, 0 differs" in second


@pytest.mark.broker
def test_an_existing_topic_with_other_partitions_is_reported_and_left_alone(broker_url, bootstrap, tmp_path, capsys):
    prefix = f"t{uuid.uuid4().hex[:8]}-"
    asyncio.run(create_topic(bootstrap, f"{prefix}sms.alerts", 1))
    specs = copy_specs(tmp_path, prefix)
    assert main(["topics", "apply", "--broker", broker_url, "--specs", str(specs)]) == EXIT_DIFFERS
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith(f"{prefix}sms.alerts"))
    assert "differs" in line and "has 1 partitions, spec says 4" in line
    assert asyncio.run(partitions_of(bootstrap))[f"{prefix}sms.alerts"] == 1


def test_a_broker_that_does_not_report_configs_is_not_reported_as_different():
    class SilentBroker:
        async def describe_configs(self, resources):
            class Response:
                def to_object(self):
                    return {"resources": [{"config_entries": []}]}

            return [Response()]

    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    spec = next(s for s in load_specs() if s.name == "sms.borrowers")
    metadata = {"partitions": [{}] * spec.partitions}
    outcome = asyncio.run(_compare(SilentBroker(), spec, metadata, ConfigResource, ConfigResourceType))
    assert outcome.action == "unchanged"
    assert "cleanup.policy not reported by broker" in outcome.line()


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_an_unreachable_broker_gives_one_line_naming_address_and_fix(capsys):
    port = free_port()
    assert main(["topics", "apply", "--broker", f"kafka://127.0.0.1:{port}"]) == 1
    error = _one_line_error(capsys)
    assert f"127.0.0.1:{port}" in error and "smsstream broker" in error and "SMSSTREAM_BROKER" in error


@pytest.mark.parametrize(
    "change,named",
    [
        ({"partitions": "eight"}, "'partitions'"),
        ({"cleanup_policy": "compacted"}, "'cleanup_policy'"),
        ({"partiton": 3}, "'partiton'"),
        ({"value": {"schema": "schemas/nope.schema.json", "tombstones": False}}, "'value.schema'"),
    ],
)
def test_a_bad_spec_gives_one_line_naming_file_and_field(tmp_path, capsys, change, named):
    for spec in load_specs():
        data = json.loads(spec.path.read_text())
        data["value"]["schema"] = str(spec.schema_path)
        if spec.name == "sms.bindings":
            data.update(change)
        (tmp_path / spec.path.name).write_text(json.dumps(data))
    assert main(["topics", "apply", "--broker", "kafka://127.0.0.1:1", "--specs", str(tmp_path)]) == 1
    error = _one_line_error(capsys)
    assert "sms.bindings.json" in error and named in error


def test_a_spec_that_is_not_json_names_the_line(tmp_path, capsys):
    (tmp_path / "sms.sends.json").write_text('{"name": "sms.sends",\n "partitions": 8,,}')
    assert main(["topics", "apply", "--specs", str(tmp_path)]) == 1
    error = _one_line_error(capsys)
    assert "sms.sends.json" in error and "line 2" in error


def test_topics_doc_prints_the_generated_contract(capsys):
    assert main(["topics", "doc"]) == 0
    assert capsys.readouterr().out == (default_dir() / "README.md").read_text()


def test_a_plain_install_of_the_wheel_finds_the_topic_specs_without_the_source_tree(tmp_path):
    """``pip install smsstream`` then ``smsstream topics apply``: the specs travel as the wheel's data files."""
    repo = Path(__file__).resolve().parents[1]
    wheels, env_dir, elsewhere = tmp_path / "wheels", tmp_path / "venv", tmp_path / "cwd"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(wheels), str(repo)], check=True,
                   capture_output=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", *map(str, wheels.glob("*.whl"))],
                   check=True, capture_output=True)
    # the dependencies come from this environment; smsstream itself from the new one
    deps = next(p for p in map(Path, sys.path) if p.name == "site-packages" and (p / "faust").is_dir())
    shown = subprocess.run(
        [python, "-c", "from smsstream.topics import default_dir, load_specs; import sys; d = default_dir(); "
                       "print(d.relative_to(sys.prefix)); print(*sorted(s.name for s in load_specs(d)))"],
        cwd=elsewhere, env={**os.environ, "PYTHONPATH": str(deps), "SMSSTREAM_TOPICS_DIR": ""},
        capture_output=True, text=True, check=True).stdout.splitlines()
    assert shown[0] == "share/smsstream/topics"
    assert shown[1].split() == sorted(spec.name for spec in load_specs())
