"""Operator controls outside the detection core: the ``sms.detector-config`` topic, files of entries,
and ``smsstream config``.

The model (entries, validation, scopes, precedence, what is in force when)
is ``smsstream.detection.controls``; this package only moves entries between
the topic, files and a ``ControlBook``, and gives operators a command.
"""
