"""Webhook rules: which subscriptions an event goes to, when to try again, what Retry-After means.

Pure: no I/O, no clock of their own (callers pass `now` and a random source), so the
filter matrix and the retry schedule are tested without a network or a database.
"""

from __future__ import annotations

import datetime as dt
import email.utils
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Literal

import msgspec

if TYPE_CHECKING:
    from shared.settings import Settings

EVENT_TYPES = ("order.created", "order.updated", "order.released", "order.held",
               "order.cancelled", "order.shipped", "order.rejected")
EventType = Literal["order.created", "order.updated", "order.released", "order.held",
                    "order.cancelled", "order.shipped", "order.rejected"]

# Delays between consecutive attempts, in seconds: the first attempt at once, the tenth
# about three days after the first (the Svix/Standard Webhooks habit, a little longer).
DEFAULT_SCHEDULE = (0, 5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 14 * 3600,
                    20 * 3600, 24 * 3600)


class Conditions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=False):
    """Typed conditions on the order an event carries; all must hold."""

    # only orders with a cash-on-delivery amount above zero
    cod_only: bool = False
    # only orders that must ship complete (flag_partial 0)
    no_partial: bool = False
    # only orders of this type (0 normal, 1 POS); None: any type
    order_type: Literal[0, 1] | None = None

    @property
    def any(self) -> bool:
        """True when at least one condition is set."""
        return self.cod_only or self.no_partial or self.order_type is not None


class Filter(msgspec.Struct, frozen=True, kw_only=True):
    """What a subscription wants: None means "all" for sources and event types."""

    source_ids: tuple[str, ...] | None = None
    event_types: tuple[str, ...] | None = None
    cod_only: bool = False
    no_partial: bool = False
    order_type: int | None = None


def matches(flt: Filter, event_type: str, source_id: str, data: Mapping[str, Any]) -> bool:
    """Whether an event (its type, source and data) goes to a subscription with this filter.

    Typed conditions look at the order in `data`; an event without one (order.rejected
    carries the receipt) cannot satisfy a condition, so it only reaches subscriptions
    that set none. Only the keys in MATCH_FIELDS are read, and only when `reads_data`.
    """
    if flt.source_ids is not None and source_id not in flt.source_ids:
        return False
    if flt.event_types is not None and event_type not in flt.event_types:
        return False
    if not (flt.cod_only or flt.no_partial or flt.order_type is not None):
        return True
    if event_type == "order.rejected" or "flag_partial" not in data:
        return False
    if flt.cod_only and _decimal(data.get("cod_amount")) <= 0:
        return False
    if flt.no_partial and data.get("flag_partial") != 0:
        return False
    return flt.order_type is None or data.get("type") == flt.order_type


def has_conditions(flt: Filter) -> bool:
    """Whether the filter sets a typed condition (one that looks at the event's data)."""
    return flt.cod_only or flt.no_partial or flt.order_type is not None


def reads_data(flt: Filter, event_type: str, source_id: str) -> bool:
    """Whether `matches` needs the event's data to decide; when False, any data gives the same answer."""
    return (has_conditions(flt) and event_type != "order.rejected"
            and (flt.source_ids is None or source_id in flt.source_ids)
            and (flt.event_types is None or event_type in flt.event_types))


# the keys of an event's data that `matches` reads
MATCH_FIELDS = ("flag_partial", "cod_amount", "type")


class _MatchFields(msgspec.Struct):
    # UNSET: the key is absent (a JSON null decodes to None)
    flag_partial: Any = msgspec.UNSET
    cod_amount: Any = msgspec.UNSET
    type: Any = msgspec.UNSET


_MATCH_FIELDS_DECODER = msgspec.json.Decoder(_MatchFields)


def match_data(text: str | bytes) -> dict[str, Any]:
    """An event's data (its JSON text) cut down to MATCH_FIELDS, for `matches`.

    The same answers as the whole document decoded, at a fraction of the cost: the other
    keys are skipped without building objects. Data that is not an object gives {}, as the
    dispatcher always passed for it.
    """
    try:
        fields = _MATCH_FIELDS_DECODER.decode(text)
    except msgspec.ValidationError:  # not an object; malformed JSON still raises
        return {}
    return {k: v for k in MATCH_FIELDS if (v := getattr(fields, k)) is not msgspec.UNSET}


def _decimal(value: Any) -> Decimal:
    try:
        return Decimal(str(value)) if value is not None else Decimal(0)
    except InvalidOperation:
        return Decimal(0)


def parse_schedule(text: str) -> tuple[float, ...]:
    """'0,5,300,…' (seconds between attempts) -> a tuple; the first entry is the first attempt."""
    try:
        delays = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise ValueError(f"retry schedule {text!r} must be comma-separated seconds") from exc
    if not delays or any(d < 0 for d in delays):
        raise ValueError(f"retry schedule {text!r} needs at least one delay, none negative")
    return delays


def jittered(delay_s: float, jitter: float, rnd: Callable[[], float]) -> float:
    """`delay_s` moved by up to ±jitter (0.2 = ±20 %) with `rnd()` in [0, 1)."""
    return max(0.0, delay_s * (1.0 + jitter * (2.0 * rnd() - 1.0)))


def next_attempt_delay(
    step: int, schedule: Sequence[float], jitter: float, rnd: Callable[[], float],
    retry_after_s: float | None = None,
) -> float | None:
    """Seconds until attempt number `step` (0-based) after a failed one, or None when none is left.

    A Retry-After (already bounded) can only push the attempt later, never earlier: the
    schedule is the receiver's minimum protection, Retry-After is its own request.
    """
    if step >= len(schedule):
        return None
    delay = jittered(schedule[step], jitter, rnd)
    if retry_after_s is not None:
        delay = max(delay, retry_after_s)
    return delay


def retry_after_seconds(value: str | None, now: dt.datetime, max_s: float) -> float | None:
    """A Retry-After header (seconds or an HTTP date) as seconds in [0, max_s]; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    seconds: float
    if value.isascii() and value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        seconds = (when - now).total_seconds()
    return min(max(seconds, 0.0), max_s)


def should_auto_disable(failing_since: dt.datetime | None, now: dt.datetime, after_s: float) -> bool:
    """A subscription that has failed without a single success for `after_s` is switched off."""
    return failing_since is not None and (now - failing_since).total_seconds() >= after_s


def is_success(status: int) -> bool:
    """Only 2xx counts; a 3xx is not followed and counts as a failure."""
    return 200 <= status < 300


def disables(status: int) -> bool:
    """410 Gone: the receiver says the endpoint is gone for good."""
    return status == 410


def settings_problem(settings: Settings) -> str | None:
    """What is wrong with the webhook settings (naming the variable), or None."""
    from shared.ssrf import parse_nets

    try:
        parse_schedule(settings.webhook_retry_schedule)
    except ValueError as exc:
        return f"ORDERFLOW_WEBHOOK_RETRY_SCHEDULE: {exc}"
    try:
        parse_nets(settings.webhook_allow_nets)
    except ValueError as exc:
        return f"ORDERFLOW_WEBHOOK_ALLOW_NETS: {exc}"
    if not 0 <= settings.webhook_jitter < 1:
        return "ORDERFLOW_WEBHOOK_JITTER must be in [0, 1) (0.2 is ±20 %)"
    if settings.webhook_timeout_s <= 0:
        return "ORDERFLOW_WEBHOOK_TIMEOUT_S must be positive"
    if settings.webhook_lease_s <= settings.webhook_timeout_s:
        return "ORDERFLOW_WEBHOOK_LEASE_S must be longer than ORDERFLOW_WEBHOOK_TIMEOUT_S"
    if not 1 <= settings.webhook_max_concurrency <= 100:
        return "ORDERFLOW_WEBHOOK_MAX_CONCURRENCY must be in [1, 100]"
    if settings.webhook_senders < 0 or settings.webhook_dispatch_batch < 1:
        return "ORDERFLOW_WEBHOOK_SENDERS must be >= 0 and ORDERFLOW_WEBHOOK_DISPATCH_BATCH >= 1"
    if min(settings.webhook_poll_s, settings.webhook_disable_after_s,
           settings.webhook_rotation_overlap_s, settings.webhook_retry_after_max_s) < 0:
        return "webhook durations (ORDERFLOW_WEBHOOK_*_S) must not be negative"
    return None
