"""Every part's state survives serialisation (as in a Faust table) and carries on as if never stored.

Parametrised over ``DETECTOR_PARTS``, so a new part is covered the moment it
is registered.
"""

import pickle
import random

import pytest

from smsstream.detection.engine import DETECTOR_PARTS
from smsstream.records import BINDINGS, TEMPLATES, Binding, Template
from traffic import HOUR, MINUTE, T0, Sends, book, differences, engine, numbers


def traffic() -> list:
    rng = random.Random(11)
    a, b = numbers(rng, 800), numbers(rng, 800, prefix="+86137")
    events = book("lender-a", a) + book("lender-b", b)
    text = "Dear customer, your repayment of {amount} is due on {date}. Pay at https://pay.%s.example/app"
    events += [
        (TEMPLATES, Template("tpl-a", "lender-a", "repayment_reminder", text % "lender-a", T0 - HOUR)),
        (TEMPLATES, Template("tpl-b", "lender-b", "repayment_reminder", text % "lender-b", T0 - HOUR)),
    ]
    body = "Dear customer, your repayment of 500 is due on 3 May. Pay at https://pay.%s.example/app"
    sa, sb = Sends(rng, "lender-a", "tpl-a", a), Sends(rng, "lender-b", "tpl-b", b)
    ba, bb = body % "lender-a", body % "lender-b"
    events += sa.run(T0, 4 * 60, 10, body=ba) + sb.run(T0, 4 * 60, 10, body=bb)
    events += sa.run(T0 + 4 * HOUR, 40, 10, stranger_share=0.5, body=ba)
    events += sb.run(T0 + 4 * HOUR, 40, 10, statuses={"DELIVRD": 0.5, "BLOCKED": 0.5}, body=bb)
    events += sa.run(T0 + 4 * HOUR + 40 * MINUTE, 60, 10, body=ba)
    events += sb.run(T0 + 4 * HOUR + 40 * MINUTE, 60, 10, body=bb.replace("lender-b.example", "pay-now.example"))
    for i in range(120):
        old, new = a[i], f"+86136{rng.randrange(10**8):08d}"
        events.append((BINDINGS, Binding(f"ev-{i}", T0 + rng.randrange(6 * HOUR), "lender-a", f"acct-{old[-6:]}",
                                         old, new, "app", f"dev-{i % 7}", "10.0.0.9")))
    events.sort(key=lambda e: e[1].ts)
    return events


def roundtrip(obj):
    return pickle.loads(pickle.dumps(obj))


def run_through(events, restore_at: int | None = None, part_name: str | None = None):
    eng = engine()
    alerts = []
    for i, (topic, record) in enumerate(events):
        if i == restore_at:
            for part in eng.parts:
                if part.name == part_name:  # everything the worker's snapshot stores: the part bar its context
                    assert part.entities, f"{part.name} holds no state when it is restored; restore later"
                    vars(part).update(roundtrip({k: v for k, v in vars(part).items() if k != "ctx"}))
        alerts += eng.ingest(topic, record)
    alerts += eng.flush()
    return eng, [{k: v for k, v in a.items() if k != "detected_at"} for a in alerts]


@pytest.fixture(scope="module")
def events():
    return traffic()


@pytest.fixture(scope="module")
def baseline(events):
    return run_through(events)


@pytest.mark.parametrize("part_cls", DETECTOR_PARTS, ids=lambda c: c.name)
def test_state_pickles_to_an_equal_state(part_cls, events):
    eng = engine()
    for topic, record in events[: len(events) // 2]:
        eng.ingest(topic, record)
    part = next(p for p in eng.parts if isinstance(p, part_cls))
    assert part.entities, f"{part.name} kept no state from the test traffic; widen traffic()"
    for key, state in part.entities.items():
        assert differences(roundtrip(state), state) == [], key


def test_the_state_comparison_notices_one_changed_field_deep_inside():
    eng = engine()
    for topic, record in traffic()[:3000]:
        eng.ingest(topic, record)
    part = next(p for p in eng.parts if p.name == "non_borrower_sender")
    state = next(iter(part.entities.values()))
    copy = roundtrip(state)
    assert differences(copy, state) == []
    copy.baselines[0].trials += 1
    assert differences(copy, state) == ["state.baselines[0].trials: " + f"{copy.baselines[0].trials!r} != {state.baselines[0].trials!r}"]


@pytest.mark.parametrize("part_cls", DETECTOR_PARTS, ids=lambda c: c.name)
def test_restored_state_gives_the_same_alerts(part_cls, events, baseline):
    _, expected = baseline
    assert expected, "the test traffic should raise alerts"
    mid_attack = next(i for i, (_, r) in enumerate(events) if r.ts >= T0 + 4 * HOUR + 20 * MINUTE)
    _, got = run_through(events, restore_at=mid_attack, part_name=part_cls.name)
    assert got == expected
