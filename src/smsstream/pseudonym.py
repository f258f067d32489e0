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

#: Anything that looks like a phone number in free text (E.164 or bare digits).
_NUMBER_LIKE = re.compile(r"\+?\d[\d\- ]{5,18}\d")


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
        return _NUMBER_LIKE.sub(lambda m: self.pseudonym(re.sub(r"[\- ]", "", m.group(0))), text)


def redact_without_key(text: str) -> str:
    """Mask number-like runs where no key is at hand (start-up errors, CLI messages)."""
    return _NUMBER_LIKE.sub("<number>", text)
