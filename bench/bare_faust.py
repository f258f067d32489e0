"""Stage (b) of ``throughput.py``: the framework floor, bare Faust agents that only count.

    BARE_FAUST_APP_ID=bench-bare SMSSTREAM_BROKER=kafka://127.0.0.1:9092 \\
        python bench/bare_faust.py [--loop uvloop] worker -l warn --web-port 6070

One agent per input topic, raw values (no decoding), its own consumer group
(``BARE_FAUST_APP_ID``), reading from the earliest offset. ``GET /count`` on
the web port answers how many records were seen and the wall times of the
first and the latest, which is all ``throughput.py`` needs to time it.
"""

from __future__ import annotations

import os
import time

import faust

from smsstream.records import INPUT_TOPICS

app = faust.App(
    os.environ.get("BARE_FAUST_APP_ID", "bench-bare-faust"),
    broker=os.environ.get("SMSSTREAM_BROKER", "kafka://127.0.0.1:9092"),
    key_serializer="raw",
    value_serializer="raw",
    store="memory://",
    consumer_auto_offset_reset="earliest",
)
seen: dict = {"count": 0, "first": None, "last": None}


def counting_agent(topic: str):
    async def count(stream):
        async for _value in stream:
            now = time.time()
            if seen["first"] is None:
                seen["first"] = now
            seen["count"] += 1
            seen["last"] = now

    count.__name__ = f"count_{topic.replace('.', '_').replace('-', '_')}"
    return count


for _topic in INPUT_TOPICS:
    app.agent(app.topic(_topic), name=f"bare.count.{_topic}")(counting_agent(_topic))


@app.page("/count")
async def count_page(web, request):
    return web.json(seen)


if __name__ == "__main__":
    app.main()
