"""The exceptions smsstream raises on purpose. Every message names the fix."""


class SmsstreamError(Exception):
    """Root of smsstream's own errors; the CLI prints these as one line and exits non-zero."""


class ConfigError(SmsstreamError):
    """A setting is missing or invalid."""


class BrokerUnreachable(SmsstreamError):
    """The Kafka bootstrap address did not answer."""


class BrokerStartError(SmsstreamError):
    """The embedded development broker could not start (port taken, binary missing, crashed)."""


class TopicSpecError(SmsstreamError):
    """A file under topics/ is not a valid topic spec."""


class RecordError(SmsstreamError):
    """An input record cannot be used; the message becomes the dead-letter ``error``.

    ``reason`` is the record's dead-letter reason, one word of
    :data:`DEAD_LETTER_REASONS`: replay's report, the worker's metrics and
    the tests all use it.
    """

    reason = "invalid_record"


class InvalidJson(RecordError):
    """The value is not JSON (or not UTF-8)."""

    reason = "invalid_json"


class TooLarge(RecordError):
    """The record, or one of its text fields, is over its size limit."""

    reason = "too_large"


class NullValue(RecordError):
    """A null value (tombstone) on a topic where tombstones mean nothing."""

    reason = "null_value"


class UnknownTopic(RecordError):
    """A replay line names a topic that is not an smsstream input topic."""

    reason = "unknown_topic"


class DuplicateEvent(RecordError):
    """The same event (same id) arrived again within the duplicate horizon."""

    reason = "duplicate"


class LateEvent(RecordError):
    """The event is older than the latest event time by more than the late horizon."""

    reason = "late"


#: Every dead-letter reason, in the order the docs list them.
DEAD_LETTER_REASONS = tuple(
    cls.reason for cls in (InvalidJson, TooLarge, RecordError, NullValue, UnknownTopic, DuplicateEvent, LateEvent)
)
