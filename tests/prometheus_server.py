"""A real Prometheus (Debian's ``prometheus`` package) on loopback, temporary storage, for the tests."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from smsstream.broker import die_with_parent, free_port


class PrometheusServer:
    """Scrapes ``targets`` (job name -> ``host:port`` list) every second and evaluates ``rule_files``."""

    def __init__(self, targets: dict[str, list[str]], rule_files: list[Path] = ()):
        self.targets = targets
        self.rule_files = [str(p) for p in rule_files]
        self.port = 0
        self.process: subprocess.Popen | None = None
        self.workdir: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "PrometheusServer":
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("no `prometheus` on PATH; apt-get install prometheus (.ci/run does)")
        self.workdir = Path(tempfile.mkdtemp(prefix="smsstream-prometheus-"))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": self.rule_files,
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": hosts}]}
                               for job, hosts in self.targets.items()],
        }
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.log = open(self.workdir / "prometheus.log", "wb")
        self.process = subprocess.Popen(
            [binary, f"--config.file={self.workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"prometheus was not ready within 60 s:\n{self.log_tail()}")

    def api(self, path: str, **params: str) -> dict:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def query_range(self, expr: str, seconds: int = 120, step: str = "5s") -> list[dict]:
        now = time.time()
        return self.api("query_range", query=expr, start=str(now - seconds), end=str(now), step=step)["result"]

    def log_tail(self, lines: int = 30) -> str:
        if self.workdir is None:
            return ""
        text = (self.workdir / "prometheus.log").read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.workdir is not None:
            self.log.close()
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
