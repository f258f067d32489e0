"""Pseudonymised phone numbers: the only form a number may take outside the input.

CONTRACT.md: ``pn:`` + first 16 hex digits of HMAC-SHA256(key, E.164 number).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from functools import lru_cache

from smsstream.errors import ConfigError

PREFIX = "pn:"

#: A digit run as a phone number may be written in free text: E.164, bare digits, or grouped with
#: spaces, dashes, dots, commas, slashes, colons or brackets (``98765.43210``, ``+91 (987) 654-3210``).
#: As wide as the body tokenizer's numbers (``textshape``), so whatever it reports was redacted first.
_NUMBER_LIKE = re.compile(r"\+?\d[\d\-/.,:() ]{5,30}\d")
#: A pseudonym, or a number-like run: digits inside a pseudonym are not a number to redact.
_PSEUDONYM_OR_NUMBER = re.compile(r"pn:[0-9a-f]{16}|" + _NUMBER_LIKE.pattern)
#: Fewer digits than any E.164 number: an amount (``9,000.00``) or a clock time, left as written.
_MIN_DIGITS = 7
_NOT_DIGIT = re.compile(r"[^\d+]")


def _replace_numbers(text: str, replace) -> str:
    """``text`` with every number-like run of at least ``_MIN_DIGITS`` digits replaced by ``replace(run)``."""
    def one(m: re.Match) -> str:
        run = m.group(0)
        if run[0] == "p":
            return run
        return replace(run) if sum(c.isdigit() for c in run) >= _MIN_DIGITS else run

    return _PSEUDONYM_OR_NUMBER.sub(one, text)


class Pseudonymizer:
    """Turns E.164 numbers into stable ``pn:`` pseudonyms under one key."""

    __slots__ = ("_key", "pseudonym")

    def __init__(self, key: str | bytes | None):
        if key is None or key == "" or key == b"":
            raise ConfigError(
                "SMSSTREAM_PSEUDONYM_KEY is not set: phone numbers cannot be pseudonymised. "
                "Set it to a secret string (the same on every worker and for `evaluate`)."
            )
        self._key = key.encode("utf-8") if isinstance(key, str) else bytes(key)
        self.pseudonym = lru_cache(maxsize=1 << 16)(self._pseudonym)

    def _pseudonym(self, number: str) -> str:
        digest = hmac.new(self._key, number.encode("utf-8"), hashlib.sha256).hexdigest()
        return PREFIX + digest[:16]

    def redact(self, text: str) -> str:
        """Replace every number-like run in free text by its pseudonym (for errors and logs)."""
        return _replace_numbers(text, lambda run: self.pseudonym(_NOT_DIGIT.sub("", run)))


def redact_without_key(text: str) -> str:
    """Mask number-like runs where no key is at hand (start-up errors, CLI messages)."""
    return _replace_numbers(text, lambda run: "<number>")
