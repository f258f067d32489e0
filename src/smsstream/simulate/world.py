"""The simulated world: regions and carriers, senders, their templates, sources and borrower books.

Everything is drawn from one seeded ``random.Random`` so a seed names a world.
The world holds state only; ``traffic`` moves it through time and ``attacks``
disturb it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from smsstream.vocabulary import DAY_MS, HOUR_MS, MINUTE_MS

LOAN_CATEGORIES = ("repayment_reminder", "overdue_notice", "collection", "loan_status")
REMINDER_CATEGORIES = ("repayment_reminder", "overdue_notice", "collection")


@dataclass(frozen=True)
class Carrier:
    name: str
    share: float
    prefixes: tuple[str, ...]
    delay_median_s: float  # median DLR delay for delivered messages
    delay_sigma: float  # lognormal spread
    never: float  # share of sends that never get a receipt
    #: share of each failure status among receipts (the rest is DELIVRD)
    failures: tuple[tuple[str, float, str], ...]
    #: share of messages that first get an intermediate ACCEPTD receipt
    interim: float = 0.0


@dataclass(frozen=True)
class Region:
    code: str
    country_code: str
    national_digits: int
    utc_offset_ms: int
    currency: str
    carriers: tuple[Carrier, ...]
    names: tuple[str, ...]
    tld: str

    def carrier_of(self, number: str) -> str:
        return _PREFIX_CARRIER[self.code][number[len(self.country_code) + 1 : len(self.country_code) + 3]]


def _carrier(name, share, prefixes, median, sigma, never, failures, interim=0.0):
    return Carrier(name, share, tuple(prefixes), median, sigma, never, tuple(failures), interim)


REGIONS: dict[str, Region] = {
    "in": Region(
        "in", "91", 10, int(5.5 * HOUR_MS), "Rs.",
        (
            _carrier("jio", 0.42, [str(p) for p in range(60, 80)], 3.0, 0.8, 0.010,
                     [("UNDELIV", 0.012, "001"), ("EXPIRED", 0.006, "002"), ("REJECTD", 0.002, "008"),
                      ("BLOCKED", 0.003, "DND")]),
            _carrier("airtel", 0.33, [str(p) for p in range(80, 92)], 5.0, 0.9, 0.015,
                     [("UNDELIV", 0.018, "1"), ("EXPIRED", 0.010, "27"), ("REJECTD", 0.003, "88"),
                      ("BLOCKED", 0.004, "1034")]),
            _carrier("vi", 0.20, [str(p) for p in range(92, 98)], 9.0, 1.1, 0.025,
                     [("UNDELIV", 0.030, "ABSENT_SUBSCRIBER"), ("EXPIRED", 0.015, "EXP"),
                      ("REJECTD", 0.005, "REJ"), ("BLOCKED", 0.002, "BLK")], interim=0.25),
            _carrier("bsnl", 0.05, ["98", "99"], 20.0, 1.3, 0.060,
                     [("UNDELIV", 0.050, "UNDELIV"), ("EXPIRED", 0.040, "EXPIRED"),
                      ("UNKNOWN", 0.010, "UNKNOWN"), ("REJECTD", 0.005, "REJECTD")], interim=0.5),
        ),
        ("Aarav", "Priya", "Rahul", "Anjali", "Vikram", "Sneha", "Arjun", "Pooja", "Rohit", "Kavya",
         "Amit", "Neha", "Suresh", "Divya", "Karan", "Meera", "Sanjay", "Lakshmi", "Imran", "Fatima"),
        "in",
    ),
    "ng": Region(
        "ng", "234", 10, 1 * HOUR_MS, "N",
        (
            _carrier("mtn", 0.50, ["70", "80", "81", "90"], 4.0, 0.9, 0.020,
                     [("UNDELIV", 0.025, "0x00000045"), ("EXPIRED", 0.012, "0x00000062"),
                      ("REJECTD", 0.004, "0x0000000b"), ("BLOCKED", 0.003, "0x00000401")]),
            _carrier("airtel", 0.25, ["71", "82", "91"], 6.0, 1.0, 0.020,
                     [("UNDELIV", 0.030, "1"), ("EXPIRED", 0.015, "27"), ("BLOCKED", 0.004, "1034")]),
            _carrier("glo", 0.18, ["72", "83", "92"], 12.0, 1.2, 0.040,
                     [("UNDELIV", 0.040, "UNDELIV"), ("EXPIRED", 0.025, "EXPIRED"),
                      ("REJECTD", 0.006, "REJECTD")], interim=0.2),
            _carrier("9mobile", 0.07, ["73", "84", "93"], 15.0, 1.3, 0.050,
                     [("UNDELIV", 0.045, "51"), ("EXPIRED", 0.030, "52"), ("UNKNOWN", 0.010, "99")]),
        ),
        ("Chinedu", "Ngozi", "Emeka", "Aisha", "Tunde", "Funke", "Ibrahim", "Zainab", "Segun", "Amaka",
         "Musa", "Halima", "Yusuf", "Blessing", "Obinna", "Chioma", "Kunle", "Bisi", "Femi", "Hauwa"),
        "ng",
    ),
    "ph": Region(
        "ph", "63", 10, 8 * HOUR_MS, "PHP ",
        (
            _carrier("globe", 0.45, ["90", "91", "92", "93"], 4.0, 0.8, 0.015,
                     [("UNDELIV", 0.020, "ERR_001"), ("EXPIRED", 0.010, "ERR_002"),
                      ("BLOCKED", 0.004, "ERR_FILTER")]),
            _carrier("smart", 0.45, ["94", "95", "96", "97", "98"], 5.0, 0.9, 0.015,
                     [("UNDELIV", 0.022, "34"), ("EXPIRED", 0.008, "62"), ("REJECTD", 0.004, "11"),
                      ("BLOCKED", 0.005, "SPAM")]),
            _carrier("dito", 0.10, ["99"], 10.0, 1.2, 0.030,
                     [("UNDELIV", 0.035, "UNDELIV"), ("EXPIRED", 0.020, "EXPIRED"),
                      ("UNKNOWN", 0.008, "UNKNOWN")], interim=0.3),
        ),
        ("Juan", "Maria", "Jose", "Ana", "Mark", "Kristine", "John", "Angel", "Paolo", "Joy",
         "Carlo", "Rose", "Miguel", "Grace", "Rey", "Liza", "Jun", "Mae", "Ramon", "Cherry"),
        "ph",
    ),
}

_PREFIX_CARRIER: dict[str, dict[str, str]] = {
    code: {p: c.name for c in region.carriers for p in c.prefixes} for code, region in REGIONS.items()
}

# --- template texts ------------------------------------------------------------
# {sig} is filled when the template is registered, so the registered text carries
# the literal signature; the other variables are rendered per message.
TEXTS: dict[str, tuple[str, ...]] = {
    "repayment_reminder": (
        "{sig} Dear {name}, your EMI of {amount} is due on {due_date}. Pay now at {link} to avoid late fees.",
        "{sig} Hi {name}, reminder: {amount} due {due_date} on loan {loan_id}. Repay: {link}",
        "{sig} {name}, your repayment of {amount} falls due on {due_date}. Keep a good credit score, pay at {link}.",
    ),
    "overdue_notice": (
        "{sig} {name}, your payment of {amount} is {days} days overdue. Pay today at {link} or call {hotline}.",
        "{sig} Dear {name}, loan {loan_id} is overdue by {days} days. Outstanding {amount}. Pay: {link}",
    ),
    "collection": (
        "{sig} FINAL NOTICE {name}: {amount} unpaid for {days} days on loan {loan_id}. Settle at {link} or call {hotline}.",
        "{sig} {name}, your account is with our recovery team. Clear {amount} now: {link}",
    ),
    "loan_status": (
        "{sig} Congratulations {name}! Your loan {loan_id} of {amount} has been disbursed.",
        "{sig} {name}, your loan application {loan_id} is approved. Amount {amount}. Details: {link}",
        "{sig} Dear {name}, loan {loan_id} is fully repaid and closed. Thank you.",
    ),
    "loan_marketing": (
        "{sig} Need cash? Get up to {amount} in 10 minutes, no paperwork. Apply: {link}",
        "{sig} {name}, you are pre-approved for {amount}. Offer ends {due_date}. {link}",
        "{sig} Festival offer: loans up to {amount} at 0% processing fee. {link} T&C apply.",
    ),
    "otp": (
        "{sig} {code} is your OTP to sign in. Do not share it with anyone.",
        "{sig} Your verification code is {code}. Valid for 10 minutes.",
    ),
    "notification": (
        "{sig} Your KYC documents have been received and are under review.",
        "{sig} {name}, we received your payment of {amount}. Thank you.",
        "{sig} Your statement for {due_date} is ready: {link}",
    ),
    "other": ("{sig} {name}, update the app for new features: {link}",),
}

#: Local-language variants some senders use (non-ASCII bodies are part of real traffic).
REGION_TEXTS: dict[str, dict[str, tuple[str, ...]]] = {
    "in": {
        "repayment_reminder": ("{sig} प्रिय {name}, आपकी EMI {amount} {due_date} को देय है। अभी भुगतान करें: {link}",),
        "otp": ("{sig} आपका OTP {code} है। इसे किसी के साथ साझा न करें।",),
    },
    "ph": {
        "repayment_reminder": ("{sig} Hi {name}, paalala: ang bayad na {amount} ay due sa {due_date}. Magbayad dito: {link}",),
        "overdue_notice": ("{sig} {name}, lampas na ng {days} araw ang bayad mo na {amount}. Magbayad na: {link}",),
    },
    "ng": {
        "repayment_reminder": ("{sig} Hello {name}, your loan of {amount} go due on {due_date}. Abeg pay now: {link}",),
    },
}

SYLLABLES_A = ("Quick", "Jade", "Rupee", "Kash", "Lend", "Money", "Easy", "Swift", "Star", "Sun",
               "Go", "True", "Fair", "Prime", "Zen", "Nova", "Bright", "Ever", "Peak", "Blue")
SYLLABLES_B = ("Cash", "Credit", "Loan", "Fin", "Pay", "Lend", "Money", "Capital", "Fund", "Wallet",
               "Kredit", "Paisa", "Trust", "Bee", "Box")
#: Random draws for an unused brand name before numbering one (300 lender and 200 service names exist).
NAME_ATTEMPTS = 200
SERVICE_NAMES = ("Shop", "Ride", "Food", "Bank", "Mart", "Travel", "Health", "Play", "Mail", "Bill")

LENDER_MIX = {
    "repayment_reminder": 0.38, "overdue_notice": 0.12, "collection": 0.06, "loan_status": 0.10,
    "loan_marketing": 0.16, "otp": 0.12, "notification": 0.05, "other": 0.01,
}
SERVICE_MIX = {"otp": 0.65, "notification": 0.30, "other": 0.05}


class Account:
    """One loan account in a lender's book; ``stale_number`` keeps a moved-away number in use until ``stale_until``."""

    __slots__ = ("account_id", "number", "status", "device_id", "stale_number", "stale_until", "protected",
                 "quiet_until")

    def __init__(self, account_id: str, number: str, status: str, device_id: str):
        self.account_id = account_id
        self.number = number
        self.status = status  # active | overdue | closed | written_off
        self.device_id = device_id
        self.stale_number: str | None = None
        self.stale_until = 0
        self.protected = False  # taken by an attack: normal book changes leave it alone
        self.quiet_until = 0  # no normal sends before this (an attack owns its traffic)

    def send_number(self, ts: int) -> str:
        if self.stale_number is not None and ts < self.stale_until:
            return self.stale_number
        return self.number

    @property
    def borrower_status(self) -> str:
        return "active" if self.status == "overdue" else self.status


@dataclass
class Template:
    template_id: str
    sender_id: str
    category: str
    text: str
    registered: bool
    start_ts: int
    weight: float = 1.0


@dataclass
class Sender:
    idx: int
    sender_id: str
    brand: str
    lender: bool
    daily_volume: float
    mix: dict[str, float]
    campaign_hours: tuple[int, ...]
    marketing_hour: int
    marketing_days: frozenset[int]
    weekend_factor: float
    campaign_spread_min: float
    nb_rate: float
    failure_factor: float
    start_ts: int
    growth_per_day: float
    rotates_key_at: int | None
    #: (day index, local hour, category) of one unusual but legitimate blast, or None
    extra_campaign: tuple[int, int, str] | None
    domain: str
    hotline: str
    sources: list[dict]
    source_weights: list[float]
    templates: dict[str, list[Template]] = field(default_factory=dict)
    accounts: list[Account] = field(default_factory=list)
    by_number: dict[str, Account] = field(default_factory=dict)  # current borrowers (book keys)
    stale_pool: list[str] = field(default_factory=list)  # numbers that left the book
    staff_devices: list[str] = field(default_factory=list)
    account_seq: int = 0

    @property
    def signature(self) -> str:
        return f"[{self.brand}]"

    def new_account_id(self) -> str:
        self.account_seq += 1
        return f"{self.sender_id[:3].upper()}{self.idx:03d}-{self.account_seq:07d}"


class Numbers:
    """Draws fresh E.164 numbers of one region, never handing out the same one twice."""

    def __init__(self, region: Region, rng: random.Random):
        self.region = region
        self.rng = rng
        self.used: set[str] = set()
        self._prefixes = [p for c in region.carriers for p in c.prefixes]
        self._weights = [c.share / len(c.prefixes) for c in region.carriers for _ in c.prefixes]
        self._head = "+" + region.country_code
        self._tail_digits = region.national_digits - 2

    def fresh(self) -> str:
        rng = self.rng
        while True:
            prefix = rng.choices(self._prefixes, self._weights)[0]
            number = f"{self._head}{prefix}{rng.randrange(10 ** self._tail_digits):0{self._tail_digits}d}"
            if number not in self.used:
                self.used.add(number)
                return number

    def block(self, count: int) -> list[str]:
        """A run of consecutive numbers, as purchased lists often are."""
        rng = self.rng
        prefix = rng.choice(self._prefixes)
        start = rng.randrange(10 ** self._tail_digits - count - 1)
        out = []
        for i in range(count):
            number = f"{self._head}{prefix}{start + i:0{self._tail_digits}d}"
            if number not in self.used:
                self.used.add(number)
                out.append(number)
        return out


def _ip(rng: random.Random) -> str:
    return f"{rng.choice((49, 103, 117, 152, 157, 182, 203))}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


class World:
    """Senders with their templates, sources and books, in one region, starting at ``start_ts``."""

    def __init__(self, rng: random.Random, region: Region, n_senders: int, daily_sends: float,
                 start_ts: int, days: int):
        self.rng = rng
        self.region = region
        self.start_ts = start_ts
        self.days = days
        self.numbers = Numbers(region, rng)
        self.template_seq = 0
        self.device_seq = 0
        self.people: list[str] = []  # every number that ever held a loan, for borrowers of several lenders
        self.senders: list[Sender] = []
        self._build_senders(n_senders, daily_sends)

    # -- construction ---------------------------------------------------------

    def _build_senders(self, n: int, daily_sends: float) -> None:
        rng = self.rng
        # A few big lenders and a long tail: log-volume falls a little faster than log-uniform (> 4 decades).
        raw = [10 ** (-4.4 * ((r / max(n - 1, 1)) ** 0.8)) for r in range(n)]
        scale = daily_sends / sum(raw)
        used_names: set[str] = set()
        service_ranks = set(rng.sample(range(1, n), max(1, n // 7))) if n > 2 else set()
        for rank in range(n):
            lender = rank not in service_ranks
            for _ in range(NAME_ATTEMPTS):
                if lender:
                    brand = rng.choice(SYLLABLES_A) + rng.choice(SYLLABLES_B)
                else:
                    brand = rng.choice(SYLLABLES_A) + rng.choice(SERVICE_NAMES)
                if brand not in used_names:
                    break
            else:  # the two-syllable names are (nearly) used up: number this one
                brand = next(f"{brand}{k}" for k in range(2, n + 2) if f"{brand}{k}" not in used_names)
            used_names.add(brand)
            sender_id = brand.lower()
            base_mix = LENDER_MIX if lender else SERVICE_MIX
            mix = {c: w * rng.uniform(0.5, 1.5) for c, w in base_mix.items()}
            total = sum(mix.values())
            mix = {c: w / total for c, w in mix.items()}
            n_sources = rng.randint(1, 4)
            sources = [
                {"api_key_id": f"ak_{rng.getrandbits(40):010x}", "source_ip": _ip(rng),
                 "channel": rng.choice(("http", "smpp"))}
                for _ in range(n_sources)
            ]
            sender = Sender(
                idx=rank,
                sender_id=sender_id,
                brand=brand,
                lender=lender,
                daily_volume=raw[rank] * scale * rng.uniform(0.8, 1.25),
                mix=mix,
                campaign_hours=tuple(sorted(rng.sample((8, 9, 10, 11, 12, 17, 18, 19, 20), rng.randint(1, 3)))),
                marketing_hour=rng.choice((11, 13, 19, 20)),
                marketing_days=frozenset(rng.sample(range(7), rng.randint(2, 5))),
                weekend_factor=rng.uniform(0.35, 1.0),
                campaign_spread_min=rng.uniform(4, 18),
                nb_rate=rng.uniform(0.005, 0.02),
                failure_factor=rng.uniform(0.6, 1.8),
                start_ts=self.start_ts,
                growth_per_day=0.0,
                extra_campaign=((rng.randrange(self.days), rng.choice((7, 14, 15, 16, 21)),
                                 rng.choice(("repayment_reminder", "loan_marketing")))
                                if lender and rng.random() < 0.15 else None),
                # on an hour boundary, so no send of that hour predates the new key
                rotates_key_at=(self.start_ts + int(rng.uniform(0.2, 0.9) * self.days * 24) * HOUR_MS
                                if rng.random() < 0.2 else None),
                domain=f"{sender_id}.{self.region.tld}",
                hotline=f"1800-{rng.randrange(100, 999)}-{rng.randrange(1000, 9999)}",
                sources=sources,
                source_weights=[1.0 / (i + 1) ** 2 for i in range(n_sources)],
            )
            self.senders.append(sender)
        # Senders that first appear mid-run, and one whose volume grows steadily.
        if n >= 4 and self.days >= 1:
            late = rng.sample(range(n // 4, n), min(2, max(1, n // 20)))
            for i in late:
                offset = rng.uniform(0.3, 0.6) * self.days * DAY_MS
                self.senders[i].start_ts = self.start_ts + int(offset) // MINUTE_MS * MINUTE_MS
            growing = rng.choice([i for i in range(1, n) if i not in late and self.senders[i].lender] or [0])
            self.senders[growing].growth_per_day = rng.uniform(0.3, 0.8)
        for sender in self.senders:
            self._build_templates(sender)
            sender.staff_devices = [self.new_device("br") for _ in range(rng.randint(1, 4))] if sender.lender else []
            if sender.lender:
                book_size = max(3, int(sender.daily_volume * rng.uniform(1.2, 2.5)))
                for _ in range(book_size):
                    self.open_account(sender)

    def _build_templates(self, sender: Sender) -> None:
        rng = self.rng
        for category in sender.mix:
            texts = TEXTS[category] + REGION_TEXTS[self.region.code].get(category, ())
            count = 1 if category in ("other", "otp") else rng.randint(1, min(3, len(texts)))
            chosen = rng.sample(texts, count)
            sender.templates[category] = [
                self.new_template(sender, category, text, sender.start_ts, weight=1.0 / (i + 1))
                for i, text in enumerate(chosen)
            ]
        # A template introduced mid-run that takes over part of a category's traffic.
        if rng.random() < 0.25 and self.days >= 1:
            category = rng.choice(list(sender.mix))
            start = sender.start_ts + int(rng.uniform(0.2, 0.8) * self.days * DAY_MS) // MINUTE_MS * MINUTE_MS
            text = rng.choice(TEXTS[category])
            sender.templates[category].append(self.new_template(sender, category, text, start, weight=1.5))

    def new_template(self, sender: Sender, category: str, text: str, start_ts: int, weight: float = 1.0,
                     registered: bool | None = None) -> Template:
        self.template_seq += 1
        if registered is None:
            registered = self.rng.random() < 0.85
        return Template(
            template_id=f"T{self.template_seq:05d}",
            sender_id=sender.sender_id,
            category=category,
            text=text.replace("{sig}", sender.signature),
            registered=registered,
            start_ts=start_ts,
            weight=weight,
        )

    def new_device(self, kind: str = "dev") -> str:
        self.device_seq += 1
        return f"{kind}-{self.rng.getrandbits(32):08x}{self.device_seq:05d}"

    def open_account(self, sender: Sender, number: str | None = None, append: bool = True) -> Account:
        rng = self.rng
        if number is None:
            number = rng.choice(self.people) if self.people and rng.random() < 0.12 else self.numbers.fresh()
            if number in sender.by_number:
                number = self.numbers.fresh()
        self.people.append(number)
        roll = rng.random()
        status = "active" if roll < 0.78 else "overdue" if roll < 0.93 else "closed" if roll < 0.98 else "written_off"
        account = Account(sender.new_account_id(), number, status, self.new_device())
        if append:
            sender.accounts.append(account)
        sender.by_number[number] = account
        return account

    def borrowers_elsewhere(self, sender: Sender) -> list[Sender]:
        return [s for s in self.senders if s.lender and s is not sender and len(s.by_number) > 50]
