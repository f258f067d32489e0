"""The ``smsstream`` entry point: picks a command and hands it the rest of the line.

Each command lives in its own module exposing ``configure(parser)`` and
``run(args) -> int``; modules are imported only when chosen, so ``replay`` and
``evaluate`` never pay for importing Faust.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from smsstream.errors import SmsstreamError

#: command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "worker": ("smsstream.worker.cli", "run a Faust worker (Faust CLI conventions apply)"),
    "topics": ("smsstream.topics", "create the topics from topics/, or report how existing ones differ"),
    "broker": ("smsstream.broker", "run the embedded development broker (Tansu, or Apache Kafka) on loopback"),
    "simulate": ("smsstream.simulate.cli", "write labelled synthetic traffic to JSONL or to the broker"),
    "replay": ("smsstream.replay", "run the detectors offline over a JSONL file, no broker"),
    "evaluate": ("smsstream.evaluate", "score alerts against labelled attack episodes"),
    "demo": ("smsstream.demo", "broker, topics, worker, simulated attacks and live alerts in one command"),
    "notify": ("smsstream.notify.cli", "page from sms.alerts: Alertmanager (API v2) and/or a signed webhook"),
    "config": ("smsstream.controls.cli", "show, set, validate and remove operator controls (sms.detector-config)"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: smsstream COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`smsstream COMMAND --help` shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"smsstream: unknown command '{name}'\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"smsstream {name}", description=COMMANDS[name][1])
    module.configure(parser)
    args = parser.parse_args(rest) if not getattr(module, "PASSTHROUGH", False) else rest
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(module.run(args) or 0)
    except SmsstreamError as exc:
        print(f"smsstream {name}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
