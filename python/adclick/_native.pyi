"""Type stubs for adclick's Rust extension (rust/py)."""

import os
from typing import Any, Final, final

__all__ = [
    "CLICKS_PREFIX",
    "FLAG_BLOCKED",
    "FLAG_BOT",
    "INVALIDATE_CHANNEL",
    "IPBLOCK_KEY",
    "IPBLOCK_MESSAGE",
    "LINK_KEY_PREFIX",
    "SPILL_KEY",
    "SPILL_LOCK_KEY",
    "VERSION",
    "AdclickError",
    "ClickIdCodec",
    "ConfigError",
    "EntropyError",
    "InvalidClickId",
    "InvalidLink",
    "InvalidMessage",
    "InvalidTemplate",
    "RedisUnavailable",
    "Shipper",
    "Tracker",
    "pack_clicks",
    "unpack_clicks",
    "validate_link",
]

VERSION: Final[str]
SPILL_KEY: Final[str]
SPILL_LOCK_KEY: Final[str]
LINK_KEY_PREFIX: Final[str]
INVALIDATE_CHANNEL: Final[str]
CLICKS_PREFIX: Final[str]
IPBLOCK_KEY: Final[str]
IPBLOCK_MESSAGE: Final[str]
FLAG_BOT: Final[int]
FLAG_BLOCKED: Final[int]

class AdclickError(Exception): ...
class InvalidClickId(AdclickError): ...
class InvalidLink(AdclickError): ...
class InvalidTemplate(AdclickError): ...
class ConfigError(AdclickError): ...
class RedisUnavailable(AdclickError): ...
class InvalidMessage(AdclickError): ...
class EntropyError(AdclickError): ...

@final
class ClickIdCodec:
    def __new__(
        cls, key_id: int, secret: bytes, previous_key_id: int | None = None, previous_secret: bytes | None = None
    ) -> ClickIdCodec: ...
    def generate(self, link_id: int, ts_ms: int, flags: int = 0) -> str:
        """A ClickID; with flags (FLAG_BOT | FLAG_BLOCKED) a version 2 one, else version 1."""
    def verify(self, click_id: str) -> tuple[int, int, int, int, int]:
        """(version, key_id, ts_ms, link_id, flags); flags is 0 for version 1; raises InvalidClickId."""

@final
class Tracker:
    def __new__(
        cls,
        *,
        redis_url: str,
        secret: bytes,
        key_id: int,
        previous_secret: bytes | None = None,
        previous_key_id: int = 0,
        trusted_proxies: int = 0,
        anonymize_ip: bool = False,
        cookie_name: str = ...,  # "adclick_cid"
        cookie_max_age_s: int = 2_592_000,
        cookie_domain: str | None = None,
        cookie_secure: bool = False,
        cache_max_entries: int = 100_000,
        cache_max_bytes: int = 67_108_864,
        cache_ttl_s: float = 60.0,
        cache_stale_s: float = 600.0,
        negative_ttl_s: float = 5.0,
        redis_connect_timeout_ms: int = 200,
        redis_timeout_ms: int = 50,
        redis_retry_after_ms: int = 1000,
        buffer_max_events: int = 500_000,
        replica_max_bytes: int = 83_886_080,
        replica_resync_s: float = 300.0,
        replica_nice: int = 10,
        blocked_action: str = "fallback",
        geoip_db: str | os.PathLike[str] | None = None,
        geoip_reload_s: float = 60.0,
    ) -> Tracker: ...
    def click(
        self,
        head: bool,
        slug: str,
        query: dict[str, list[str]] | None,
        user_agent: str | None,
        referer: str | None,
        forwarded_for: str | None,
        peer_ip: str | None,
        country: str | None,
    ) -> tuple[int, str | None, str | None]: ...
    def take_bodies(self, max_body_bytes: int) -> list[str]: ...
    def buffered(self) -> int: ...
    @property
    def capacity(self) -> int: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    def start(self, wait_s: float = 2.0) -> bool:
        """Start the invalidation listener; wait up to wait_s for the IP blocklist's first read (False: not read)."""
    def ping(self) -> None: ...
    def invalidate(self, slug: str) -> None: ...
    def generate_click_id(self, link_id: int, ts_ms: int) -> str: ...
    def stats(self) -> dict[str, Any]: ...

@final
class Shipper:
    """Ships a tracker's click events to SQS from a Rust thread that never takes the GIL."""

    def __new__(
        cls,
        tracker: Tracker,
        *,
        queue_name: str,
        region: str,
        endpoint_url: str | None = None,
        sqs_timeout_s: float = 2.0,
        max_receives: int = 5,
        redis_url: str,
        redis_connect_timeout_ms: int = 200,
        redis_timeout_ms: int = 2000,
        max_body_bytes: int = 262_144,
        retry_attempts: int = 3,
        flush_interval_ms: int = 100,
        spill_high_water: float = 0.5,
        max_pending_bytes: int = ...,
        nice: int = 0,
        log_level: int = 20,
        log_role: str = ...,
    ) -> Shipper: ...
    def stop(self, deadline_s: float) -> tuple[int, int, int, int]:
        """Flush (SQS, then Redis) within the deadline and join the thread: (sent, spilled, rejected, dropped)."""
    @property
    def running(self) -> bool: ...
    def stats(self) -> dict[str, Any]: ...

def pack_clicks(lines: list[bytes], max_body_bytes: int) -> list[str]:
    """Click events (JSON text each) packed into `c1:` bodies of at most `max_body_bytes`, as the tracker packs."""

def unpack_clicks(body: str) -> list[str]:
    """The click events (JSON text each) packed in one SQS message body."""

def validate_link(config: bytes) -> None:
    """Check a v1 link config (JSON) as the tracker decodes it; raises InvalidLink or InvalidTemplate."""
