"""The words an alert is written in, and the units of event time: one place for both.

The alert words are those of CONTRACT.md (``sms.alerts``) and of
``topics/schemas/alert.schema.json``; ``tests/test_contract.py`` checks that
all three agree. Detectors, ``evaluate`` and the simulator name kinds,
reasons, severities and entity types only through these constants.
"""

from __future__ import annotations

# --- units of event time (epoch milliseconds) ----------------------------------------

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

# --- alert kinds and their reasons -----------------------------------------------------

NON_BORROWER_SPIKE = "non_borrower_spike"
TEMPLATE_HIJACK = "template_hijack"
REBIND_ANOMALY = "rebind_anomaly"
DELIVERY_FAILURE_SPIKE = "delivery_failure_spike"
KINDS = (NON_BORROWER_SPIKE, TEMPLATE_HIJACK, REBIND_ANOMALY, DELIVERY_FAILURE_SPIKE)

NON_BORROWER_SHARE = "non_borrower_share"
SHARED_LIST = "shared_list"
CONTENT_DRIFT = "content_drift"
FOREIGN_SENDER = "foreign_sender"
VOLUME_BURST = "volume_burst"
MASS_REBIND = "mass_rebind"
NUMBER_FAN_IN = "number_fan_in"
DEVICE_FAN_OUT = "device_fan_out"
ACCOUNT_FLAPPING = "account_flapping"
STALE_BINDING_SEND = "stale_binding_send"
BLOCKED_RATE = "blocked_rate"
FAILURE_RATE = "failure_rate"
#: The finer causes each kind reports.
REASONS: dict[str, tuple[str, ...]] = {
    NON_BORROWER_SPIKE: (NON_BORROWER_SHARE, SHARED_LIST),
    TEMPLATE_HIJACK: (CONTENT_DRIFT, FOREIGN_SENDER, VOLUME_BURST),
    REBIND_ANOMALY: (MASS_REBIND, NUMBER_FAN_IN, DEVICE_FAN_OUT, ACCOUNT_FLAPPING, STALE_BINDING_SEND),
    DELIVERY_FAILURE_SPIKE: (BLOCKED_RATE, FAILURE_RATE),
}

# --- severities (least severe first), statuses, entity types ---------------------------

INFO = "info"
WARNING = "warning"
CRITICAL = "critical"
SEVERITIES = (INFO, WARNING, CRITICAL)

FIRING = "firing"
RESOLVED = "resolved"
STATUSES = (FIRING, RESOLVED)

SENDER = "sender"
TEMPLATE = "template"
NUMBER = "number"
ACCOUNT = "account"
DEVICE = "device"
CARRIER = "carrier"
ENTITY_TYPES = (SENDER, TEMPLATE, NUMBER, ACCOUNT, DEVICE, CARRIER)
