"""Webhook rules without I/O: the filter matrix, the retry schedule with jitter, Retry-After, signing."""

from __future__ import annotations

import datetime as dt
import itertools
import random

import msgspec

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from shared import webhook_signing as signing
from shared.rules.webhooks import (
    DEFAULT_SCHEDULE,
    EVENT_TYPES,
    Filter,
    match_data,
    matches,
    next_attempt_delay,
    parse_schedule,
    reads_data,
    retry_after_seconds,
    settings_problem,
    should_auto_disable,
)
from shared.settings import Settings, SettingsError

T0 = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
ORDER = {"reference": "A1", "source_id": "mage2", "type": 0, "flag_partial": 0, "cod_amount": "0",
         "version": 1}


def order(**changes: object) -> dict[str, object]:
    return {**ORDER, **changes}


@pytest.mark.parametrize(("flt", "event", "source", "data", "expected"), [
    (Filter(), "order.created", "mage2", order(), True),
    (Filter(source_ids=("mage2",)), "order.created", "mage2", order(), True),
    (Filter(source_ids=("amazon",)), "order.created", "mage2", order(), False),
    (Filter(source_ids=("amazon", "mage2")), "order.updated", "mage2", order(), True),
    (Filter(event_types=("order.released",)), "order.created", "mage2", order(), False),
    (Filter(event_types=("order.released", "order.created")), "order.created", "mage2", order(), True),
    (Filter(cod_only=True), "order.created", "mage2", order(cod_amount="0"), False),
    (Filter(cod_only=True), "order.created", "mage2", order(cod_amount="12.50"), True),
    (Filter(cod_only=True), "order.created", "mage2", order(cod_amount="0.00"), False),
    (Filter(no_partial=True), "order.created", "mage2", order(flag_partial=0), True),
    (Filter(no_partial=True), "order.created", "mage2", order(flag_partial=1), False),
    (Filter(no_partial=True), "order.created", "mage2", order(flag_partial=2), False),
    (Filter(order_type=1), "order.created", "mage2", order(type=0), False),
    (Filter(order_type=1), "order.created", "mage2", order(type=1), True),
    (Filter(order_type=0), "order.created", "mage2", order(type=0), True),
    (Filter(cod_only=True, no_partial=True, order_type=0, source_ids=("mage2",),
            event_types=("order.created",)), "order.created", "mage2", order(cod_amount="5"), True),
    (Filter(cod_only=True, order_type=1), "order.created", "mage2", order(cod_amount="5"), False),
    # a rejected payload carries a receipt, not an order: conditions cannot hold for it
    (Filter(), "order.rejected", "mage2", {"receipt_id": "r", "reason": "bad"}, True),
    (Filter(no_partial=True), "order.rejected", "mage2", {"receipt_id": "r", "reason": "bad"}, False),
    (Filter(source_ids=("amazon",)), "order.rejected", "mage2", {"receipt_id": "r"}, False),
])
def test_filter_matrix(flt: Filter, event: str, source: str, data: dict[str, object], expected: bool) -> None:
    assert matches(flt, event, source, data) is expected


def test_every_event_type_passes_an_open_filter() -> None:
    assert all(matches(Filter(), t, "x", order()) for t in EVENT_TYPES)


# JSON texts as order_events.data may hold them, odd ones included
DOCUMENTS = [
    '{"reference":"A","type":0,"flag_partial":0,"cod_amount":"12.50","items":[{"sku":"x","qty":1}]}',
    '{"type":1,"flag_partial":1,"cod_amount":"0.00"}',
    '{"type":1,"flag_partial":0,"cod_amount":5}',
    '{"type":1,"cod_amount":"9"}',
    '{"type":1,"flag_partial":null,"cod_amount":"9"}',
    '{"flag_partial":0}',
    '{"flag_partial":1,"flag_partial":0,"type":1,"type":0,"cod_amount":"0","cod_amount":"1"}',
    '{"type":1.0,"flag_partial":0.0,"cod_amount":1e-3}',
    '{"type":"1","flag_partial":false,"cod_amount":{"x":1}}',
    '{"type":null,"flag_partial":"0","cod_amount":true}',
    '{"type":1,"flag_partial":0,"cod_amount":"-1","nested":{"type":0,"flag_partial":1}}',
    '{"type":1,"flag_partial":0,"cod_amount":"\\u0035"}',
    '{"receipt_id":"r","reason":"bad"}',
    '{}', '[1, 2]', 'null', '"text"', '5',
]
FILTERS = [Filter(), Filter(source_ids=("amazon",)), Filter(event_types=("order.shipped",)),
           Filter(cod_only=True), Filter(no_partial=True), Filter(order_type=0), Filter(order_type=1),
           Filter(cod_only=True, no_partial=True, order_type=1),
           Filter(source_ids=("amazon",), event_types=("order.shipped",), cod_only=True)]


@pytest.mark.parametrize("text", DOCUMENTS)
def test_match_data_decides_as_the_whole_document(text: str) -> None:
    whole = msgspec.json.decode(text)
    data = whole if isinstance(whole, dict) else {}
    assert match_data(text) == {k: data[k] for k in ("flag_partial", "cod_amount", "type") if k in data}
    for flt, event, source in itertools.product(FILTERS, EVENT_TYPES, ("mage2", "amazon")):
        assert matches(flt, event, source, match_data(text)) is matches(flt, event, source, data)


def test_matches_looks_at_data_only_when_reads_data_says_so() -> None:
    docs = [msgspec.json.decode(t) for t in DOCUMENTS]
    for flt, event, source in itertools.product(FILTERS, EVENT_TYPES, ("mage2", "amazon")):
        answers = {matches(flt, event, source, d if isinstance(d, dict) else {}) for d in docs}
        if reads_data(flt, event, source):
            assert answers == {True, False}
        else:
            assert answers == {matches(flt, event, source, {})}


def test_match_data_still_refuses_malformed_json() -> None:
    with pytest.raises(msgspec.DecodeError):
        match_data('{"type":1,')


def test_schedule_parses_and_refuses_nonsense() -> None:
    assert parse_schedule(Settings().webhook_retry_schedule) == tuple(float(d) for d in DEFAULT_SCHEDULE)
    assert parse_schedule("0, 1,2.5") == (0.0, 1.0, 2.5)
    for bad in ("", "a,b", "0,-5"):
        with pytest.raises(ValueError):
            parse_schedule(bad)


def test_next_attempt_follows_the_schedule_within_jitter() -> None:
    rng = random.Random(7)
    for step, base in enumerate(DEFAULT_SCHEDULE):
        for _ in range(200):
            delay = next_attempt_delay(step, DEFAULT_SCHEDULE, 0.2, rng.random)
            assert delay is not None
            assert base * 0.8 <= delay <= base * 1.2
    assert next_attempt_delay(len(DEFAULT_SCHEDULE), DEFAULT_SCHEDULE, 0.2, rng.random) is None
    # the extremes of the random source are the edges of the band
    assert next_attempt_delay(1, DEFAULT_SCHEDULE, 0.2, lambda: 0.0) == pytest.approx(4.0)
    assert next_attempt_delay(1, DEFAULT_SCHEDULE, 0.2, lambda: 0.5) == pytest.approx(5.0)
    assert next_attempt_delay(2, DEFAULT_SCHEDULE, 0.0, rng.random) == 300


def test_retry_after_pushes_later_never_earlier_and_is_bounded() -> None:
    def half() -> float:
        return 0.5

    assert next_attempt_delay(1, DEFAULT_SCHEDULE, 0.2, half, retry_after_s=60) == 60
    assert next_attempt_delay(2, DEFAULT_SCHEDULE, 0.2, half, retry_after_s=1) == 300
    assert retry_after_seconds("120", T0, 86400) == 120
    assert retry_after_seconds("999999999", T0, 86400) == 86400
    http_date = "Mon, 01 Jun 2026 12:10:00 GMT"
    assert retry_after_seconds(http_date, T0, 86400) == 600
    assert retry_after_seconds("Mon, 01 Jun 2026 11:00:00 GMT", T0, 86400) == 0
    assert retry_after_seconds(None, T0, 86400) is None
    assert retry_after_seconds("soon", T0, 86400) is None
    assert retry_after_seconds("-5", T0, 86400) is None


def test_auto_disable_after_five_days_of_failing() -> None:
    five_days = 5 * 86400
    assert not should_auto_disable(None, T0, five_days)
    assert not should_auto_disable(T0, T0 + dt.timedelta(days=4, hours=23), five_days)
    assert should_auto_disable(T0, T0 + dt.timedelta(days=5), five_days)


def test_webhook_settings_are_checked_at_start() -> None:
    assert settings_problem(Settings()) is None
    for env, word in [({"ORDERFLOW_WEBHOOK_RETRY_SCHEDULE": "soon"}, "RETRY_SCHEDULE"),
                      ({"ORDERFLOW_WEBHOOK_ALLOW_NETS": "10.0.0.0/8,nope"}, "ALLOW_NETS"),
                      ({"ORDERFLOW_WEBHOOK_JITTER": "1.5"}, "JITTER"),
                      ({"ORDERFLOW_WEBHOOK_LEASE_S": "10"}, "LEASE_S")]:
        with pytest.raises(SettingsError, match=word):
            Settings.from_env(env)
    ok = Settings.from_env({"ORDERFLOW_WEBHOOK_ALLOW_NETS": "127.0.0.0/8, ::1",
                            "ORDERFLOW_WEBHOOK_RETRY_SCHEDULE": "0,1,2"})
    assert ok.webhook_allow_nets == "127.0.0.0/8, ::1"


def test_signature_verifies_with_the_receiver_library_and_both_secrets_during_rotation() -> None:
    old, new = signing.new_secret(), signing.new_secret()
    assert old.startswith("whsec_") and old != new
    now = dt.datetime.now(dt.UTC)
    payload = signing.body("order.created", T0, {"reference": "A1", "version": 1})
    assert payload == ('{"type":"order.created","timestamp":"2026-06-01T12:00:00Z",'
                       '"data":{"reference":"A1","version":1}}')
    headers = signing.headers([new, old], "msg_1", now, payload)
    assert headers["webhook-timestamp"] == str(int(now.timestamp()))
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        assert Webhook(secret).verify(payload, headers) == {
            "type": "order.created", "timestamp": "2026-06-01T12:00:00Z",
            "data": {"reference": "A1", "version": 1}}
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.new_secret()).verify(payload, headers)
    local = now.astimezone(dt.timezone(dt.timedelta(hours=2)))  # any aware time signs as UTC
    assert signing.headers([new], "msg_1", local, payload) == signing.headers([new], "msg_1", now, payload)
    with pytest.raises(WebhookVerificationError):
        Webhook(new).verify(payload.replace("A1", "A2"), headers)


def test_live_secrets_overlap_only_until_the_end_of_the_rotation() -> None:
    until = T0 + dt.timedelta(hours=24)
    assert signing.live_secrets("new", "old", until, T0) == ["new", "old"]
    assert signing.live_secrets("new", "old", until, until) == ["new"]
    assert signing.live_secrets("new", None, None, T0) == ["new"]
