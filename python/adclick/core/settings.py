"""Settings from `ADCLICK_*` environment variables, one class per role, built in `main()`, never at import."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_CLICK_SECRET = "dev-only-click-secret-change-me"
DEFAULT_POSTBACK_SECRET = "dev-only-postback-secret-change-me"
DEFAULT_MANAGER_SECRET = "dev-only-manager-secret-change-me"


class Settings(BaseSettings):
    """Settings shared by every role."""

    model_config = SettingsConfigDict(env_prefix="ADCLICK_", extra="ignore")

    env: Literal["development", "production"] = "development"
    log_level: str = "INFO"

    redis_url: str = "redis://127.0.0.1:6379/0"

    sqs_endpoint_url: str | None = None
    aws_region: str = "us-east-1"
    clicks_queue: str = "adclick-clicks"
    conversions_queue: str = "adclick-conversions"
    sqs_max_receives: int = Field(5, ge=1, le=1000)

    click_secret: SecretStr = SecretStr(DEFAULT_CLICK_SECRET)
    click_key_id: int = Field(1, ge=0, le=15)
    click_previous_secret: SecretStr | None = None
    click_previous_key_id: int = Field(0, ge=0, le=15)

    database_url: str = "sqlite+aiosqlite:///./adclick.db"
    database_pool_size: int = Field(10, ge=1, le=200)
    postback_secret: SecretStr = SecretStr(DEFAULT_POSTBACK_SECRET)

    @model_validator(mode="after")
    def _refuse_default_secrets_in_production(self) -> Settings:
        if self.env == "production":
            secret = self.click_secret.get_secret_value()
            if not secret or secret == DEFAULT_CLICK_SECRET or len(secret) < 32:
                raise ValueError("ADCLICK_CLICK_SECRET must be set to a random value of 32+ characters in production")
            secret = self.postback_secret.get_secret_value()
            if not secret or secret == DEFAULT_POSTBACK_SECRET or len(secret) < 32:
                raise ValueError(
                    "ADCLICK_POSTBACK_SECRET must be set to a random value of 32+ characters in production"
                )
            # The previous key still verifies ClickIDs, so the public development key there would let anyone mint them.
            if self.click_previous_secret is not None:
                secret = self.click_previous_secret.get_secret_value()
                if not secret or secret == DEFAULT_CLICK_SECRET or len(secret) < 32:
                    raise ValueError(
                        "ADCLICK_CLICK_PREVIOUS_SECRET, if set, must be a random value of 32+ characters in production"
                    )
        if self.click_previous_secret is not None and self.click_previous_key_id == self.click_key_id:
            raise ValueError("ADCLICK_CLICK_PREVIOUS_KEY_ID must differ from ADCLICK_CLICK_KEY_ID")
        return self


class TrackerSettings(Settings):
    """The tracker role: HTTP, link cache, click events."""

    tracker_host: str = "0.0.0.0"
    tracker_port: int = Field(8000, ge=1, le=65535)
    tracker_processes: int = Field(1, ge=1, le=64)
    tracker_workers: int = Field(1, ge=1, le=64)

    country_headers: str = "CloudFront-Viewer-Country,CF-IPCountry"
    trusted_proxies: int = Field(0, ge=0, le=10)
    anonymize_ip: bool = False
    # A click from an address on the IP blocklist gets its link's fallback URL (403 without one) or a plain 403;
    # either way it is recorded as blocked and never paid.
    blocked_action: Literal["fallback", "403"] = "fallback"
    # An MMDB country database (adclick geoip-fetch puts one in var/geoip/): a click without a country header takes
    # its address's country from it. Empty: no lookup. Read again within geoip_reload_seconds of a change on disk.
    geoip_db: str = ""
    geoip_reload_seconds: float = Field(60.0, ge=1.0, le=86_400)

    cookie_name: str = "adclick_cid"
    cookie_max_age_days: int = Field(30, ge=1, le=400)
    cookie_domain: str | None = None
    cookie_secure: bool | None = None

    cache_max_entries: int = Field(100_000, ge=1)
    # Bounds the link cache by its estimated bytes as well; it must leave at least 400 bytes per entry
    # of cache_max_entries (the tracker refuses to start otherwise).
    cache_max_bytes: int = Field(64 << 20, ge=1 << 20)
    # Every live link in memory while they fit this many bytes (0: no replica): misses then cost no Redis
    # round trip on the click's thread. Re-read in full every replica_resync_seconds as a backstop.
    replica_max_bytes: int = Field(80 << 20, ge=0)
    replica_resync_seconds: float = Field(300.0, ge=10.0)
    cache_ttl_seconds: float = Field(60.0, gt=0)
    cache_stale_seconds: float = Field(600.0, gt=0)
    negative_ttl_seconds: float = Field(5.0, gt=0)
    redis_connect_timeout_ms: int = Field(200, ge=1)
    redis_timeout_ms: int = Field(50, ge=1)
    redis_retry_after_ms: int = Field(1000, ge=1)

    flush_interval_ms: int = Field(100, ge=5, le=10_000)
    buffer_max_events: int = Field(500_000, ge=100)
    sqs_max_body_bytes: int = Field(262_144, ge=1024, le=262_144)
    sqs_retry_attempts: int = Field(3, ge=1, le=20)
    sqs_timeout_seconds: float = Field(2.0, gt=0)
    spill_high_water: float = Field(0.5, gt=0, le=1)
    background_nice: int = Field(10, ge=0, le=19)

    drain_seconds: float = Field(5.0, ge=0, le=300)
    header_timeout_seconds: float = Field(10.0, gt=0)
    keepalive_timeout_seconds: float = Field(20.0, gt=0)
    # How often the connection reaper sweeps (at most half the header timeout): each sweep holds the GIL briefly.
    reaper_interval_seconds: float = Field(1.0, gt=0, le=60)

    @property
    def secure_cookie(self) -> bool:
        """Secure cookies by default in production, unless set either way."""
        return self.env == "production" if self.cookie_secure is None else self.cookie_secure


class WorkerSettings(Settings):
    """The worker role: SQS consumer writing the database."""

    worker_concurrency: int = Field(2, ge=1, le=64)
    worker_health_host: str = "0.0.0.0"
    worker_health_port: int = Field(8002, ge=1, le=65535)
    worker_wait_seconds: int = Field(20, ge=0, le=20)
    worker_visibility_timeout: int = Field(60, ge=5, le=43_200)
    worker_heartbeat_stale_seconds: float = Field(60.0, gt=0)
    unique_window_hours: int = Field(24, ge=1, le=720)
    # Sub-id rollups (adclick.core.subs): distinct values of one sub per link and UTC day that get a row of their
    # own; later values count as "(other)" and are found in the click log.
    sub_values_per_link_day: int = Field(1000, ge=1, le=1_000_000)
    # Postbacks out to affiliates (adclick.worker.deliverer): each request's timeout, how long a failing one is
    # retried (with backoff), how many are in flight at once and per host, and whether private, loopback and
    # link-local addresses may be called (never in production: a postback URL must not reach the cluster's inside).
    affiliate_postback_timeout_seconds: float = Field(5.0, gt=0, le=60)
    affiliate_postback_retry_hours: float = Field(24.0, ge=0, le=720)
    affiliate_postback_first_retry_seconds: float = Field(10.0, gt=0, le=3600)  # then 3x each time, up to 1 h
    affiliate_postback_concurrency: int = Field(16, ge=1, le=256)
    affiliate_postback_per_host: int = Field(4, ge=1, le=64)
    affiliate_postback_poll_seconds: float = Field(1.0, gt=0, le=60)
    affiliate_postback_allow_private: bool = False


class PostbackSettings(Settings):
    """The postback role: advertisers' conversions in, SQS messages out."""

    postback_host: str = "0.0.0.0"
    postback_port: int = Field(8001, ge=1, le=65535)
    postback_workers: int = Field(1, ge=1, le=64)
    postback_max_body_bytes: int = Field(65_536, ge=1024, le=1_048_576)
    # An advertiser retries a 503; holding its request for SQS's full default timeout helps nobody.
    postback_sqs_timeout_seconds: float = Field(1.0, gt=0)
    postback_redis_timeout_ms: int = Field(100, ge=1)
    postback_redis_retry_after_ms: int = Field(1000, ge=0)
    # Proxies in front of the postback role (an ALB: 1); the client address, for advertisers' allowlists, is that
    # many entries from the right of X-Forwarded-For, as the tracker reads it.
    postback_trusted_proxies: int = Field(0, ge=0, le=10)
    # Same variable (ADCLICK_COOKIE_NAME) as the tracker's, so the pixel reads the cookie the tracker sets.
    cookie_name: str = "adclick_cid"


class ManagerSettings(Settings):
    """The manager role: staff web pages and the JSON API."""

    manager_host: str = "0.0.0.0"
    manager_port: int = Field(8080, ge=1, le=65535)
    manager_secret: SecretStr = SecretStr(DEFAULT_MANAGER_SECRET)
    manager_session_hours: float = Field(12.0, gt=0, le=24 * 30)
    manager_cookie_secure: bool | None = None
    manager_trusted_proxies: int = Field(0, ge=0, le=10)
    manager_login_attempts_per_minute: int = Field(5, ge=1, le=1000)
    manager_tracker_base_url: str = "http://localhost:8000"
    manager_postback_base_url: str = "http://localhost:8001"
    manager_redis_timeout_ms: int = Field(500, ge=1)
    manager_reconcile_seconds: float = Field(60.0, ge=0)
    # The argon2id cost of stored passwords: RFC 9106's second recommended profile (3 passes over 64 MiB) unless
    # set. Production refuses less than OWASP's floor (2 passes over 19 MiB); the test suite, which signs in
    # thousands of times, sets less so that its time goes to what it tests.
    manager_password_time_cost: int = Field(3, ge=1, le=20)
    manager_password_memory_kib: int = Field(64 * 1024, ge=1024, le=4 * 1024 * 1024)

    @model_validator(mode="after")
    def _refuse_weak_manager_secrets_in_production(self) -> ManagerSettings:
        if self.env == "production":
            secret = self.manager_secret.get_secret_value()
            if not secret or secret == DEFAULT_MANAGER_SECRET or len(secret) < 32:
                raise ValueError("ADCLICK_MANAGER_SECRET must be set to a random value of 32+ characters in production")
            if self.manager_password_time_cost < 2 or self.manager_password_memory_kib < 19 * 1024:
                raise ValueError(
                    "ADCLICK_MANAGER_PASSWORD_TIME_COST >= 2 and ADCLICK_MANAGER_PASSWORD_MEMORY_KIB >= 19456 "
                    "(OWASP's argon2id floor) in production"
                )
        return self

    @property
    def secure_cookie(self) -> bool:
        """Secure session cookies by default in production, unless set either way."""
        return self.env == "production" if self.manager_cookie_secure is None else self.manager_cookie_secure


@lru_cache
def get_settings() -> Settings:
    return Settings()


@lru_cache
def get_postback_settings() -> PostbackSettings:
    return PostbackSettings()


@lru_cache
def get_manager_settings() -> ManagerSettings:
    return ManagerSettings()
