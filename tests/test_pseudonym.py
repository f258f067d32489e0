"""Numbers leave smsstream only as ``pn:`` pseudonyms, however they were written."""

from __future__ import annotations

import hashlib
import hmac
import re

import pytest

from smsstream.errors import ConfigError
from smsstream.pseudonym import Pseudonymizer, redact_without_key

PN = Pseudonymizer("test-key")


def test_a_pseudonym_is_the_contracts_hmac_prefix():
    digest = hmac.new(b"test-key", b"+919876543210", hashlib.sha256).hexdigest()
    assert PN.pseudonym("+919876543210") == "pn:" + digest[:16]


def test_no_key_names_the_setting_to_fix():
    with pytest.raises(ConfigError, match="SMSSTREAM_PSEUDONYM_KEY"):
        Pseudonymizer("")


@pytest.mark.parametrize("written", [
    "+919876543210", "+91 98765 43210", "+91-98765-43210", "+91.98765.43210", "+91 (987) 654-3210",
    "+91/98765/43210",
])
def test_a_number_written_any_common_way_becomes_the_pseudonym_of_its_e164_form(written):
    assert PN.redact(f"call {written} today") == f"call {PN.pseudonym('+919876543210')} today"


@pytest.mark.parametrize("text", ["Call 98765.43210", "98765,43210 now", "https://919876543210.in/pay"])
def test_no_run_of_seven_digits_survives_redaction(text):
    for redacted in (PN.redact(text), redact_without_key(text)):
        left = re.sub(r"pn:[0-9a-f]{16}", "", redacted)
        assert not re.search(r"\d(?:\D?\d){6}", left), redacted


@pytest.mark.parametrize("text", ["CNY 9,000.00", "due at 09:30", "loan 12345", "code 123456"])
def test_amounts_times_and_short_codes_stay_readable(text):
    assert PN.redact(text) == text
    assert redact_without_key(text) == text
