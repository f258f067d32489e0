"""The notifier's Prometheus metrics, in one typed container built by :func:`create`.

Every series is per target (``alertmanager``, ``webhook``); labels never hold an
alert's entity, sender or dedup key. Counters count records, except ``failed``
and ``retried``, which count HTTP attempts.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

#: ``reason`` of ``smsstream_notify_dropped_total``.
DROP_REASONS = ("invalid_json", "invalid_record", "rejected", "gave_up", "too_many_firing")
#: ``reason`` of ``smsstream_notify_skipped_total``: records that must not page, by the contract's fields.
SKIP_REASONS = ("shadow", "silenced", "stale")


@dataclass(frozen=True)
class NotifyMetrics:
    records: Counter
    sent: Counter
    failed: Counter
    retried: Counter
    dropped: Counter
    skipped: Counter
    refreshed: Counter
    masked: Counter
    pauses: Counter
    queued: Gauge
    queue_age: Gauge
    firing: Gauge
    last_success: Gauge


def create(registry: CollectorRegistry | None = None, prefix: str = "smsstream_notify") -> NotifyMetrics:
    """A fresh set of notifier metrics registered in ``registry`` (a new one when None)."""
    registry = registry if registry is not None else CollectorRegistry()
    return NotifyMetrics(
        records=Counter(f"{prefix}_records", "Records read from sms.alerts (history read to restore firing "
                        "alerts after a start or rebalance not included).", registry=registry),
        sent=Counter(f"{prefix}_sent", "Records delivered to the target.", ["target"], registry=registry),
        failed=Counter(f"{prefix}_failed", "Delivery attempts that failed (connection error, timeout, "
                       "non-2xx answer).", ["target"], registry=registry),
        retried=Counter(f"{prefix}_retried", "Delivery attempts that retried a failed one.", ["target"],
                        registry=registry),
        dropped=Counter(f"{prefix}_dropped", "Records the target will never get: unreadable, refused as "
                        "invalid, given up after SMSSTREAM_NOTIFY_MAX_ATTEMPTS, or over the firing limit.",
                        ["target", "reason"], registry=registry),
        skipped=Counter(f"{prefix}_skipped", "Records not paged on purpose: shadow, silenced, or a firing alert "
                        "with no record for SMSSTREAM_NOTIFY_FIRING_TTL_S.", ["target", "reason"],
                        registry=registry),
        refreshed=Counter(f"{prefix}_refreshed", "Firing alerts re-sent so Alertmanager does not time them out.",
                          ["target"], registry=registry),
        masked=Counter(f"{prefix}_masked_numbers", "Phone numbers in clear found in alert records and masked "
                       "before sending (the writer has a bug).", registry=registry),
        pauses=Counter(f"{prefix}_read_pauses", "Times reading paused because SMSSTREAM_NOTIFY_MAX_INFLIGHT records "
                       "waited for delivery (a target is down or slow).", registry=registry),
        queued=Gauge(f"{prefix}_queued", "Records read and not yet delivered to the target.", ["target"],
                     registry=registry),
        queue_age=Gauge(f"{prefix}_queue_age_seconds", "Seconds since the oldest record not yet delivered to the "
                        "target was read (0 when none waits).", ["target"], registry=registry),
        firing=Gauge(f"{prefix}_firing", "Alerts this notifier keeps firing in Alertmanager.", ["target"],
                     registry=registry),
        last_success=Gauge(f"{prefix}_last_success_timestamp_seconds", "When the target last accepted a "
                           "delivery (Unix time).", ["target"], registry=registry),
    )
