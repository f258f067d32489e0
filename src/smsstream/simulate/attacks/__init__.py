"""Attack scenarios, one function each, every one a labelled episode at a random time and intensity.

Intensities run from ``low`` (barely visible, still far outside what the
target's own baseline explains: a few dozen non-borrower sends in an hour at a
sender whose base rate is ~1 %) to ``high`` (blatant). An episode's label spans
the first to the last record carrying the attack, so time to detect is
measured from the first evidence; its entities are every entity a correct
detector of that kind might name.

Entity ids: sender -> ``sender_id``, template -> ``template_id``, number -> the
E.164 number in clear, device -> ``device_id``, carrier -> carrier name,
account -> ``<sender_id>|<account_id>`` (the ``sms.bindings`` key).
"""

from __future__ import annotations

import random
from typing import Callable

from smsstream.simulate.attacks.delivery import carrier_blocking, failure_rate_jump
from smsstream.simulate.attacks.non_borrower import book_mixup, purchased_list
from smsstream.simulate.attacks.plan import INTENSITIES, Episode, Planner
from smsstream.simulate.attacks.rebind import (
    account_flapping, account_flapping_slow, device_fan_out, mass_rebind, number_fan_in, stale_binding_send,
)
from smsstream.simulate.attacks.shared_list import shared_list
from smsstream.simulate.attacks.template_hijack import (
    callback_injected, foreign_sender, new_source_burst, signature_changed, url_injected,
)
from smsstream.simulate.traffic import Simulation
from smsstream.vocabulary import DELIVERY_FAILURE_SPIKE, NON_BORROWER_SPIKE, REBIND_ANOMALY, TEMPLATE_HIJACK

__all__ = ["KINDS", "SCENARIOS", "SCENARIO_NAMES", "Episode", "Planner", "plan_attacks", "scenarios_for"]


SCENARIOS: dict[str, tuple[Callable[[Planner, str], Episode | None], ...]] = {
    NON_BORROWER_SPIKE: (purchased_list, book_mixup, shared_list),
    TEMPLATE_HIJACK: (url_injected, callback_injected, signature_changed, foreign_sender, new_source_burst),
    REBIND_ANOMALY: (mass_rebind, number_fan_in, device_fan_out, account_flapping, account_flapping_slow,
                       stale_binding_send),
    DELIVERY_FAILURE_SPIKE: (carrier_blocking, failure_rate_jump),
}
KINDS = tuple(SCENARIOS)
#: scenario name (the manifest's ``reason``) -> (kind, scenario)
SCENARIO_NAMES = {f.__name__: (kind, f) for kind, fs in SCENARIOS.items() for f in fs}
#: Scenarios added since the first set: planned after all the others, oldest first, so that adding one
#: leaves every earlier episode of a seed where it was.
ADDED_LATER = (shared_list,)


def scenarios_for(names: tuple[str, ...]) -> list[Callable[[Planner, str], Episode | None]]:
    """Kinds stand for all their scenarios; scenario names for themselves. Repeats are dropped, and
    scenarios ``ADDED_LATER`` go last."""
    chosen: list = []
    for name in names:
        for scenario in SCENARIOS[name] if name in SCENARIOS else (SCENARIO_NAMES[name][1],):
            if scenario not in chosen:
                chosen.append(scenario)
    return [s for s in chosen if s not in ADDED_LATER] + [s for s in ADDED_LATER if s in chosen]


def plan_attacks(sim: Simulation, seed: int, names: tuple[str, ...], days: float) -> Planner:
    """Every chosen scenario about once per 1.5 simulated days, intensities rotating.

    A scenario ``ADDED_LATER`` is planned last, on a random stream of its own:
    the others' episodes, drawn from one stream at planning and at run time,
    stay where they were before it was added.
    """
    plan = Planner(sim, random.Random(f"{seed}/attacks"))
    repeats = max(1, round(days / 1.5))
    for scenario in scenarios_for(names):
        planner = plan.fork(random.Random(f"{seed}/attacks/{scenario.__name__}")) if scenario in ADDED_LATER else plan
        levels = list(INTENSITIES)
        planner.rng.shuffle(levels)
        for i in range(repeats):
            for _ in range(5):  # a few tries to find a free, suitable target
                if scenario(planner, levels[i % 3]) is not None:
                    break
    return plan
