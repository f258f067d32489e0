"""``template_hijack`` scenarios: tampered template text, another sender's template, a stolen API key."""

from __future__ import annotations

import random

from smsstream.simulate.attacks.effects import BodyTamper
from smsstream.simulate.attacks.plan import LEVEL, Episode, Planner, loan_recipient, spread
from smsstream.simulate.traffic import customer_ip
from smsstream.simulate.world import Sender
from smsstream.vocabulary import HOUR_MS, MINUTE_MS, TEMPLATE_HIJACK


def _malicious_url(rng: random.Random, sender: Sender) -> str:
    base = sender.sender_id
    host = rng.choice((f"{base}-pay.top", f"{base}.verify-kyc.xyz", "bit.ly", f"{base}-refund.site", "tinyurl.com"))
    return f"https://{host}/{rng.getrandbits(30):08x}"


def _tamper(plan: Planner, intensity: str, reason: str) -> Episode | None:
    rng, sim = plan.rng, plan.sim
    duration = rng.randrange(45, 241) * MINUTE_MS
    start = plan.window(duration)
    sender = plan.pick(plan.senders(start, start + duration, lender=None, min_daily=100))
    if sender is None:
        return None
    template = plan.template(sender, ("repayment_reminder", "overdue_notice", "loan_marketing", "notification", "otp"),
                             registered=rng.random() < 0.8)
    if template is None:
        return None
    plan.claim(sender, start, start + duration)
    if reason == "url_injected":
        url = _malicious_url(rng, sender)
        marker = url  # one link per episode: shared hosts (bit.ly) would blur episodes together

        def transform(r, body, url=url, domain=sender.domain):
            if domain in body:
                head, _, tail = body.partition(f"https://{domain}/")
                rest = tail.split(" ", 1)
                return head + url + (" " + rest[1] if len(rest) > 1 else "")
            return f"{body} Verify now: {url}"
    elif reason == "callback_injected":
        marker = plan.fresh_number()
        callback = marker

        def transform(r, body, callback=callback, hotline=sender.hotline):
            if hotline in body:
                return body.replace(hotline, callback)
            return f"{body} Call {callback} immediately to avoid legal action."
    else:
        marker = rng.choice((f"[{sender.brand} Support]", "[RBI-Recovery]", "[Legal Cell]", f"[{sender.brand[:-1]}]"))

        def transform(r, body, old=sender.signature, new=marker):
            return body.replace(old, new, 1)

    fraction = (0.05, 0.3, 1.0)[LEVEL[intensity]]
    extra = (15, 60, 300)[LEVEL[intensity]]
    episode = plan.new(TEMPLATE_HIJACK, reason, intensity, sender_id=sender.sender_id,
                       template_id=template.template_id, marker=marker, fraction=fraction)
    episode.add("template", template.template_id)
    episode.add("sender", sender.sender_id)
    sim.send_effects.setdefault(sender.sender_id, []).append(
        BodyTamper(start, start + duration, template.template_id, fraction, transform, episode))

    def inject(ts):
        dates = plan.due_dates(ts)
        for when in spread(rng, start, start + duration, extra):
            number, account_id = loan_recipient(plan, sender, template.category)
            body = transform(rng, sim.render(sender, template, dates, account_id))
            sim.send(sender, when, template.category, template, number, account_id, dates, body=body, episode=episode)

    sim.at(start, inject)
    return episode


def url_injected(plan, intensity):
    """Reminders of a template now carry a link to a look-alike domain."""
    return _tamper(plan, intensity, "url_injected")


def callback_injected(plan, intensity):
    """A template's hotline is replaced by (or joined by) a mobile number to call."""
    return _tamper(plan, intensity, "callback_injected")


def signature_changed(plan, intensity):
    """The sender's signature in a template is changed to another name."""
    return _tamper(plan, intensity, "signature_changed")


def foreign_sender(plan: Planner, intensity: str) -> Episode | None:
    """A sender uses a registered template that belongs to another sender."""
    rng, sim = plan.rng, plan.sim
    duration = rng.randrange(20, 121) * MINUTE_MS
    start = plan.window(duration)
    owners = [s for s in plan.world.senders if s.start_ts <= start - 6 * HOUR_MS]
    intruders = plan.senders(start, start + duration, lender=None)
    if not owners or len(intruders) < 2:
        return None
    intruder = plan.pick(intruders, prefer_small=True)
    owner = rng.choice([s for s in owners if s is not intruder])
    categories = ("repayment_reminder", "loan_marketing", "notification", "otp") if intruder.lender else ("loan_marketing", "notification", "otp")
    template = plan.template(owner, categories, registered=True)
    if template is None:
        return None
    plan.claim(intruder, start, start + duration)
    count = (15, 80, 600)[LEVEL[intensity]]
    episode = plan.new(TEMPLATE_HIJACK, "foreign_sender", intensity, sender_id=intruder.sender_id,
                       owner_sender_id=owner.sender_id, template_id=template.template_id, sends=count)
    episode.add("template", template.template_id)
    episode.add("sender", intruder.sender_id)

    def inject(ts):
        dates = plan.due_dates(ts)
        for when in spread(rng, start, start + duration, count):
            number, account_id = loan_recipient(plan, intruder, template.category)
            body = sim.render(owner, template, dates, account_id)
            sim.send(intruder, when, template.category, template, number, account_id, dates, body=body, episode=episode)

    sim.at(start, inject)
    return episode


def new_source_burst(plan: Planner, intensity: str) -> Episode | None:
    """A stolen API key: one template bursts from a key and IP the sender never used, mostly with a bad link."""
    rng, sim = plan.rng, plan.sim
    duration = (rng.randrange(20, 41), rng.randrange(20, 61), rng.randrange(30, 91))[LEVEL[intensity]] * MINUTE_MS
    start = plan.window(duration)
    sender = plan.pick(plan.senders(start, start + duration, lender=None), prefer_small=True)
    if sender is None:
        return None
    template = plan.template(sender, ("repayment_reminder", "loan_marketing", "notification", "overdue_notice"))
    if template is None:
        return None
    plan.claim(sender, start, start + duration)
    count = (30, 300, 3000)[LEVEL[intensity]]
    source = {"api_key_id": f"ak_{rng.getrandbits(40):010x}", "source_ip": customer_ip(rng), "channel": "http"}
    url = _malicious_url(rng, sender)
    episode = plan.new(TEMPLATE_HIJACK, "new_source_burst", intensity, sender_id=sender.sender_id,
                       template_id=template.template_id, api_key_id=source["api_key_id"], sends=count)
    episode.add("template", template.template_id)
    episode.add("sender", sender.sender_id)

    def inject(ts):
        dates = plan.due_dates(ts)
        for when in spread(rng, start, start + duration, count):
            number, account_id = loan_recipient(plan, sender, template.category)
            body = sim.render(sender, template, dates, account_id)
            if rng.random() < 0.7:
                body = body.replace(f"https://{sender.domain}/", url + "?r=", 1) if sender.domain in body else f"{body} {url}"
            sim.send(sender, when, template.category, template, number, account_id, dates, body=body,
                     source=source, episode=episode)

    sim.at(start, inject)
    return episode
