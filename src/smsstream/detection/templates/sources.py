"""Where a send came from, as a template and its sender remember it, and when a source counts as new.

A send's source is its API key (``k:<key>``) and its IP's network
(``n:<first three octets>``, IPv6: all but the last group). The sources of a
template's first sends are its own; a source first used later is new for
``NEW_SOURCE_MS``, and only once the template has sent enough for long
enough to know its sources (``knows_its_sources``). A new key from a known
network is a key rotated in place, not a new source (``is_new_source``).
"""

from __future__ import annotations

from smsstream.detection.templates.state import LEARN_MS, LEARN_N
from smsstream.vocabulary import DAY_MS

#: A template's own sources are those of its first ``SOURCE_LEARN_N`` sends (and first hour), or of its
#: first day if it sends less; a source first used after that counts as new for ``NEW_SOURCE_MS``.
SOURCE_LEARN_N = 200
NEW_SOURCE_MS = DAY_MS


def source_parts(api_key_id: str | None, source_ip: str | None) -> list[str]:
    """A send's source as the template remembers it: its API key and its IP's /24 (IPv6: all but the last group)."""
    parts = []
    if api_key_id:
        parts.append("k:" + api_key_id)
    if source_ip:
        ip = source_ip
        parts.append("n:" + (ip.rsplit(".", 1)[0] if ip.count(".") == 3 else ip.rsplit(":", 1)[0]))
    return parts


#: (api key, source ip) -> ``source_parts`` of it; a template's sources repeat in nearly every send
_PARTS_OF: dict[tuple, tuple[str, ...]] = {}
MAX_PARTS_OF = 4096


def parts_of(raw: tuple) -> tuple[str, ...]:
    """``source_parts`` of an (api key, source ip) pair, remembered for the pairs seen most."""
    parts = _PARTS_OF.get(raw)
    if parts is None:
        parts = tuple(source_parts(*raw))
        if len(_PARTS_OF) < MAX_PARTS_OF:
            _PARTS_OF[raw] = parts
    return parts


def is_new_source(fresh: dict[str, bool]) -> bool:
    """Is a source whose parts (``k:`` key, ``n:`` network) are fresh as given a new one?

    A new API key from a network already known is a key rotated in place, not
    a new source. The one rule for both a template's and a sender's sources.
    """
    if not any(fresh.values()):
        return False
    nets = [p for p in fresh if p.startswith("n:")]
    return not nets or any(fresh[n] for n in nets)


def knows_its_sources(sends: int, first_ts: int, end: int) -> bool:
    """Has a template sent enough, for long enough, to call a source of its own new?

    With fewer sends than it needs to learn its markers it knows too little of
    its sources: its sender's campaign through the sender's usual keys is not a
    hijack. Its sender's source book judges such a template's sources instead.
    """
    learning = end <= first_ts + LEARN_MS or sends < LEARN_N
    return (sends >= SOURCE_LEARN_N and not learning) or (end - first_ts >= DAY_MS and sends >= LEARN_N)


def source_order(entry: tuple) -> tuple:
    """Sort key of a tally's ``(source, row)`` entries: by key and ip, ``"other"`` first."""
    raw = entry[0]
    return ("", "") if raw == "other" else tuple(p or "" for p in raw)


def show_source(src: str) -> str:
    """A source (parts joined by ``|``) as an alert shows it: ``api key K / ip 10.0.0.*``."""
    out = []
    for p in src.split("|"):
        if p.startswith("k:"):
            out.append("api key " + p[2:])
        elif p.startswith("n:"):
            out.append("ip " + p[2:] + ".*")
    return " / ".join(out)
