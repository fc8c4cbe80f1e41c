"""Standard Webhooks: `whsec_` secrets, the `{type, timestamp, data}` body and the three headers.

Signing uses the `standardwebhooks` reference library, the same one receivers verify with.
During a secret rotation the signature header carries one signature per live secret
(space-separated, as the spec allows), so a receiver still on the old secret keeps working.
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets
from collections.abc import Sequence
from typing import Any

import msgspec
from standardwebhooks.webhooks import Webhook

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
_encoder = msgspec.json.Encoder(decimal_format="string")


def new_secret() -> str:
    """A fresh signing secret, `whsec_` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def new_webhook_id() -> str:
    """A message id (`webhook-id`): set once per delivery, the same for every retry."""
    return "msg_" + secrets.token_hex(12)


def body(event_type: str, occurred_at: dt.datetime, data: Any) -> str:
    """The JSON body: `{type, timestamp, data}` (timestamp: when the event happened, UTC)."""
    return _encoder.encode({"type": event_type, "timestamp": occurred_at.astimezone(dt.UTC),
                            "data": data}).decode()


def live_secrets(secret: str, previous: str | None, previous_until: dt.datetime | None,
                 now: dt.datetime) -> list[str]:
    """The secrets to sign with now: the current one, and the previous one while it overlaps."""
    if previous and previous_until is not None and now < previous_until:
        return [secret, previous]
    return [secret]


def signature(secrets_: Sequence[str], webhook_id: str, at: dt.datetime, payload: str) -> str:
    """The `webhook-signature` value: `v1,<base64>` per secret, space-separated."""
    # the library reads the datetime's wall time as UTC, so hand it UTC
    at = at.astimezone(dt.UTC)
    return " ".join(Webhook(s).sign(webhook_id, at, payload) for s in secrets_)


def headers(secrets_: Sequence[str], webhook_id: str, at: dt.datetime, payload: str) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt (timestamp and signature are per attempt)."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature(secrets_, webhook_id, at, payload),
    }
