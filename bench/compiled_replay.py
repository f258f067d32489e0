"""Replay throughput of the detection core as written against the same modules compiled with mypyc.

    python bench/compiled_replay.py --events s1.jsonl           # replay an existing file
    python bench/compiled_replay.py --days 1 --rounds 3         # simulate a day first

Copies ``src/smsstream`` to a scratch directory, compiles there with mypyc the
modules replay runs per event (``[tool.mypy] files`` in pyproject.toml) (``pip install mypy``; it needs a C compiler), then replays the
same file in alternating whole processes, plain and compiled, and prints each
one's lines/s, their ratio, and whether the alert records (bar
``detected_at``) are identical. mypyc enforces the annotations at run time, so
a wrong annotation in these modules shows up here as a TypeError.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib

KEY = "bench-key"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(REPO, "src")


def compiled_modules() -> list[str]:
    """``[tool.mypy] files`` of pyproject.toml, relative to ``src``: the modules type-checked in CI."""
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        files = tomllib.load(f)["tool"]["mypy"]["files"]
    return [os.path.relpath(os.path.join(REPO, path), SRC) for path in files]

#: One replay in a fresh process: prints lines/s and a digest of the alert records.
REPLAY = """
import hashlib, sys, orjson
from smsstream.detection.engine import Engine
from smsstream.pseudonym import Pseudonymizer
from smsstream.replay import replay_lines
alerts = []
with open(sys.argv[1], "rb") as f:
    report = replay_lines(f, Engine(Pseudonymizer(sys.argv[2])), alerts.append)
for a in alerts:
    a.pop("detected_at", None)
print(report.rate, len(alerts), hashlib.sha256(orjson.dumps(alerts, option=orjson.OPT_SORT_KEYS)).hexdigest())
"""


def compile_copy(directory: str) -> str:
    """A copy of the package with ``compiled_modules`` built in place by mypyc; returns its import root."""
    if importlib.util.find_spec("mypyc") is None:
        sys.exit("mypyc is not installed; pip install mypy (it brings mypyc), then run again")
    root = os.path.join(directory, "src")
    shutil.copytree(SRC, root, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    with open(os.path.join(root, "mypy.ini"), "w") as f:
        f.write("[mypy]\ndisable_error_code = annotation-unchecked\n")
    modules = compiled_modules()
    print(f"compiling {', '.join(modules)} with mypyc (about a minute)...", file=sys.stderr, flush=True)
    started = time.monotonic()
    build = subprocess.run([os.path.join(os.path.dirname(sys.executable), "mypyc"), *modules], cwd=root,
                           capture_output=True, text=True)
    if build.returncode != 0:
        sys.exit(f"mypyc failed (exit {build.returncode}); its last lines:\n" + "\n".join(
            (build.stdout + build.stderr).splitlines()[-15:]))
    print(f"compiled in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return root


def replay_once(events: str, root: str) -> tuple[float, int, str]:
    env = {**os.environ, "PYTHONPATH": root}
    out = subprocess.run([sys.executable, "-c", REPLAY, events, KEY], env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[0]), int(out[1]), out[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", help="JSONL replay file (default: simulate --days of seed 1)")
    ap.add_argument("--days", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3, help="replays of each build, alternating")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="smsstream-mypyc-") as tmp:
        events = args.events
        if events is None:
            events = os.path.join(tmp, "events.jsonl")
            subprocess.run([sys.executable, "-m", "smsstream", "simulate", "-o", events, "--days", str(args.days),
                            "--seed", "1", "--quiet"], check=True,
                           env={**os.environ, "SMSSTREAM_PSEUDONYM_KEY": KEY, "PYTHONPATH": SRC})
        compiled_root = compile_copy(tmp)
        rates: dict[str, list[float]] = {"plain": [], "compiled": []}
        digests: dict[str, set[tuple[int, str]]] = {"plain": set(), "compiled": set()}
        for i in range(args.rounds):
            for build, root in (("plain", os.path.abspath(SRC)), ("compiled", compiled_root)):
                rate, n, digest = replay_once(events, root)
                rates[build].append(rate)
                digests[build].add((n, digest))
                print(f"round {i + 1}/{args.rounds} {build:>8}: {rate:,.0f} lines/s", file=sys.stderr, flush=True)
        plain, compiled = statistics.median(rates["plain"]), statistics.median(rates["compiled"])
        same = digests["plain"] == digests["compiled"] and len(digests["plain"]) == 1
        n_alerts = next(iter(digests["plain"]))[0]
        print(f"plain    median {plain:,.0f} lines/s (min {min(rates['plain']):,.0f}, max {max(rates['plain']):,.0f})")
        print(f"compiled median {compiled:,.0f} lines/s (min {min(rates['compiled']):,.0f}, "
              f"max {max(rates['compiled']):,.0f})")
        print(f"ratio {compiled / plain:.2f}x; alert records {'identical' if same else 'DIFFER'} "
              f"({n_alerts} records)")
        if not same:
            sys.exit(1)


if __name__ == "__main__":
    main()
