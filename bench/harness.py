"""What the broker benchmarks share: simulated traffic, producing it, child processes, and reading a worker's figures.

``worker_evaluate.py`` and ``throughput.py`` import this module (each script's
own folder is first on ``sys.path`` when run as ``python bench/NAME.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO, Callable, Mapping, Sequence

import orjson

from smsstream.broker import die_with_parent
from smsstream.worker.app import INTERNAL_PARTITIONS
from smsstream.worker.process import WorkerProcess

EVENTS_IN = re.compile(r'^smsstream_events_in_total\{topic="[^"]+"\} ([0-9.e+]+)$', re.M)
OVERFLOW = re.compile(r'^smsstream_merge_overflow_total\{part="([^"]+)"\} ([0-9.e+]+)$', re.M)
DEAD_LETTERS = re.compile(r'^smsstream_dead_letters_total\{reason="([^"]+)",topic="[^"]+"\} ([0-9.e+]+)$', re.M)


def smsstream(*args: str, env: Mapping[str, str]) -> None:
    subprocess.run([sys.executable, "-m", "smsstream", *args], check=True, env=dict(env))


def simulate(path: Path, days: int, senders: int, rate: float, seed: int, env: Mapping[str, str]) -> list[bytes]:
    """A labelled scenario written to ``path`` (labels beside it); its lines."""
    smsstream("simulate", "-o", str(path), "--days", str(days), "--senders", str(senders),
              "--rate", str(rate), "--seed", str(seed), "-q", env=env)
    return path.read_bytes().splitlines()


async def produce(bootstrap: str, lines: Sequence[bytes], pace: float = 0.0,
                  sent: Callable[[dict, float], None] | None = None, linger_ms: int = 20) -> None:
    """Every line to its topic; at ``pace`` records a second if given (live traffic), else all at once (a backlog).

    ``sent(record, wall_time)`` is called just before each record is handed to the producer.
    """
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=linger_ms, max_batch_size=512 * 1024)
    await producer.start()
    started = time.monotonic()
    try:
        pending = []
        for i, line in enumerate(lines):
            if pace:
                ahead = i / pace - (time.monotonic() - started)
                if ahead > 0.002:
                    await asyncio.sleep(ahead)
            obj = orjson.loads(line)
            value = obj["value"]
            raw = None if value is None else value.encode() if isinstance(value, str) else orjson.dumps(value)
            key = obj.get("key")
            if sent is not None:
                sent(obj, time.time())
            pending.append(await producer.send(obj["topic"], value=raw, key=key.encode() if key else None))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def _metrics_text(port: int) -> str | None:
    with contextlib.suppress(OSError):
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3).read().decode()
    return None


def events_read(metrics_ports: Sequence[int]) -> int:
    """Input records read, summed over the workers' ``smsstream_events_in_total``."""
    total = 0.0
    for port in metrics_ports:
        if (text := _metrics_text(port)) is not None:
            total += sum(float(v) for v in EVENTS_IN.findall(text))
    return int(total)


def summed_by_label(metrics_ports: Sequence[int], pattern: re.Pattern) -> dict[str, int]:
    """A labelled counter summed over the workers' metrics (a restarted worker's count starts again)."""
    out: dict[str, int] = {}
    for port in metrics_ports:
        if (text := _metrics_text(port)) is not None:
            for label, n in pattern.findall(text):
                out[label] = out.get(label, 0) + int(float(n))
    return dict(sorted(out.items()))


def shard_health(workers: Sequence[WorkerProcess]) -> tuple[int, int, int]:
    """(shards expected, shards present, idle shards) over the live workers."""
    health = [h for w in workers if w.running() and (h := w.health())]
    parts = max((len(h["parts"]) for h in health), default=0)
    return (parts * INTERNAL_PARTITIONS, sum(h["shards"] for h in health), sum(h["idle_shards"] for h in health))


def caught_up(workers: Sequence[WorkerProcess]) -> bool:
    """Every shard of every part exists on some live worker and has nothing left to process."""
    expected, present, idle = shard_health(workers)
    return expected > 0 and present >= expected and idle == present


def peak_rss_mib(pid: int) -> float | None:
    """The process's peak resident set so far (``VmHWM``), MiB; None once it has gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class Child:
    """A command in its own process group that dies with this one; :meth:`stop` ends the whole group."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], log_path: Path, cwd: Path | None = None):
        self.argv, self.env, self.log_path, self.cwd = list(argv), dict(env), log_path, cwd
        self.process: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    def start(self, stderr_pipe: bool = False) -> "Child":
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL,
                                        stdout=self._log,
                                        stderr=subprocess.PIPE if stderr_pipe else subprocess.STDOUT,
                                        start_new_session=True, preexec_fn=die_with_parent)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL whatever is left of the group."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


def save_results(result: dict, results_dir: Path, name: str, chart: Callable[[dict, Path], None]) -> tuple[Path, Path]:
    """``<name>-<date>-<time>.json`` and ``.png`` under ``results_dir``, copied to ``<name>-latest.*``."""
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = results_dir / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    json_path, png_path = stem.with_suffix(".json"), stem.with_suffix(".png")
    json_path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    chart(result, png_path)
    shutil.copyfile(json_path, results_dir / f"{name}-latest.json")
    shutil.copyfile(png_path, results_dir / f"{name}-latest.png")
    return json_path, png_path
