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
    """An input record cannot be used; the message becomes the dead-letter ``error``."""
