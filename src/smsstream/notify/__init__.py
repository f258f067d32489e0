"""``smsstream notify``: pages security on-call from ``sms.alerts`` (Alertmanager API v2, signed webhook)."""
