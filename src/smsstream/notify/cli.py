"""``smsstream notify``: reads ``sms.alerts`` as its own consumer group and pages through Alertmanager and/or a webhook.

Everything is configured by environment (README, "Paging"); ``--broker``
overrides ``SMSSTREAM_BROKER`` as for the other commands. SIGTERM or Ctrl-C
stops it after committing what was delivered; the rest is read again next time.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from dataclasses import replace

from smsstream.config import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", help="Kafka bootstrap URL(s), Faust form (default: SMSSTREAM_BROKER or "
                                         "kafka://127.0.0.1:9092)")


def run(args: argparse.Namespace) -> int:
    from smsstream.notify.service import Notifier

    settings = Settings.from_env()
    if args.broker:
        settings = replace(settings, broker=args.broker)
    notifier = Notifier(settings)
    asyncio.run(_until_signalled(notifier))
    return 0


async def _until_signalled(notifier) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, notifier.stopping.set)
    await notifier.run()
