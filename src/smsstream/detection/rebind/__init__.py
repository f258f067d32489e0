"""``rebind_anomaly``: account <-> number rebinds that look like account takeover or stale books.

Four parts, each keyed by the entity its alerts name:

- ``AccountRebinds`` (``<sender_id>|<account_id>``, from ``sms.bindings``):
  ``account_flapping`` -- an account moving back to a number it left, or
  changing number three times within ``FLAP_HORIZON_MS``. It also tells the
  number part, as ``NumberBinding`` facts, which account arrived at and which
  left each number.
- ``NumberRebinds`` (recipient number, from those facts and loan-obligation
  sends): ``number_fan_in`` -- accounts rebound *to* one number from
  ``FAN_IN_MIN`` or more different numbers within ``FAN_IN_HORIZON_MS``,
  across lenders too (one customer moving all their loans to a new number
  comes from one number; a family sharing a phone is two); and
  ``stale_binding_send`` -- a lender still sending loan-obligation SMS about
  an account to the number that account moved away from, more than
  ``STALE_GRACE_MS`` after the move (the number may now belong to someone
  else: a debt disclosed to a stranger).
- ``SenderRebinds`` (``sender_id``): ``mass_rebind`` -- rebinds in the
  trailing 10 min / 1 h / 6 h against the sender's own rate (a big lender's
  handful a day is its normal), with the devices, IPs and channels they came
  from.
- ``DeviceRebinds`` (``device_id``): ``device_fan_out`` -- one device
  rebinding accounts away from many different numbers; staff devices
  (branch, call centre) earn their own higher rate.

First bindings (``old_number`` null) open accounts: they never count as
rebinds, fan-in or fan-out, since one person borrowing from several lenders
binds one number many times.

Each part's module says what it keeps and for how long; ``rates`` how a
lender's or device's own rate is learned. Every number the parts see is a
pseudonym already (``intake``), the number keys included.
"""

from __future__ import annotations

from smsstream.detection.base import Part
from smsstream.detection.rebind.accounts import AccountRebinds
from smsstream.detection.rebind.devices import DeviceRebinds
from smsstream.detection.rebind.facts import NUMBER_BINDINGS, NumberBinding
from smsstream.detection.rebind.numbers import NumberRebinds
from smsstream.detection.rebind.senders import SenderRebinds

__all__ = ["NUMBER_BINDINGS", "REBIND_PARTS", "AccountRebinds", "DeviceRebinds", "NumberBinding", "NumberRebinds",
           "SenderRebinds"]

#: In fact order: the account part feeds the number part.
REBIND_PARTS: list[type[Part]] = [AccountRebinds, NumberRebinds, SenderRebinds, DeviceRebinds]
