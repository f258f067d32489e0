"""``python -m smsstream.monitoring [--check]``: write (or check) the dashboards and rules under ``deploy/``.

Writes ``deploy/grafana/<uid>.json`` for each dashboard and
``deploy/prometheus/smsstream.rules.yaml`` with its ``promtool`` test file.
``--check`` writes nothing and exits 1 naming each file that differs from
what the code builds (CI runs it through tests/test_monitoring.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from smsstream.monitoring import build_files

REPO = Path(__file__).resolve().parents[3]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smsstream.monitoring", description=__doc__.splitlines()[0])
    parser.add_argument("--deploy", type=Path, default=REPO / "deploy", help="the deploy/ folder (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a checked-in file differs; write nothing")
    args = parser.parse_args(argv)
    stale = []
    for relative, text in build_files().items():
        path = args.deploy / relative
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if args.check and stale:
        print("out of date (run `python -m smsstream.monitoring`):", *map(str, stale), sep="\n  ", file=sys.stderr)
        return 1
    print(f"{len(stale)} file(s) {'differ' if args.check else 'written'} under {args.deploy}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
