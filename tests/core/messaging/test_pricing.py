"""SMS prices: the markup on the whole message, rounded once, never a cent or more above the exact price."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from core.messaging.pricing import sms_price

costs = st.integers(min_value=1, max_value=5_000)
markups = st.integers(min_value=0, max_value=1000)


def exact(cost_cents: int, markup_percent: int) -> Fraction:
    return Fraction(cost_cents * (100 + markup_percent), 100)


@given(costs, markups)
def test_one_message_is_charged_its_exact_price_rounded_up_once(cost: int, markup: int) -> None:
    charged = sms_price(cost, markup)
    assert 0 <= charged - exact(cost, markup) < 1


@given(st.lists(costs, min_size=1, max_size=60), markups)
def test_a_days_messages_add_up_to_the_exact_total_rounded_up_once(day: list[int], markup: int) -> None:
    cost_before = charged_before = 0
    for cost in day:
        charged = sms_price(cost, markup, cost_before=cost_before, charged_before=charged_before)
        # Each message within a cent of its own exact price, either way...
        assert -1 < charged - exact(cost, markup) < 1
        cost_before, charged_before = cost_before + cost, charged_before + charged
        # ...and the day as a whole never a cent or more in the user's disfavour, nor below the price.
        assert 0 <= charged_before - exact(cost_before, markup) < 1


@given(st.lists(st.tuples(costs, markups), min_size=1, max_size=40))
def test_a_tier_change_during_the_day_keeps_each_message_within_a_cent(day: list[tuple[int, int]]) -> None:
    cost_before = charged_before = 0
    for cost, markup in day:
        charged = sms_price(cost, markup, cost_before=cost_before, charged_before=charged_before)
        assert -1 < charged - exact(cost, markup) < 1
        cost_before, charged_before = cost_before + cost, charged_before + charged


def test_a_one_cent_sms_at_30_percent_costs_13_cents_per_ten() -> None:
    charges = []
    for _ in range(10):
        charges.append(sms_price(1, 30, cost_before=len(charges), charged_before=sum(charges)))
    assert charges == [2, 1, 1, 2, 1, 1, 2, 1, 1, 1] and sum(charges) == 13
    assert sms_price(3, 30) == 4 and sms_price(0, 30) == 0 and sms_price(10, 0) == 10
