"""One frozen settings object, read from ORDERFLOW_* environment variables with local defaults."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import msgspec

_DEV_PEPPER = "orderflow-dev-pepper-change-me"


class SettingsError(ValueError):
    """A setting has a value we cannot use; the message names the variable."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a process needs to know, validated once at start."""

    database_url: str = "postgresql://postgres@127.0.0.1:5432/orderflow"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Two deployments on one Redis differ by db number or by this prefix; it is also the
    # Redis Cluster hash tag, so every key of one deployment lands in one slot.
    redis_prefix: str = "orderflow"
    # Keyed hash for access keys: a leaked table of hashes is useless without it.
    key_pepper: str = _DEV_PEPPER
    # The receiver re-reads a key at most this often, so a revocation bites within it.
    key_cache_ttl_s: float = 2.0
    max_body_bytes: int = 1024 * 1024
    # POST /api/v1/order/enqueue/batch carries up to 500 orders
    max_batch_body_bytes: int = 16 * 1024 * 1024
    # Requests per second per access key and per client address; 0 switches the limit off.
    rate_per_key: int = 0
    rate_per_address: int = 0
    # Ingest queue: how many payloads one claim takes, and how long before an unacked claim returns.
    claim_batch: int = 200
    lease_s: float = 30.0
    # How long the worker waits on an empty ready set before looking again.
    idle_poll_s: float = 0.05
    # With fewer than claim_fill payloads ready, a worker leaves them until the next in line has
    # waited claim_linger_s: at moderate load batches fill up, and a batch of 100 costs
    # PostgreSQL and the worker far less per order than ten of 10. 0 switches it off.
    claim_linger_s: float = 0.05
    claim_fill: int = 100
    # Release scheduler: how often it looks for due orders, and how many it releases per transaction.
    release_poll_s: float = 0.25
    release_batch: int = 500
    # Off (0) by default: an order that waited this long jumps ahead of higher priorities,
    # so low priorities cannot starve under endless load (ingest queue and release).
    priority_aging_s: float = 0.0
    # Webhooks (README "Webhooks"): seconds between attempts (the first is the first attempt),
    # ±jitter, the per-attempt timeout, and how long a claimed delivery of a dead worker waits.
    webhook_retry_schedule: str = "0,5,300,1800,7200,18000,36000,50400,72000,86400"
    webhook_jitter: float = 0.2
    webhook_timeout_s: float = 15.0
    webhook_lease_s: float = 60.0
    webhook_retry_after_max_s: float = 86400.0
    webhook_disable_after_s: float = 5 * 86400.0
    webhook_rotation_overlap_s: float = 86400.0
    # sends in flight per subscription (default for new ones), and per worker process (0: none)
    webhook_max_concurrency: int = 4
    webhook_senders: int = 16
    webhook_poll_s: float = 0.25
    webhook_dispatch_batch: int = 500
    # comma-separated networks exempt from the SSRF refusal (tests, on-premise receivers)
    webhook_allow_nets: str = ""
    log_level: str = "INFO"
    log_format: str = "auto"  # auto | json | console
    host: str = "127.0.0.1"
    port: int = 8080

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ORDERFLOW_* variables; explicit overrides win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, field_type in _FIELD_TYPES.items():
            raw = env.get(f"ORDERFLOW_{name.upper()}")
            if raw is None or raw == "":
                continue
            try:
                values[name] = field_type(raw)
            except ValueError as exc:
                raise SettingsError(
                    f"ORDERFLOW_{name.upper()}={raw!r} is not a valid {field_type.__name__}"
                ) from exc
        values.update(overrides)
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse values that cannot work, naming the variable."""
        if not self.database_url.startswith(("postgresql://", "postgres://")):
            raise SettingsError("ORDERFLOW_DATABASE_URL must be a postgresql:// URL")
        if self.redis_url.lower().startswith("redis+sentinel://"):
            from shared.redis_client import parse_sentinel_url

            try:
                parse_sentinel_url(self.redis_url)
            except ValueError as exc:
                raise SettingsError(f"ORDERFLOW_REDIS_URL: {exc}") from None
        elif not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError("ORDERFLOW_REDIS_URL must be a redis://, rediss://, unix:// or"
                                " redis+sentinel://host:port[,host:port]/service_name[/db] URL")
        if not self.redis_prefix or any(c in self.redis_prefix for c in "{}: "):
            raise SettingsError("ORDERFLOW_REDIS_PREFIX must be non-empty without '{', '}', ':' or spaces")
        if not 0 < self.key_cache_ttl_s <= 5:
            raise SettingsError("ORDERFLOW_KEY_CACHE_TTL_S must be in (0, 5]: revocations must bite within 5 s")
        if self.claim_batch < 1 or self.lease_s <= 0:
            raise SettingsError("ORDERFLOW_CLAIM_BATCH and ORDERFLOW_LEASE_S must be positive")
        if not 0 <= self.claim_linger_s < self.lease_s or self.claim_fill < 0:
            raise SettingsError("ORDERFLOW_CLAIM_LINGER_S must be in [0, lease) and ORDERFLOW_CLAIM_FILL >= 0")
        if self.log_format not in {"auto", "json", "console"}:
            raise SettingsError("ORDERFLOW_LOG_FORMAT must be auto, json or console")
        from shared.rules.webhooks import settings_problem

        if (webhook_problem := settings_problem(self)) is not None:
            raise SettingsError(webhook_problem)

    @property
    def uses_dev_pepper(self) -> bool:
        """True while the built-in development pepper is in use."""
        return self.key_pepper == _DEV_PEPPER


_FIELD_TYPES: dict[str, type] = {
    f.name: (f.type if isinstance(f.type, type) else {"str": str, "int": int, "float": float}[str(f.type)])
    for f in msgspec.structs.fields(Settings)
}
