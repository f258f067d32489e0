"""The shape of an SMS body: what in it is constant, what varies, and what looks injected.

Two views of a body serve ``template_hijack``:

- against a **registered** template text (variables written ``{name}``): the
  constant parts of the text must appear in order, and what fills each
  variable must look like a value of that variable (a name is a few words, an
  amount has digits, neither carries a link or a phone number);
- against nothing (an **unregistered** template): the body is reduced to the
  things an attacker changes — link domains, phone/callback numbers and the
  signature (``【Lender】`` / ``[Lender]``) — so that a template's usual set of
  them can be learned from traffic and a new one spotted.

Matching is linear in the body length (no backtracking regular expression over
attacker-controlled text): constant chunks are found left to right, which is
exact when variables may hold any text, and variable values are judged after.

Bodies and template texts reach the detectors with their phone numbers
already replaced by pseudonyms (``pseudonymise_phones``, run at intake):
a ``pn:`` token counts as a phone number wherever a digit run would, so a
callback number is still a marker (``p:pn:...``) and still differs from the
template's own hotline, without the number itself going any further.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

#: Top-level domains accepted for a bare ``word.tld`` (no scheme, no ``www.``),
#: so that ``Mr.Smith`` or ``3.5`` are not read as links.
_BARE_TLDS = frozenset(
    "com net org info biz io co me ly cc tv vip top xyz app site online club link shop store "
    "click live pro work fun icu mobi asia cn hk tw sg my id ph th vn in pk bd lk ng ke gh za eg "
    "mx br ar cl co pe uk us ru ua kz tr de fr es it nl pl ro be ch at se no dk fi ie pt gr "
    "au nz ca jp kr to gl gd tk ml ga cf gq su".split()
)
#: A dot between a letter or digit and a letter: where every host name has to be. Probing for it
#: and widening around each hit is ten times faster than one regular expression over the body.
_DOT_PROBE = re.compile(r"[A-Za-z0-9]\.[A-Za-z]")
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.")
#: Dates and clock times look like digit runs; they are taken out before phones are looked for.
_DATE_TIME = re.compile(
    r"\b(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}|\d{1,2}:\d{2}(?::\d{2})?)\b"
)
#: Not inside an id such as ``QUI015-0000856`` or a path: no word character, dot, comma, dash or slash before.
_PHONE = re.compile(r"(?<![\w.,/-])\+?\d[\d\- ()]{5,18}\d(?![\w]|[.,]\d)")
#: A phone number as intake left it: its pseudonym (``smsstream.pseudonym``), read as a phone number.
_PSEUDONYM = re.compile(r"pn:[0-9a-f]{16}")
#: Either form of phone number, the token first: digits inside a token are not a number of their own.
_PHONE_OR_PSEUDONYM = re.compile(_PSEUDONYM.pattern + "|" + _PHONE.pattern)
#: The digit run of ``_PHONE`` alone: a text without one has no phone in it, and this is found faster.
_DIGIT_RUN = re.compile(r"\d[\d\- ()]{5,18}\d")
#: Either probe in one pass: where a value may hold a host name or a phone number.
_LINK_OR_PHONE = re.compile(_DOT_PROBE.pattern + "|" + _PHONE_OR_PSEUDONYM.pattern)
#: An E.164 number ``phones`` does not take for one (inside a link, glued to a word): pseudonymised all the same.
_E164_ANYWHERE = re.compile(r"\+[1-9]\d{6,14}(?!\d)")
_MIN_PHONE_DIGITS = 7
_SIGNATURE_HEAD = re.compile(r"^\s*(?:【([^】]{1,40})】|\[([^\]]{1,40})\])")
_SIGNATURE_TAIL = re.compile(r"(?:【([^】]{1,40})】|\[([^\]]{1,40})\])\s*$")
_TOKEN = re.compile(
    r"(?i)pn:[0-9a-f]{16}|https?://\S+|www\.\S+"
    r"|\+?\d(?:[\d\-/.,:()]|\s(?=\d))*\d|\d"
    r"|[\u3400-\u9fff]|[^\W_]+|[^\w\s]"
)


def normalise(text: str) -> str:
    """Whitespace collapsed, ends trimmed: gateways reflow spaces, attackers do not need to."""
    return " ".join(text.split())


def domains(text: str) -> list[str]:
    """Link hosts in ``text``, lower case, without ``www.``; bare ``word.tld`` only for known TLDs."""
    found: list[str] = []
    end = 0
    n = len(text)
    for m in _DOT_PROBE.finditer(text):
        dot = m.start() + 1
        if dot < end:
            continue  # a later dot of the host just read
        left = dot
        while left > 0 and text[left - 1] in _HOST_CHARS:
            left -= 1
        right = dot + 1
        while right < n and text[right] in _HOST_CHARS:
            right += 1
        end = right
        host = text[left:right].strip(".-").lower()
        labels = host.split(".")
        tld = labels[-1]
        if len(labels) < 2 or not (2 <= len(tld) <= 24 and tld.isalpha()) or not all(labels):
            continue
        scheme = text[max(0, left - 8):left].lower().endswith(("http://", "https://"))
        www = labels[0] == "www"
        if not (scheme or www or tld in _BARE_TLDS):
            continue
        if www:
            host = host[4:]
        if host not in found:
            found.append(host)
    return found


def _plain_link_host(value: str) -> str | None:
    """The host of a value that is exactly one ``http(s)://host/...`` link (the usual {link}), cheaply."""
    if " " in value or not value.startswith(("https://", "http://")):
        return None
    host = value.split("/", 3)[2].split("?", 1)[0].split(":", 1)[0].lower()
    if host.startswith("www."):
        host = host[4:]
    return host if "." in host else None


def phones(text: str) -> list[str]:
    """Phone-like digit runs (7+ digits), as bare digits with a leading ``+`` kept, and ``pn:`` tokens as they
    are; dates, times and links excluded."""
    found: list[str] = []
    if _DIGIT_RUN.search(text) is None and "pn:" not in text:
        return found
    for m in _PHONE_OR_PSEUDONYM.finditer(text):
        value = _phone_value(text, m)
        if value is not None and value not in found:
            found.append(value)
    return found


def _phone_value(text: str, m: re.Match) -> str | None:
    """The phone number a match of ``_PHONE_OR_PSEUDONYM`` stands for, or None for a date, a time or a link."""
    raw = m.group(0)
    if raw[0] == "p":
        value = raw
    else:
        digits = "".join(c for c in raw if c.isdigit())
        if len(digits) < _MIN_PHONE_DIGITS or _DATE_TIME.search(raw):
            return None
        value = ("+" if raw[0] == "+" else "") + digits
    token = text[text.rfind(" ", 0, m.start()) + 1:m.start()]
    if "://" in token or "www." in token or "=" in token:
        return None  # a number inside a link
    return value


def pseudonymise_phones(text: str, pseudonym: Callable[[str], str]) -> str:
    """``text`` with every phone number in it replaced by ``pseudonym(number)``: what the detectors read.

    The numbers are those ``phones`` finds (so they read the pseudonyms as
    phone numbers, with the same verdicts), then any E.164 number left (in a
    link, glued to a word), which ``phones`` still does not count.
    """
    if _DIGIT_RUN.search(text) is None:
        return text
    out: list[str] = []
    pos = 0
    for m in _PHONE.finditer(text):
        value = _phone_value(text, m)
        if value is not None:
            out += (text[pos:m.start()], pseudonym(value))
            pos = m.end()
    if out:
        out.append(text[pos:])
        text = "".join(out)
    if "+" in text:
        text = _E164_ANYWHERE.sub(lambda m: pseudonym(m.group(0)), text)
    return text


def signature(text: str) -> str | None:
    """The sender signature a body starts (or else ends) with: ``【Lender】`` or ``[Lender]``."""
    m = _SIGNATURE_HEAD.search(text) or _SIGNATURE_TAIL.search(text)
    if m is None:
        return None
    return (m.group(1) or m.group(2)).strip()


def words(text: str) -> list[str]:
    """Tokens for word-level diffs: links and digit runs whole, each CJK character, words, punctuation."""
    return _TOKEN.findall(text)


_NUM = "\0num"
_VAR_TOKEN = "\0var"
#: Most phone-variable values one registered template remembers the numbers of.
MAX_REMEMBERED_VALUES = 256


def _masked(token: str) -> str:
    """Digit runs shorter than a phone number (amounts, dates) compare as one kind of token."""
    if token[0].isdigit() or (token[0] == "+" and len(token) > 1):
        if sum(c.isdigit() for c in token) < _MIN_PHONE_DIGITS or _DATE_TIME.fullmatch(token):
            return _NUM
    return token


class Markers(NamedTuple):
    """What an attacker changes in a body: link domains, callback numbers, signature."""

    domains: tuple[str, ...] = ()
    phones: tuple[str, ...] = ()
    signature: str | None = None

    @classmethod
    def of(cls, text: str) -> "Markers":
        return cls(tuple(domains(text)), tuple(phones(text)), signature(text))


# --- registered templates ----------------------------------------------------

_URL_VARS = ("url", "link", "href", "site", "web", "domain")
_PHONE_VARS = ("phone", "tel", "mobile", "hotline", "contact", "callback", "msisdn")
_ID_VARS = ("id", "no", "num", "ref", "code", "otp", "account", "acct", "loan", "card", "order", "pin")
_AMOUNT_VARS = ("amount", "amt", "balance", "fee", "sum", "total", "due", "principal", "interest", "penalty", "money")
_DATE_VARS = ("date", "time", "day", "deadline", "until", "when")
_NAME_VARS = ("name", "customer", "user", "borrower", "first", "last", "title")


def _var_kind(name: str) -> str:
    low = name.lower()
    for kind, hints in (
        ("url", _URL_VARS),
        ("phone", _PHONE_VARS),
        ("amount", _AMOUNT_VARS),
        ("date", _DATE_VARS),
        ("id", _ID_VARS),
        ("name", _NAME_VARS),
    ):
        if any(h in low for h in hints):
            return kind
    return "text"


#: kind -> (most characters, most words) a variable value may plausibly span.
_VAR_LIMITS = {
    "url": (200, 3),
    "phone": (24, 4),
    "amount": (24, 3),
    "date": (32, 5),
    "id": (40, 3),
    "name": (48, 6),
    "text": (60, 8),
}


@dataclass(slots=True)
class Fit:
    """How a body compares with a registered template text.

    ``ok`` when it fits; otherwise what is wrong with it, in words: markers the
    template does not have (``new_domains``, ``new_phones``, ``signature``
    changed) and ``added`` / ``removed`` words. A fitting verdict is shared by
    every body it describes: read it, do not change it.
    """

    ok: bool
    new_domains: Sequence[str] = ()
    new_phones: Sequence[str] = ()
    signature: str | None = None  # the body's signature when it differs from the template's
    added: Sequence[str] = ()
    removed: Sequence[str] = ()
    #: links and numbers in variables the template allows them in ({link}, {hotline}): not wrong in
    #: themselves, so judged against the links and numbers the template's own traffic carries
    var_markers: Markers | None = None

    @property
    def injected(self) -> bool:
        """A link, a callback number or a signature the template does not carry: unambiguous."""
        return bool(self.new_domains or self.new_phones or self.signature is not None)


_FITS = Fit(True)


class TemplateText:
    """A registered template text, compiled for linear matching of bodies against it."""

    __slots__ = ("text", "chunks", "kinds", "markers", "has_signature", "has_link_vars", "_limits", "_tokens",
                 "_url_at", "_link_vars", "_phones_in", "_fits")

    def __init__(self, text: str):
        self.text = normalise(text)
        parts = _VAR.split(self.text)
        # parts alternates literal, var name, literal, ...; len(parts) is odd.
        self.chunks: list[str] = parts[0::2]
        self.kinds: list[str] = [_var_kind(v) for v in parts[1::2]]
        literal = "".join(self.chunks)
        self.markers = Markers.of(literal)
        self.has_signature = self.markers.signature is not None
        self.has_link_vars = "url" in self.kinds or "phone" in self.kinds
        self._limits = [_VAR_LIMITS[k] for k in self.kinds]
        self._url_at = frozenset(i for i, k in enumerate(self.kinds) if k == "url")
        self._link_vars = [(i, k) for i, k in enumerate(self.kinds) if k in ("url", "phone")]
        #: phone-variable value -> the numbers in it: a template's hotline is the same in most sends
        self._phones_in: dict[str, list[str]] = {}
        #: (domains, phone numbers) in the link and phone variables of fitting bodies -> the verdict saying so
        self._fits: dict[tuple[tuple[str, ...], tuple[str, ...]], Fit] = {}
        self._tokens: list[str] | None = None

    def __reduce__(self):
        return (TemplateText, (self.text,))

    def values(self, body: str) -> list[str] | None:
        """The variable values of ``body`` if its constant chunks are all there in order, else None."""
        chunks = self.chunks
        first, last = chunks[0], chunks[-1]
        if len(chunks) == 1:
            return [] if body == first else None
        if not body.startswith(first):
            return None
        end = len(body) - len(last)
        if end < len(first) or not body.endswith(last):
            return None
        pos = len(first)
        values = []
        for chunk in chunks[1:-1]:
            at = body.find(chunk, pos, end) if chunk else pos
            if at < 0:
                return None
            values.append(body[pos:at])
            pos = at + len(chunk)
        values.append(body[pos:end])
        return values

    def fit(self, body: str) -> Fit:
        """Judge one body; cheap when it fits, a word diff when it does not."""
        values = self.values(body)
        if values is None:
            body = normalise(body)
            values = self.values(body)
        bad = None
        if values is not None:
            bad = self._implausible(values)
            if bad is None:
                return self._fitting(values) if self.has_link_vars else _FITS
        fit = self._drift(body)
        if bad is not None and not (fit.injected or fit.added):
            fit.added = words(bad)
        return fit

    def _fitting(self, values: list[str]) -> Fit:
        """The verdict on a fitting body: the same links and hotline recur, and so does one shared verdict."""
        found = self._var_markers(values)
        if not (found[0] or found[1]):
            return _FITS
        fit = self._fits.get(found)
        if fit is None:
            fit = Fit(True, var_markers=Markers(*found))
            if len(self._fits) < MAX_REMEMBERED_VALUES:
                self._fits[found] = fit
        return fit

    def _var_markers(self, values: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Link domains and phone numbers in the variables that may hold them."""
        found_domains: list[str] = []
        found_phones: list[str] = []
        for i, kind in self._link_vars:
            value = values[i]
            if kind == "url":
                host = _plain_link_host(value)
                for d in (host,) if host else domains(value):
                    if d not in found_domains:
                        found_domains.append(d)
            else:
                numbers = self._phones_in.get(value)
                if numbers is None:
                    numbers = phones(value)
                    if len(self._phones_in) < MAX_REMEMBERED_VALUES:
                        self._phones_in[value] = numbers
                found_phones.extend(p for p in numbers if p not in found_phones)
        return tuple(found_domains), tuple(found_phones)

    def _implausible(self, values: list[str]) -> str | None:
        """The first variable value that does not look like a value of its variable."""
        kinds = self.kinds
        for value, (max_chars, max_words) in zip(values, self._limits):
            if len(value) > max_chars or value.count(" ") >= max_words:
                return value
        # One look over all values for anything link- or phone-like before judging them one by one
        # (neither probe can match across the newline).
        url_at = self._url_at
        joined = "\n".join([v for i, v in enumerate(values) if i not in url_at] if url_at else values)
        if _LINK_OR_PHONE.search(joined) is None:
            return None
        for value, kind in zip(values, kinds):
            if kind == "url":
                continue
            if _DOT_PROBE.search(value) and domains(value):
                return value
            if _PHONE_OR_PSEUDONYM.search(value) is None:
                continue
            if kind not in ("phone", "id") and phones(value):
                return value
            if kind in ("id", "phone") and not _one_number(value) and phones(value):
                return value
        return None

    def _drift(self, body: str) -> Fit:
        got = Markers.of(body)
        allow_url = "url" in self.kinds
        allow_phone = "phone" in self.kinds
        new_domains = [d for d in got.domains if d not in self.markers.domains]
        new_phones = [p for p in got.phones if p not in self.markers.phones]
        var_markers = None
        if allow_url or allow_phone:
            var_markers = Markers(tuple(new_domains) if allow_url else (), tuple(new_phones) if allow_phone else ())
            new_domains = [] if allow_url else new_domains
            new_phones = [] if allow_phone else new_phones
        if "id" in self.kinds:
            # An id variable may look like a number; only a number outside the variables is injected.
            literal_free = self._outside_vars(body)
            new_phones = [p for p in new_phones if p in literal_free]
        sig = None
        if self.has_signature and got.signature != self.markers.signature:
            sig = got.signature or ""
        added, removed = self._word_diff(body)
        return Fit(False, new_domains, new_phones, sig, added, removed, var_markers)

    def _outside_vars(self, body: str) -> set[str]:
        added, _ = self._word_diff(body)
        return set(phones(" ".join(added)))

    def _word_diff(self, body: str) -> tuple[list[str], list[str]]:
        if self._tokens is None:
            tokens: list[str] = []
            for i, chunk in enumerate(self.chunks):
                tokens.extend(_masked(t) for t in words(chunk))
                if i < len(self.kinds):
                    tokens.append(_VAR_TOKEN)
            self._tokens = tokens
        mine = self._tokens
        shown = words(body)
        theirs = [_masked(t) for t in shown]
        added: list[str] = []
        removed: list[str] = []
        matcher = difflib.SequenceMatcher(None, mine, theirs, autojunk=False)
        for op, i1, i2, j1, j2 in matcher.get_opcodes():
            if op == "equal":
                continue
            template_side = mine[i1:i2]
            if template_side and all(t == _VAR_TOKEN for t in template_side):
                # Text standing in for variables: only suspicious if it is not a plausible value.
                chunk = " ".join(shown[j1:j2])
                if domains(chunk) or (phones(chunk) and "phone" not in self.kinds and "id" not in self.kinds):
                    added.extend(shown[j1:j2])
                continue
            removed.extend(t for t in template_side if t not in (_VAR_TOKEN, _NUM))
            if op in ("insert", "replace"):
                added.extend(t for t in shown[j1:j2] if t != _VAR_TOKEN)
        return added, removed


def _one_number(value: str) -> bool:
    """A value that is just a number (digits, spaces, dashes) or just a pseudonymised one."""
    bare = value.strip()
    return bare.replace(" ", "").replace("-", "").isdigit() or _PSEUDONYM.fullmatch(bare) is not None


def diff_words(fit: Fit, limit: int = 20) -> str:
    """The word diff of a drifted body as one short line: ``+added -removed``."""
    parts = []
    if fit.added:
        parts.append("+" + " ".join(fit.added[:limit]))
    if fit.removed:
        parts.append("-" + " ".join(fit.removed[:limit]))
    return " ".join(parts)
