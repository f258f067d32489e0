"""Normal life, hour by hour: sends with their receipts, loans opening and closing, rebinds, recycled numbers.

The clock advances in hours. Scheduled world events (reference data, book
changes, attack steps) whose time falls in an hour are applied first, each
emitting its records at its own event time; then every sender's sends for the
hour are drawn from its daily rhythm. Accounts a change moved away from keep
their old number for sends before the change (``Account.stale_until``), so
ordering inside an hour stays truthful.
"""

from __future__ import annotations

import heapq
import math
import random
from datetime import datetime, timedelta, timezone
from typing import Callable

from smsstream.records import BINDINGS, BORROWERS, RECEIPTS, SENDS, TEMPLATES
from smsstream.simulate.output import Stream
from smsstream.simulate.world import LOAN_CATEGORIES, Account, Sender, Template, World
from smsstream.vocabulary import DAY_MS, HOUR_MS, MINUTE_MS

# Local-hour shapes (weights, normalised below).
_DIURNAL = (0.15, 0.08, 0.05, 0.04, 0.05, 0.10, 0.30, 0.60, 0.90, 1.0, 1.0, 1.0,
            1.0, 0.95, 0.95, 0.95, 1.0, 1.0, 1.05, 1.10, 1.10, 0.90, 0.60, 0.30)
_BUSINESS = (0, 0, 0, 0, 0, 0, 0, 0.02, 0.3, 1, 1, 1, 0.8, 1, 1, 1, 1, 1, 0.8, 0.5, 0.2, 0, 0, 0)
_OTP = (0.20, 0.10, 0.06, 0.05, 0.06, 0.12, 0.35, 0.60, 0.80, 0.90, 0.90, 0.95,
        1.0, 0.95, 0.90, 0.90, 0.95, 1.0, 1.10, 1.25, 1.35, 1.25, 0.90, 0.45)


def _norm(weights):
    total = sum(weights)
    return tuple(w / total for w in weights)


DIURNAL, BUSINESS, OTP = _norm(_DIURNAL), _norm(_BUSINESS), _norm(_OTP)
CAMPAIGN_SHARE = 0.85
MARKETING_BLAST_SHARE = 0.8
#: Collection calls and odd messages are sometimes typed by hand: no template_id.
MANUAL_CATEGORIES = frozenset({"collection", "other"})
MANUAL_SHARE = 0.04
MANUAL_TEXTS = (
    "{sig} {name} please call us back on {hotline} today about loan {loan_id}.",
    "{sig} Dear {name}, we tried to reach you about {amount}. Call {hotline}.",
    "{sig} {name}, kindly share a suitable time to discuss your account {loan_id}.",
)
#: Legitimate rebinds per account per day: about ten a day at a lender with 100k accounts.
REBIND_RATE = 1e-4
OPEN_RATE, CLOSE_RATE, REMOVE_RATE, OVERDUE_RATE, CURE_RATE, WRITE_OFF_RATE = 0.01, 0.008, 0.004, 0.01, 0.006, 0.002


def poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 40:
        return max(0, int(round(rng.gauss(lam, math.sqrt(lam)))))
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


class Simulation:
    """One run: a world, a clock, scheduled events, attack effects, and the stream it all goes to."""

    def __init__(self, world: World, stream: Stream, rng: random.Random, end_ts: int):
        self.world = world
        self.stream = stream
        self.rng = rng
        self.start_ts = world.start_ts
        self.end_ts = end_ts
        self.region = world.region
        self._events: list[tuple[int, int, Callable, tuple]] = []
        self._event_seq = 0
        self.message_seq = 0
        self.side_message_seq = 0
        self.binding_seq = 0
        self.recycle_pool: list[tuple[int, str]] = []  # (free from ts, number) numbers carriers may reissue
        self.send_effects: dict[str, list] = {}  # sender_id -> effects on its sends
        self.receipt_effects: dict[str, list] = {}  # sender_id -> effects on its receipts
        self.protected_numbers: set[str] = set()  # attack numbers normal life must not touch
        self._new_accounts: list[tuple[Sender, Account]] = []
        self._carrier_tables = {c.name: c for c in self.region.carriers}
        self._failure_tables: dict[tuple[int, str], list[tuple[float, str, str]]] = {}
        for sender in world.senders:
            self.at(sender.start_ts, self._sender_appears, sender)
            if sender.rotates_key_at and sender.rotates_key_at > sender.start_ts:
                self.at(sender.rotates_key_at, self._rotate_key, sender)
            for templates in sender.templates.values():
                for template in templates:
                    if template.registered and template.start_ts > sender.start_ts:
                        self.at(template.start_ts - MINUTE_MS, self.emit_template, template)

    # -- scheduling -------------------------------------------------------------

    def at(self, ts: int, fn: Callable, *args) -> None:
        self._event_seq += 1
        heapq.heappush(self._events, (ts, self._event_seq, fn, args))

    def run_hour(self, t0: int) -> None:
        t1 = t0 + HOUR_MS
        if (t0 - self.start_ts) % DAY_MS == 0:
            self._schedule_day(t0)
        events = self._events
        while events and events[0][0] < t1:
            ts, _, fn, args = heapq.heappop(events)
            fn(ts, *args)
        local = t0 + self.region.utc_offset_ms
        hour = (local // HOUR_MS) % 24
        weekday = datetime.fromtimestamp(local / 1000, tz=timezone.utc).weekday()
        due_dates = [
            (datetime.fromtimestamp(local / 1000, tz=timezone.utc) + timedelta(days=d)).strftime("%d-%b-%Y")
            for d in (1, 2, 3, 5, 7)
        ]
        for sender in self.world.senders:
            if sender.start_ts < t1:
                self._sender_hour(sender, max(t0, sender.start_ts), t1, hour, weekday, due_dates)
        for sender, account in self._new_accounts:
            sender.accounts.append(account)
        self._new_accounts.clear()

    # -- reference data -----------------------------------------------------------

    def emit_template(self, ts: int, template: Template) -> None:
        self.stream.emit(TEMPLATES, template.template_id, {
            "template_id": template.template_id, "sender_id": template.sender_id,
            "category": template.category, "text": template.text, "ts": ts,
        }, ts, noisy=False)

    def emit_borrower(self, ts: int, sender: Sender, account: Account, number: str | None = None) -> None:
        number = number or account.number
        self.stream.emit(BORROWERS, f"{sender.sender_id}|{number}", {
            "sender_id": sender.sender_id, "number": number, "account_id": account.account_id,
            "status": account.borrower_status, "ts": ts,
        }, ts, noisy=False)

    def emit_tombstone(self, ts: int, sender: Sender, number: str) -> None:
        self.stream.emit(BORROWERS, f"{sender.sender_id}|{number}", None, ts, noisy=False)

    def emit_binding(self, ts: int, sender: Sender, account_id: str, old: str | None, new: str,
                     channel: str | None, device_id: str | None, source_ip: str | None) -> str:
        self.binding_seq += 1
        event_id = f"b{self.binding_seq:09d}"
        self.stream.emit(BINDINGS, f"{sender.sender_id}|{account_id}", {
            "event_id": event_id, "ts": ts, "sender_id": sender.sender_id, "account_id": account_id,
            "old_number": old, "new_number": new, "channel": channel, "device_id": device_id,
            "source_ip": source_ip,
        }, ts)
        return event_id

    def _sender_appears(self, ts: int, sender: Sender) -> None:
        for templates in sender.templates.values():
            for template in templates:
                if template.registered and template.start_ts <= sender.start_ts:
                    self.emit_template(ts, template)
        for account in sender.accounts:
            self.emit_borrower(ts, sender, account)

    def _rotate_key(self, ts: int, sender: Sender) -> None:
        """Routine credential rotation: the main API key (and often the host) changes for good."""
        rng = self.rng
        old = sender.sources[0]
        sender.sources[0] = {
            "api_key_id": f"ak_{rng.getrandbits(40):010x}",
            "source_ip": old["source_ip"] if rng.random() < 0.5 else customer_ip(rng),
            "channel": old["channel"],
        }

    # -- book changes -------------------------------------------------------------

    def rebind(self, ts: int, sender: Sender, account: Account, new: str, channel: str | None,
               device_id: str | None, source_ip: str | None, stale_until: int | None = None) -> None:
        """Move an account to a new number: binding, tombstone for the old pair, record for the new one."""
        old = account.number
        self.emit_binding(ts, sender, account.account_id, old, new, channel, device_id, source_ip)
        self.emit_tombstone(ts, sender, old)
        if sender.by_number.get(old) is account:
            del sender.by_number[old]
        account.number = new
        account.stale_number = old
        account.stale_until = ts if stale_until is None else stale_until
        sender.by_number[new] = account
        self.emit_borrower(ts, sender, account)

    def _schedule_day(self, day_start: int) -> None:
        rng = self.rng
        for sender in self.world.senders:
            if not sender.lender or sender.start_ts >= day_start + DAY_MS:
                continue
            book = len(sender.accounts)
            for fn, rate in (
                (self._open, OPEN_RATE), (self._close, CLOSE_RATE), (self._remove, REMOVE_RATE),
                (self._overdue, OVERDUE_RATE), (self._cure, CURE_RATE), (self._write_off, WRITE_OFF_RATE),
                (self._legit_rebind, REBIND_RATE),
            ):
                for _ in range(poisson(rng, book * rate * (1 + sender.growth_per_day))):
                    hour = rng.choices(range(24), DIURNAL)[0]
                    ts = day_start + ((hour * HOUR_MS - self.region.utc_offset_ms) % DAY_MS) + rng.randrange(HOUR_MS)
                    if max(ts, sender.start_ts) < self.end_ts:
                        self.at(max(ts, sender.start_ts), fn, sender)

    def _pick_account(self, sender: Sender, statuses: tuple[str, ...]) -> Account | None:
        """An account for a book change; those an attack holds are left alone."""
        accounts, rng = sender.accounts, self.rng
        if not accounts:
            return None
        for _ in range(30):
            account = accounts[int(rng.random() * len(accounts))]
            if account.status in statuses and not account.protected:
                return account
        return None

    def _open(self, ts: int, sender: Sender) -> None:
        rng = self.rng
        number = None
        if self.recycle_pool and self.recycle_pool[0][0] <= ts and rng.random() < 0.3:
            number = self.recycle_pool.pop(0)[1]  # a reissued number: a new owner
            if number in sender.by_number:
                number = None
        self.open_loan(ts, sender, number)

    def open_loan(self, ts: int, sender: Sender, number: str | None = None) -> Account:
        """A new loan: its first binding and its borrower record; sends reach it from the next hour on."""
        rng = self.rng
        account = self.world.open_account(sender, number, append=False)
        account.status = "active"
        self._new_accounts.append((sender, account))
        self.emit_binding(ts, sender, account.account_id, None, account.number, rng.choice(("app", "app", "web")),
                          account.device_id, customer_ip(rng))
        self.emit_borrower(ts, sender, account)
        return account

    def _close(self, ts: int, sender: Sender) -> None:
        account = self._pick_account(sender, ("active",))
        if account:
            account.status = "closed"
            self.emit_borrower(ts, sender, account)

    def _remove(self, ts: int, sender: Sender) -> None:
        account = self._pick_account(sender, ("closed", "written_off"))
        if account:
            account.status = "gone"
            if sender.by_number.get(account.number) is account:
                del sender.by_number[account.number]
            sender.stale_pool.append(account.number)
            self.emit_tombstone(ts, sender, account.number)

    def _overdue(self, ts: int, sender: Sender) -> None:
        account = self._pick_account(sender, ("active",))
        if account:
            account.status = "overdue"

    def _cure(self, ts: int, sender: Sender) -> None:
        account = self._pick_account(sender, ("overdue",))
        if account:
            account.status = "active"

    def _write_off(self, ts: int, sender: Sender) -> None:
        account = self._pick_account(sender, ("overdue",))
        if account:
            account.status = "written_off"
            self.emit_borrower(ts, sender, account)

    def _legit_rebind(self, ts: int, sender: Sender) -> None:
        """A customer changes number: from their own phone, on the web, or at a branch or call centre."""
        rng = self.rng
        account = self._pick_account(sender, ("active", "overdue"))
        if not account:
            return
        channel = rng.choices(("app", "web", "branch", "call_center"), (0.6, 0.15, 0.15, 0.1))[0]
        if channel == "app":
            device = account.device_id
        elif channel == "web":
            device = None
        else:
            device = rng.choice(sender.staff_devices)
        old = account.number
        self.rebind(ts, sender, account, self.world.numbers.fresh(), channel, device, customer_ip(rng))
        sender.stale_pool.append(old)
        # The old number goes back to the carrier and, later, to someone else.
        self.recycle_pool.append((ts + rng.randrange(DAY_MS // 3, DAY_MS), old))
        self.recycle_pool.sort()

    # -- sends ------------------------------------------------------------------

    def _sender_hour(self, sender: Sender, t0: int, t1: int, hour: int, weekday: int, due_dates: list[str]) -> None:
        rng = self.rng
        weekend = weekday >= 5
        growth = 1 + sender.growth_per_day * ((t0 - self.start_ts) / DAY_MS)
        span = (t1 - t0) / HOUR_MS
        for category, share in sender.mix.items():
            daily = sender.daily_volume * share * growth
            campaign = 0.0
            if category in ("repayment_reminder", "overdue_notice"):
                daily *= sender.weekend_factor if weekend else 1.0
                if hour in sender.campaign_hours:
                    campaign = daily * CAMPAIGN_SHARE / len(sender.campaign_hours)
                trickle = daily * (1 - CAMPAIGN_SHARE) * BUSINESS[hour]
            elif category == "collection":
                trickle = daily * BUSINESS[hour] * (0.3 * sender.weekend_factor if weekend else 1.0)
            elif category == "loan_marketing":
                if weekday in sender.marketing_days:
                    if hour == sender.marketing_hour:
                        campaign = daily * MARKETING_BLAST_SHARE
                    trickle = daily * (1 - MARKETING_BLAST_SHARE) * DIURNAL[hour]
                else:
                    trickle = daily * 0.3 * DIURNAL[hour]
            elif category == "otp":
                trickle = daily * OTP[hour] * (1.1 if weekend else 1.0)
            else:
                trickle = daily * DIURNAL[hour] * (0.8 if weekend else 1.0)
            extra = sender.extra_campaign
            if extra and extra[2] == category and extra[1] == hour and extra[0] == (t0 - self.start_ts) // DAY_MS:
                campaign += daily * 0.5  # a one-off blast at an unusual hour: legitimate, and loud
            templates = [t for t in sender.templates[category] if t.start_ts <= t0]
            if not templates:
                continue
            weights = [t.weight for t in templates]
            n_campaign = poisson(rng, campaign * span) if campaign else 0
            n_trickle = poisson(rng, trickle * span)
            spread = sender.campaign_spread_min * MINUTE_MS
            for i in range(n_campaign + n_trickle):
                if i < n_campaign:
                    ts = t0 + min(int(rng.expovariate(1 / spread)), t1 - t0 - 1)
                else:
                    ts = t0 + int(rng.random() * (t1 - t0))
                if category in MANUAL_CATEGORIES and rng.random() < MANUAL_SHARE:
                    template = None  # typed by an agent, not rendered from a template
                else:
                    template = templates[0] if len(templates) == 1 else rng.choices(templates, weights)[0]
                self._normal_send(sender, ts, category, template, due_dates)

    def _normal_send(self, sender: Sender, ts: int, category: str, template: Template | None,
                     due_dates: list[str]) -> None:
        rng = self.rng
        account = None
        if category in LOAN_CATEGORIES:
            if rng.random() < sender.nb_rate:
                number, account_id = self._stale_recipient(sender)
            else:
                if category == "repayment_reminder":
                    statuses: tuple[str, ...] = ("active", "overdue")
                elif category == "loan_status":
                    statuses = ("active", "closed", "overdue")
                elif category == "collection":
                    statuses = ("overdue", "written_off")
                else:
                    statuses = ("overdue",)
                account = self._pick_for_send(sender, statuses, ts)
                if account is None:
                    return
                number, account_id = account.send_number(ts), account.account_id
        elif category == "loan_marketing" and (not sender.lender or rng.random() < 0.75):
            number, account_id = self.prospect(), None
        elif sender.lender and rng.random() < 0.6:
            account = self._pick_for_send(sender, ("active", "overdue", "closed"), ts)
            if account is None:
                return
            number, account_id = account.send_number(ts), account.account_id
        else:
            number, account_id = self.prospect(), None
        self.send(sender, ts, category, template, number, account_id, due_dates)

    def _pick_for_send(self, sender: Sender, statuses: tuple[str, ...], ts: int) -> Account | None:
        """An account to write to; attacked accounts still get mail unless an attack silences them."""
        accounts, rng = sender.accounts, self.rng
        if not accounts:
            return None
        for _ in range(40):
            account = accounts[int(rng.random() * len(accounts))]
            if account.status in statuses and account.quiet_until <= ts:
                return account
        return None

    def _stale_recipient(self, sender: Sender) -> tuple[str, str | None]:
        """Stale data: a number that left this book, or someone else's number entered by mistake."""
        rng = self.rng
        pool = sender.stale_pool
        if pool and rng.random() < 0.7:
            number = pool[int(rng.random() * len(pool))]
            if number not in sender.by_number:
                return number, None
        people = self.world.people
        number = people[int(rng.random() * len(people))] if people and rng.random() < 0.5 else self.world.numbers.fresh()
        if number in sender.by_number or number in self.protected_numbers:
            number = self.world.numbers.fresh()
        return number, None

    def prospect(self) -> str:
        """Someone outside the books: marketing and OTP traffic reach people lenders do not know."""
        rng = self.rng
        people = self.world.people
        if people and rng.random() < 0.4:
            number = people[int(rng.random() * len(people))]
            if number not in self.protected_numbers:
                return number
        return self.world.numbers.fresh()

    def next_message_id(self) -> str:
        self.message_seq += 1
        return f"m{self.message_seq:010d}"

    def next_side_message_id(self) -> str:
        """An id for a send drawn from an attack's own random stream (``send(rng=...)``): its own sequence."""
        self.side_message_seq += 1
        return f"a{self.side_message_seq:010d}"

    def render(self, sender: Sender, template: Template | None, due_dates: list[str], account_id: str | None,
               rng: random.Random | None = None) -> str:
        rng = rng or self.rng
        text = template.text if template else rng.choice(MANUAL_TEXTS).replace("{sig}", sender.signature)
        return text.format(
            name=self.region.names[int(rng.random() * len(self.region.names))],
            amount=f"{self.region.currency}{rng.randrange(5, 600) * 100:,}",
            due_date=due_dates[int(rng.random() * len(due_dates))],
            link=f"https://{sender.domain}/p/{rng.getrandbits(28):07x}",
            loan_id=account_id or f"LN{rng.randrange(10 ** 7):07d}",
            days=rng.randrange(1, 120),
            code=f"{rng.randrange(10 ** 6):06d}",
            hotline=sender.hotline,
        )

    def send(self, sender: Sender, ts: int, category: str, template: Template | None, number: str,
             account_id: str | None, due_dates: list[str], body: str | None = None,
             source: dict | None = None, episode=None, rng: random.Random | None = None) -> str:
        """One SMS handed to a carrier, with the receipt the carrier will send back (if any).

        ``rng``: an attack's own random stream. Everything about this send and
        its receipt is then drawn from it (noise included) and its message id
        comes from a sequence of its own, so the attack leaves the rest of the
        run exactly as it would be without it.
        """
        side = rng
        rng = rng or self.rng
        if body is None:
            body = self.render(sender, template, due_dates, account_id, rng)
        template_id = template.template_id if template else None
        effects = self.send_effects.get(sender.sender_id)
        if effects:
            for effect in effects:
                if effect.start <= ts < effect.end:
                    number, account_id, body = effect.apply(rng, ts, template_id, category, number, account_id, body)
        if source is None:
            sources = sender.sources
            source = sources[0] if len(sources) == 1 else rng.choices(sources, sender.source_weights)[0]
        carrier = self.region.carrier_of(number)
        message_id = self.next_message_id() if side is None else self.next_side_message_id()
        value = {
            "message_id": message_id, "ts": ts, "sender_id": sender.sender_id,
            "template_id": template_id, "number": number, "category": category, "body": body,
            "account_id": account_id, "source": source, "carrier": carrier,
        }
        if episode is not None:
            episode.touch(ts)
        if rng.random() < 0.003:
            # the gateway log is flushed late: the receipt may reach the feed first
            self.stream.emit_late(SENDS, number, value, ts, rng.randrange(10_000, 180_000))
        else:
            self.stream.emit(SENDS, number, value, ts, rng=side)
        self._receipt(sender, ts, message_id, carrier, category, side)
        return message_id

    def _failure_table(self, sender: Sender, carrier: str) -> list[tuple[float, str, str]]:
        key = (sender.idx, carrier)
        table = self._failure_tables.get(key)
        if table is None:
            acc, table = 0.0, []
            for status, share, code in self._carrier_tables[carrier].failures:
                acc += share * sender.failure_factor
                table.append((acc, status, code))
            self._failure_tables[key] = table
        return table

    def _receipt(self, sender: Sender, send_ts: int, message_id: str, carrier: str, category: str,
                 side: random.Random | None = None) -> None:
        rng = side or self.rng
        profile = self._carrier_tables[carrier]
        status, code = "DELIVRD", "000"
        effects = self.receipt_effects.get(sender.sender_id)
        forced = forcing = None
        if effects:
            for effect in effects:
                if effect.start <= send_ts < effect.end:
                    forced = effect.outcome(rng, carrier, category)
                    if forced:
                        forcing = effect
                        break
        if forced:
            status, code = forced
        else:
            if rng.random() < profile.never:
                return
            roll = rng.random()
            for threshold, failed, failed_code in self._failure_table(sender, carrier):
                if roll < threshold:
                    status, code = failed, failed_code
                    break
        if profile.interim and rng.random() < profile.interim:
            interim = send_ts + rng.randrange(300, 3_000)
            if interim < self.end_ts:
                self.stream.emit(RECEIPTS, message_id, {
                    "message_id": message_id, "ts": interim, "status": "ACCEPTD", "error_code": None,
                    "carrier": carrier,
                }, interim, rng=side)
        if status == "EXPIRED":
            delay = rng.randrange(2 * HOUR_MS, 26 * HOUR_MS)
        else:
            delay = int(1000 * profile.delay_median_s * math.exp(profile.delay_sigma * rng.gauss(0, 1)))
            if rng.random() < 0.0005:
                delay = -rng.randrange(1, 3000)  # carrier clock a little behind the gateway's
        ts = send_ts + delay
        if ts >= self.end_ts:
            return
        if forcing is not None:
            forcing.episode.touch(ts)
        self.stream.emit(RECEIPTS, message_id, {
            "message_id": message_id, "ts": ts, "status": status, "error_code": code, "carrier": carrier,
        }, ts, rng=side)


def customer_ip(rng: random.Random) -> str:
    """A public-looking address of a phone or home connection."""
    return f"{rng.choice((27, 42, 49, 106, 117, 122, 157, 223))}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
