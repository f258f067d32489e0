"""Looking for phone numbers in clear in whatever smsstream wrote: the numbers of its input, in any form.

A scan knows the numbers it looks for (every E.164 number in the input, in a
number field, a key or a body) and finds each of them written with or
without its ``+``, and any other E.164-looking run too. Pickles and JSON
keep strings as UTF-8, so raw message bytes can be scanned as they are;
compressed snapshots are scanned decompressed.
"""

from __future__ import annotations

import re
from typing import Iterable

import orjson

_E164 = re.compile(rb"\+[1-9][0-9]{6,14}(?![0-9])")
_DIGITS = re.compile(rb"(?<![0-9])[0-9]{7,15}(?![0-9])")


def input_numbers(lines: Iterable[bytes]) -> set[bytes]:
    """The digits of every E.164 number in replay-format input lines (fields, keys, bodies)."""
    found: set[bytes] = set()
    for line in lines:
        found.update(m.group(0)[1:] for m in _E164.finditer(line))
    return found


def clear_numbers(data: bytes | str, numbers: set[bytes]) -> list[str]:
    """The numbers in clear in ``data``: one of ``numbers`` (with or without ``+``), or any E.164-looking run."""
    if isinstance(data, str):
        data = data.encode()
    hits = {m.group(0) for m in _E164.finditer(data)}
    hits |= {m.group(0) for m in _DIGITS.finditer(data) if m.group(0) in numbers}
    return sorted(h.decode() for h in hits)


def scan(outputs: dict[str, Iterable[bytes | str]], numbers: set[bytes]) -> dict[str, list[str]]:
    """``where -> numbers found`` for every output that holds one in clear."""
    found: dict[str, list[str]] = {}
    for where, items in outputs.items():
        hits = sorted({n for item in items for n in clear_numbers(item, numbers)})
        if hits:
            found[where] = hits[:5]
    return found


def dead_letter_texts(values: Iterable[bytes]) -> list[bytes]:
    """A dead letter as the scan sees it: everything but ``raw`` (the documented place of raw input)."""
    out = []
    for value in values:
        letter = orjson.loads(value)
        letter.pop("raw", None)
        out.append(orjson.dumps(letter))
    return out
