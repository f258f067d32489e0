"""``smsstream worker``: the Faust worker; the rest of the line goes to Faust's own CLI.

``smsstream worker -l info --web-port 6067`` is ``faust -A ... worker -l info
--web-port 6067``. Before Faust starts, the broker and the contract topics are
checked, so a wrong address or missing topics give one clear line, not a
Faust traceback loop. ``SMSSTREAM_APP_ID`` (default ``smsstream``) names the
consumer group and prefixes the internal topics: two deployments sharing a
cluster need different ids.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import replace

from smsstream.config import Secret, Settings

#: The CLI passes the raw argument list: Faust parses it.
PASSTHROUGH = True

FAUST_COMMANDS = ("worker", "agents", "tables", "livecheck", "model", "models", "send", "status")
#: Options of Faust's own command line (they come before its subcommand), with whether each takes a value.
FAUST_OPTIONS = {"--loop": True, "-L": True, "--json": False, "--no-color": False, "--debug": False,
                 "--no-debug": False, "--quiet": False, "-q": False, "--workdir": True, "-W": True,
                 "--datadir": True, "--blocking-timeout": True, "--console-port": True}


def faust_argv(args: list[str]) -> list[str]:
    """``smsstream worker ARGS`` as Faust's command line: its own options first, then ``worker`` and the rest.

    ``smsstream worker --loop uvloop -l info`` is ``faust --loop uvloop worker -l info``.
    """
    own: list[str] = []
    rest: list[str] = []
    it = iter(args)
    for arg in it:
        name, eq, _ = arg.partition("=")
        if name in FAUST_OPTIONS:
            own.append(arg)
            if FAUST_OPTIONS[name] and not eq:
                own.append(next(it, ""))
        else:
            rest.append(arg)
    if not rest or rest[0] not in FAUST_COMMANDS:
        rest = ["worker", *rest]
    return [*own, *rest]


def configure(parser) -> None:
    parser.epilog = "Other arguments go to Faust's worker command (e.g. -l info --web-port 6067)."


def run(args: list[str]) -> int:
    from smsstream import metrics
    from smsstream.detection.driver import fewer_gc_passes
    from smsstream.worker.app import build, preflight

    settings = Settings.from_env()
    if any(a in ("-h", "--help") for a in args):
        settings = replace(settings, pseudonym_key=Secret("help only"))
        topic_partitions: dict[str, int] = {}
    else:
        settings.require_pseudonym_key()
        topic_partitions = asyncio.run(preflight(settings))
    worker = build(settings, topic_partitions=topic_partitions)
    if topic_partitions:
        metrics.serve(worker.registry, settings.metrics_port, host=settings.bind_host)
    sys.argv = ["smsstream worker", *faust_argv(list(args))]
    with fewer_gc_passes():
        worker.app.main()
    return 0
