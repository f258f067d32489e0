"""A worker as a child process: started in its own process group, ready when its group has assigned it partitions.

``demo`` and the broker tests run workers this way. Joining a consumer group
takes about 30 s per new member on Tansu, so callers wait on :meth:`wait_ready`
(which polls the worker's ``/health``) instead of sleeping.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Callable, Mapping

from smsstream.broker import die_with_parent
from smsstream.errors import SmsstreamError


class WorkerProcess:
    """``smsstream worker`` in a subprocess with its own process group."""

    def __init__(self, env: Mapping[str, str], web_port: int, log_path: str | Path, loglevel: str = "info"):
        self.env = dict(env)
        self.web_port = web_port
        self.log_path = Path(log_path)
        self.loglevel = loglevel
        self.process: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> "WorkerProcess":
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "smsstream", "worker", "-l", self.loglevel, "--web-port", str(self.web_port)],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def health(self) -> dict | None:
        """The worker's ``/health`` body (answered with 503 while it is not ready), or None if it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/health", timeout=2) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                return json.loads(exc.read())
            except ValueError:
                return None
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def wait_ready(self, timeout: float = 180.0, progress: Callable[[str], None] | None = None) -> dict:
        """Block until the worker has partitions assigned and is not rebalancing."""
        deadline = time.monotonic() + timeout
        said = 0.0
        while time.monotonic() < deadline:
            if not self.running():
                raise SmsstreamError(
                    f"the worker exited with code {self.process.returncode if self.process else None}; "
                    f"its log ends with:\n{self.log_tail(15)}"
                )
            health = self.health()
            if health and health.get("assigned_partitions") and not health.get("rebalancing"):
                return health
            if progress and time.monotonic() - said >= 10:
                said = time.monotonic()
                state = "joining its consumer group" if health else "starting"
                progress(f"worker {state} ... (about 30 s on the embedded broker)")
            time.sleep(0.5)
        raise SmsstreamError(f"the worker was not ready within {timeout:.0f} s; its log ends with:\n{self.log_tail(15)}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the whole process group: a crash, no goodbye."""
        if self.running():
            os.killpg(self.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (Faust's graceful shutdown), then SIGKILL whatever is left of the group."""
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
