"""smsstream: streaming anomaly detection for loan SMS traffic."""

__version__ = "0.1.0"
